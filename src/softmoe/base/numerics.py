"""Portable determinism: the CPU code paths every compute step pins before torch loads
(docs/architecture.md, "Numerical code paths"; README, "Reproducibility").

torch chooses its CPU kernels when it loads, from what the CPU offers: ATen's vector width
(AVX-512 or AVX2), oneDNN's instruction set and MKL's code branch. Two x86 CPUs can thus round
differently and give other bytes for the same study. `pin` fixes all three to AVX2, which every
x86-64 server CPU of the last decade has, through the environment variables the libraries read
(ATen: ATEN_CPU_CAPABILITY; oneDNN: ONEDNN_MAX_CPU_ISA; MKL's conditional numerical
reproducibility: MKL_CBWR, oneMKL developer guide "Specifying Code Branches"), and switches off
the dynamic thread adjustment MKL's "Reproducibility Conditions" warn about. A CPU without AVX2 or
another architecture (ARM) keeps its native paths; `mode` says which one a process runs.
SOFTMOE_NATIVE=1 leaves the native paths on purpose (e.g. to measure what the pins cost).

This module must not import torch: `pin` runs before torch is loaded."""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2",
        "MKL_DYNAMIC": "FALSE", "OMP_DYNAMIC": "FALSE"}
NATIVE = "SOFTMOE_NATIVE"          # "1": no pins
PORTABLE = "portable: avx2 pins"
X86 = {"x86_64", "amd64", "i686", "i386"}


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_id() -> str:
    """The CPU model, told apart where virtual machines report only a brand ("AMD EPYC"): vendor
    family, model and stepping, and the widest vector ISA it offers, e.g. "AMD EPYC (AuthenticAMD
    family 25 model 17 stepping 1; AVX-512)"."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2" if flags else platform.machine()
    family = " ".join(f"{label} {info[key]}" for key, label in
                      (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")) if key in info)
    detail = "; ".join(x for x in (f"{info.get('vendor_id', '')} {family}".strip(), isa) if x)
    return f"{name} ({detail})" if detail else name


def why_native() -> str | None:
    """Why this machine keeps the native code paths (None: the pins apply)."""
    if os.environ.get(NATIVE, "") not in ("", "0"):
        return f"{NATIVE}={os.environ[NATIVE]}"
    arch = platform.machine().lower()
    if arch not in X86:
        return f"{arch or 'unknown'} CPU: no x86 code paths to pin"
    if not {"avx2", "fma"} <= cpu_flags():
        return "x86 CPU without AVX2"
    return None


def pin() -> str:
    """Set the pins in this process's environment, unless the machine keeps its native paths
    (`why_native`). Call before torch is imported: ATen, oneDNN and MKL read them when they
    first dispatch. A value someone set already is kept (and `mode` then says "native").
    Returns `mode()`."""
    if why_native() is None:
        for name, value in PINS.items():
            os.environ.setdefault(name, value)
    return mode()


def mode() -> str:
    """"portable: avx2 pins" when every pin is in effect, else "native (<why>)". Once torch is
    loaded, ATen's capability is checked too (it is fixed when torch first dispatches a kernel)."""
    reason = why_native()
    if reason is None:
        off = {k: os.environ.get(k) for k, v in PINS.items() if os.environ.get(k, "").upper() != v.upper()}
        if len(off) == len(PINS) and not any(off.values()):
            reason = "no pins set"
        elif off:
            reason = ", ".join(f"{k}={v}" if v is not None else f"{k} unset" for k, v in off.items())
    if reason is None and "torch" in sys.modules:
        aten = sys.modules["torch"].backends.cpu.get_cpu_capability()
        if aten != "AVX2":
            reason = f"ATen runs {aten}: torch dispatched before the pins were set"
    return PORTABLE if reason is None else f"native ({reason})"


def facts() -> dict:
    """The code paths of this process for a timing/machine file: mode, the CPU, and, once torch
    is loaded, ATen's capability."""
    out = {"numerics": mode(), "cpu": cpu_id()}
    if "torch" in sys.modules:
        out["aten_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    return out
