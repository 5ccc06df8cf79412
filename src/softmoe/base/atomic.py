"""Atomic writes: write to a temporary file next to the target, then rename over it.

A killed job therefore never leaves a half-written file under the final name. What it may leave is
its temporary file (`.<name>.<8 characters>.tmp`); the next write of the same target (the rerun of
the killed job) removes it."""
from __future__ import annotations

import contextlib
import json
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` on success.

    Temporary files of this target left by a killed writer are removed first (each output has one
    writer at a time: one job under Snakemake or DVC)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    leftover = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")   # mkstemp's names
    for old in path.parent.iterdir():
        if leftover.fullmatch(old.name):
            old.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: object) -> object:
    """numpy / torch scalars and paths in metrics."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def write_csv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as CSV atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def digest(path: str | Path, algorithm: str = "sha256") -> str:
    """The hex digest of a file's bytes (sha256 for manifests, md5 as DVC computes it)."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()
