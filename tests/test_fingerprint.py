"""Portable determinism (softmoe.base.numerics, softmoe.audit.fingerprint): the pins a compute step sets, and
a fresh short training and evaluation against the committed fingerprint, tests/fingerprint.json.

On the CPU model, code paths and torch it was recorded with, the bytes must be identical. On
another CPU model the comparison is the evidence: identical bytes, or a warning naming both CPUs
and the accuracies within fingerprint.TOLERANCE. Re-record after a deliberate change:
`python -m softmoe.audit.fingerprint --out tests/fingerprint.json` (README, "Reproducibility")."""
from __future__ import annotations

import copy
import os
import platform
import warnings
from pathlib import Path

import pytest
import torch

from softmoe.audit import fingerprint
from softmoe.base import numerics
from softmoe.study.params import load

ROOT = Path(__file__).resolve().parents[1]
RECORDED = ROOT / "tests" / "fingerprint.json"


# ---- the pins --------------------------------------------------------------------------------------
def test_tests_run_on_the_pinned_code_paths():
    """conftest pins before torch loads, as `softmoe <step>` does: ATen really runs AVX2."""
    if numerics.why_native():
        pytest.skip(f"this machine keeps its native code paths: {numerics.why_native()}")
    assert numerics.mode() == numerics.PORTABLE
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert numerics.facts()["aten_capability"] == "AVX2"


@pytest.fixture
def clean_env(monkeypatch):
    """No pin and no SOFTMOE_NATIVE set; whatever the test sets is undone after it."""
    for name in [*numerics.PINS, numerics.NATIVE]:
        monkeypatch.setenv(name, "")           # recorded, so that teardown restores the original
        monkeypatch.delenv(name)
    return monkeypatch


def test_pin_sets_every_pin_on_x86_with_avx2(clean_env):
    clean_env.setattr(platform, "machine", lambda: "x86_64")
    clean_env.setattr(numerics, "cpu_flags", lambda: {"avx2", "fma", "avx512f"})
    assert numerics.pin() == numerics.PORTABLE
    assert {k: os.environ[k] for k in numerics.PINS} == numerics.PINS


@pytest.mark.parametrize("machine, flags, native, reason", [
    ("aarch64", set(), "", "aarch64 CPU"),
    ("x86_64", {"avx", "sse4_2"}, "", "without AVX2"),
    ("x86_64", {"avx2", "fma"}, "1", "SOFTMOE_NATIVE=1"),
])
def test_no_pins_where_they_do_not_apply(clean_env, machine, flags, native, reason):
    clean_env.setattr(platform, "machine", lambda: machine)
    clean_env.setattr(numerics, "cpu_flags", lambda: flags)
    if native:
        clean_env.setenv(numerics.NATIVE, native)
    mode = numerics.pin()
    assert mode.startswith("native (") and reason in mode
    assert not any(k in os.environ for k in numerics.PINS)


def test_a_value_set_by_hand_is_kept_and_named(clean_env):
    clean_env.setattr(platform, "machine", lambda: "x86_64")
    clean_env.setattr(numerics, "cpu_flags", lambda: {"avx2", "fma"})
    clean_env.setenv("MKL_CBWR", "COMPATIBLE")
    mode = numerics.pin()
    assert os.environ["MKL_CBWR"] == "COMPATIBLE" and mode == "native (MKL_CBWR=COMPATIBLE)"


def test_cpu_id_tells_models_apart(monkeypatch):
    info = {"model name": "AMD EPYC", "vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17",
            "stepping": "1", "flags": "fpu avx2 fma avx512f"}
    monkeypatch.setattr(numerics, "_cpuinfo", lambda: info)
    assert numerics.cpu_id() == "AMD EPYC (AuthenticAMD family 25 model 17 stepping 1; AVX-512)"
    monkeypatch.setattr(numerics, "_cpuinfo", lambda: {**info, "model": "49", "flags": "avx2 fma"})
    assert numerics.cpu_id() == "AMD EPYC (AuthenticAMD family 25 model 49 stepping 1; AVX2)"


# ---- comparing fingerprints ---------------------------------------------------------------------
RECORD = {"md5": {"model.safetensors": "a", "eval.csv": "b"}, "test_accuracy": 0.80,
          "accuracy": {"all k=4 renorm=False": 0.80, "alg1 k=1 renorm=False": 0.50},
          "recorded_on": {"cpu": "Intel Xeon (GenuineIntel family 6 model 143; AVX-512)",
                          "numerics": numerics.PORTABLE, "torch": "2.13.0"}}


def _fresh(cpu=None, md5=None, shift=0.0) -> dict:
    out = copy.deepcopy(RECORD)
    if cpu:
        out["recorded_on"]["cpu"] = cpu
    if md5:
        out["md5"]["model.safetensors"] = md5
    out["accuracy"]["alg1 k=1 renorm=False"] += shift
    return out


def test_identical_bytes_pass():
    assert fingerprint.compare(RECORD, _fresh()).ok
    other = fingerprint.compare(RECORD, _fresh(cpu="AMD EPYC (AVX2)"))
    assert other.ok and other.identical and "Intel Xeon" in other.message and "AMD EPYC" in other.message


def test_other_bytes_on_the_recorded_cpu_fail_even_within_tolerance():
    result = fingerprint.compare(RECORD, _fresh(md5="c", shift=0.001))
    assert result.same_machine and not result.ok and "re-record" in result.message


def test_other_bytes_on_another_cpu_fall_back_to_the_tolerance():
    near = fingerprint.compare(RECORD, _fresh(cpu="AMD EPYC (AVX2)", md5="c", shift=0.005))
    assert near.ok and not near.identical and "within" in near.message and "AMD EPYC" in near.message
    far = fingerprint.compare(RECORD, _fresh(cpu="AMD EPYC (AVX2)", md5="c", shift=0.02))
    assert not far.ok and "BEYOND" in far.message


# ---- the committed fingerprint --------------------------------------------------------------------
def test_a_fresh_run_matches_the_committed_fingerprint(mnist5k, tmp_path):
    recorded = fingerprint.read(RECORDED)
    params = load(ROOT / "params.yaml")
    assert recorded["recipe"]["params_sha256"] == fingerprint.digest(fingerprint.recipe(params)), (
        "params.yaml changed what the fingerprint trains (dataset entry, model, train or evaluate); re-record: "
        "python -m softmoe.audit.fingerprint --out tests/fingerprint.json")
    fresh = fingerprint.run(params, tmp_path, data_dir=mnist5k)
    result = fingerprint.compare(recorded, fresh)
    if not result.same_machine:           # the evidence across CPU models, shown in pytest's summary
        warnings.warn(f"fingerprint across CPU models: {result.message}", stacklevel=1)
    assert result.ok, result.message
