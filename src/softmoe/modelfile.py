"""Trained weights on disk: safetensors with string metadata (nothing is unpickled), written atomically."""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from softmoe import atomic
from softmoe.errors import UserError


def save(path: Path, model: nn.Module, metadata: dict) -> None:
    """The model's state dict, with `metadata` (values stored as strings) in the header.

    safetensors writes its JSON header in hash-map order, which differs between processes; the
    header is rewritten with sorted keys so that the same weights always give the same bytes
    (and the same DVC hash)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    raw = safetensors.torch.save(state, metadata={k: str(v) for k, v in metadata.items()})
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)              # the format pads the header to 8 bytes
    with atomic.atomic_path(path) as tmp:
        tmp.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + size:])


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
