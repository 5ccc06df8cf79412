"""Trained weights on disk: safetensors with string metadata (nothing is unpickled), written
atomically, and read back as the model of params.model (`load_trained`) without the training
loop, so that evaluating or timing a model does not depend on how it was trained."""
from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from softmoe.base import atomic
from softmoe.model.astroformer import SoftMoEAstroformer
from softmoe.base.errors import UserError
from softmoe.model.models import MnistSoftMoE, SoftMoEViT
from softmoe.study.params import Model


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


def build_model(model: Model, num_experts: int, num_classes: int, in_chans: int = 3,
                dropout: float = 0.0) -> nn.Module:
    """The model of params.model (kind "mnist" | "vit" | "astroformer") with n experts; dropout:
    train.dropout of the ViT and Astroformer models."""
    if model.kind == "mnist":
        return MnistSoftMoE(num_experts, num_classes)
    if model.kind == "vit":
        return SoftMoEViT(num_classes=num_classes, num_experts=num_experts, drop_rate=dropout,
                          in_chans=in_chans, **model.options())
    if model.kind == "astroformer":
        return SoftMoEAstroformer(num_classes=num_classes, num_experts=num_experts, drop_rate=dropout,
                                  in_chans=in_chans, **model.options())
    raise UserError(f"key 'model.kind': {model.kind!r} is not a model; use 'mnist', 'vit' or "
                    "'astroformer'")


def load_trained(run_dir: Path, model: Model, expect: dict | None = None) -> nn.Module:
    """The trained model (of params.model) of a run folder in eval mode, refused (UserError) when
    its metadata (kind, and every key of `expect`, e.g. {"dataset": "mnist5k", "n": 16}) differs."""
    path = Path(run_dir) / "model.safetensors"
    meta, state = read(path, f"train the run (`softmoe train ... --out {run_dir}`)")
    expected = {"kind": model.kind, **(expect or {})}
    if expected["kind"] != "mnist":
        expected.setdefault("img_size", model.img_size)
    wrong = {k: (meta.get(k), str(v)) for k, v in expected.items() if meta.get(k) != str(v)}
    if wrong:
        shown = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise UserError(f"{path}: a model of another run ({shown}); point at the right run folder "
                        "or retrain it with the current params.yaml")
    net = build_model(model, int(meta["n"]), int(meta["num_classes"]), int(meta["in_chans"]))
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise UserError(f"{path}: weights do not fit the model of params.yaml "
                        f"({str(err).splitlines()[0]}); retrain the run") from None
    return net.eval()


def run_metadata(run_dir: Path) -> dict[str, str]:
    """The metadata strings of a run's model.safetensors (dataset, n, seed, kind, img_size, ...)."""
    path = Path(run_dir) / "model.safetensors"
    meta, _ = read(path, "train the run first (`softmoe train`)", weights=False)
    missing = [key for key in ("dataset", "n", "seed", "img_size", "in_chans") if key not in meta]
    if missing:
        raise UserError(f"{path}: metadata lacks {missing}; retrain the run with this version")
    return meta
