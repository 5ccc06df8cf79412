"""The study's claims judged on this run's tables (the `claims` step): every claim of every
experiment (each experiment module of softmoe.experiments holds its own claims).

Writes metrics/claims.json (a DVC metric: `dvc metrics diff` shows a verdict that changed) and,
through softmoe.discrepancies, results/tables/<dataset>/discrepancies.csv. Each claim says what
it was judged on (dataset, device, model), our number, the paper's, the tolerance and why, and
the verdict. The report only renders these files (docs/study.md §1 for the claims)."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from softmoe import atomic, experiments, tables
from softmoe.discrepancies import discrepancies, experiments_scope
from softmoe.errors import UserError
from softmoe.experiments.unit import FAIL, NOT_RUN, PASS, Claim, Evidence
from softmoe.params import Study


def judge(study: Study, frames: dict, gpu: dict | None) -> list[Claim]:
    """Every claim of every experiment (softmoe.experiments), judged on the tables of a run of
    `study` (and the GPU benchmark file when there is one)."""
    evidence = Evidence(study, frames, gpu)
    found = []
    for claim in experiments.claims():
        result = claim(evidence)
        found += result if isinstance(result, list) else [result]
    return found


# ---- the step ----------------------------------------------------------------------------------------
def write_claims(study: Study, tables_dir: Path, gpu_json: Path | None, out_json: Path, out_csv: Path) -> None:
    """The `claims` step: metrics/claims.json and the discrepancies table."""
    frames = tables.read_all(tables_dir)
    gpu = tables.read_json(gpu_json, "rerun benchmarks/gpu.sh") if gpu_json else None
    claims = judge(study, frames, gpu)
    dataset = study.dataset
    found = discrepancies(dataset, frames)
    beyond = found[found["beyond"]]
    scope = experiments_scope(dataset, beyond)
    counts = {v: sum(c.verdict == v for c in claims) for v in (PASS, FAIL, NOT_RUN)}
    atomic.write_json(out_json, {
        "dataset": dataset, "counts": counts, "order": [c.key for c in claims],
        "claims": {c.key: asdict(c) for c in claims},
        "scope": scope,
        "discrepancies": {"compared": len(found), "beyond_interval": len(beyond),
                          "per_experiment": {e: int(g["beyond"].sum()) for e, g in found.groupby("experiment")}}})
    atomic.write_csv(out_csv, found)


def read_claims(path: Path) -> dict:
    """metrics/claims.json as written by the claims step."""
    obj = tables.read_json(path, "rerun `softmoe claims`")
    if obj is None or "claims" not in obj:
        raise UserError(f"{path}: no claims found; run `softmoe claims` first")
    return obj
