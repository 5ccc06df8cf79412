"""Shared test setup: every test starts from the same torch/Lightning global state."""
import os

import pytest
import torch


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
