"""Import torchvision (and so timm) on a CPU-only torch.

PyPI's torchvision==0.28.0 wheel for Linux is a CUDA build: its C extension (`torchvision/_C.so`)
needs libtorch_cuda and cannot load next to the CPU wheel torch==2.13.0+cpu. torchvision then
still imports `_meta_registrations`, which registers fake kernels for `torchvision::nms` & co. and
dies with "RuntimeError: operator torchvision::nms does not exist". When the extension cannot be
loaded, this module puts empty stand-ins for that module and `_autograd_registrations` into
`sys.modules` before the first import. Everything this project uses (datasets, transforms, timm's
models) works; only the C kernels of `torchvision.ops` (nms, roi_align, ...) are unavailable.
With a loadable extension (a matching CUDA or CPU build) nothing is changed.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types
from pathlib import Path

import torch

STAND_INS = ("torchvision._meta_registrations", "torchvision._autograd_registrations")


def _extension_loads() -> bool:
    """Whether torchvision's compiled ops (`_C`) can be loaded by this torch."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed; install the project's pinned dependencies")
    folder = Path(list(spec.submodule_search_locations)[0])
    candidates = [folder / f"_C{suffix}" for suffix in importlib.machinery.EXTENSION_SUFFIXES]
    for path in filter(Path.is_file, candidates):
        try:
            torch.ops.load_library(str(path))
            return True
        except OSError:
            return False
    return False


def import_torchvision() -> types.ModuleType:
    """Import and return torchvision, with the stand-ins above when its C ops cannot load."""
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if not _extension_loads():
        for name in STAND_INS:
            sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision

    return torchvision
