"""Whole-run training time of `softmoe train` with last.ckpt written after every epoch (the old
behaviour) and at the default interval (train.CHECKPOINT_EVERY_S), interleaved in one process,
with a check that both write the same model file.

    python benchmarks/train_speed.py [--experts 2 16 64 512] [--steps 480] [--repeats 2]

Prints, per n and mode, the best wall and process CPU time of a run and per step (the CPU time is
not inflated by other jobs on a shared machine), and the ratio every-epoch / default. Uses
data/mnist5k (prepared by `softmoe prepare`) and params.yaml, with train.max_steps = --steps.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import torch
import yaml

from softmoe.steps import train
from softmoe.study.params import Study

ROOT = Path(__file__).resolve().parents[1]
MODES = {"every_epoch": 0.0, "default": train.CHECKPOINT_EVERY_S}


def one_run(params: dict, data: Path, n: int, every_s: float, out: Path) -> tuple[float, float, str]:
    """(wall s, CPU s, md5 of model.safetensors) of one training from scratch."""
    shutil.rmtree(out, ignore_errors=True)
    train.CHECKPOINT_EVERY_S = every_s
    wall, cpu = time.perf_counter(), time.process_time()
    study = Study.of(params)
    train.train_run(study.train, study.model, study.dataset_entry, data, n, 0, out)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall, cpu, hashlib.md5((out / "model.safetensors").read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, nargs="+", default=[2, 16, 64, 512])
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "mnist5k")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"]["max_steps"] = args.steps
    print(f"{'n':>4} {'mode':<12} {'wall s':>8} {'cpu s':>8} {'cpu ms/step':>12}  same model")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.experts:
            best: dict[str, tuple[float, float]] = {}
            hashes = set()
            for repeat in range(args.repeats):
                order = list(MODES) if repeat % 2 == 0 else list(MODES)[::-1]
                for mode in order:
                    wall, cpu, md5 = one_run(params, args.data, n, MODES[mode], Path(tmp) / mode)
                    hashes.add(md5)
                    old = best.get(mode, (float("inf"), float("inf")))
                    best[mode] = (min(old[0], wall), min(old[1], cpu))
            for mode, (wall, cpu) in best.items():
                print(f"{n:>4} {mode:<12} {wall:>8.2f} {cpu:>8.2f} {1e3 * cpu / args.steps:>12.2f}  "
                      f"{len(hashes) == 1}")
            (w0, c0), (w1, c1) = best["every_epoch"], best["default"]
            print(f"{n:>4} {'ratio':<12} {w0 / w1:>8.3f} {c0 / c1:>8.3f}")
    train.CHECKPOINT_EVERY_S = MODES["default"]


if __name__ == "__main__":
    main()
