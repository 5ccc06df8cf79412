"""Model files: safetensors round trip, deterministic bytes, clear errors."""
import hashlib
import subprocess
import sys

import pytest
import torch

from softmoe.model import modelfile
from softmoe.base.errors import UserError
from softmoe.model.models import MnistSoftMoE

WRITE = """
import sys, torch
from softmoe.model import modelfile
from softmoe.model.models import MnistSoftMoE
torch.manual_seed(0)
modelfile.save(sys.argv[1], MnistSoftMoE(4), {"dataset": "mnist5k", "n": 4, "seed": 0, "kind": "mnist",
                                             "num_classes": 10, "img_size": 28, "in_chans": 1})
"""


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    model = MnistSoftMoE(4)
    modelfile.save(tmp_path / "m.safetensors", model, {"n": 4, "dataset": "mnist5k"})
    meta, state = modelfile.read(tmp_path / "m.safetensors", "fix")
    assert meta == {"n": "4", "dataset": "mnist5k"}
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value)


def test_same_weights_give_the_same_bytes_in_every_process(tmp_path):
    """safetensors orders its header by hash map; ours is sorted, so DVC hashes are stable."""
    digests = set()
    for i in range(4):
        out = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-c", WRITE, str(out)], check=True, env={"PYTHONHASHSEED": str(i)})
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_missing_and_corrupt_files_name_the_path_and_fix(tmp_path):
    with pytest.raises(UserError, match="m.safetensors: not found; retrain"):
        modelfile.read(tmp_path / "m.safetensors", "retrain")
    (tmp_path / "m.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(UserError, match="m.safetensors: unreadable"):
        modelfile.read(tmp_path / "m.safetensors", "retrain")
