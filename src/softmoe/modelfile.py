"""Trained weights on disk: safetensors with string metadata (nothing is unpickled), written atomically."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from softmoe import atomic
from softmoe.errors import UserError


def save(path: Path, model: nn.Module, metadata: dict) -> None:
    """The model's state dict, with `metadata` (values stored as strings) in the header."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic.atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})


def read(path: Path, fix: str, weights: bool = True) -> tuple[dict[str, str], dict[str, torch.Tensor] | None]:
    """(metadata, state dict or None when not `weights`); UserError naming `path` and `fix` when
    the file is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: not found; {fix}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return meta, load_file(str(path)) if weights else None
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: unreadable ({err}); {fix}") from None
