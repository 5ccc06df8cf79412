"""The study's claims judged on this run's tables (the `claims` step): every claim of every
experiment (each experiment module of softmoe.experiments holds its own claims).

Writes metrics/claims.json (a DVC metric: `dvc metrics diff` shows a verdict that changed) and,
through softmoe.statistics.discrepancies, results/tables/<dataset>/discrepancies.csv. Each claim carries its
interval tests (softmoe.statistics.inference: {what, effect, lo, hi, margin, direction, outcome, mde}),
`alpha` and `correction` (family-wise over the claim's tests), `margin_reason`, `scale` (this
run's next to the paper's, `at_paper_scale`), `paper_claim` ("a"/"b"/"c" of docs/study.md §1;
null for our own checks) and its verdict: SUPPORTED, CONTRADICTED, INCONCLUSIVE (with
`detectable`) or NOT RUN (with `why`). Observations (measurements reported without a verdict)
sit beside the claims. The report only renders these files."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from softmoe import experiments
from softmoe.base import atomic
from softmoe.statistics import inference
from softmoe.workflow import tables
from softmoe.experiments import training
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.e4_latency import LATENCY
from softmoe.statistics.discrepancies import discrepancies, experiments_scope, summary
from softmoe.base.errors import UserError
from softmoe.experiments.unit import ALPHA, VERDICTS, Claim, Evidence, Observation
from softmoe.study.params import Study


# The paper's claims in docs/study.md §1's order, then our own checks, then the paper-scale runs.
KEY_ORDER = ("a", "b1", "b2", "b3", "c2", "c2_gpu", "x1", "cifar10", "cifar100", "imagenet")


def judge(study: Study, frames: dict, gpu: dict | None) -> list[Claim | Observation]:
    """Every claim (and observation) of every experiment (softmoe.experiments), judged on the
    tables of a run of `study` (and the GPU benchmark file when there is one), in KEY_ORDER
    (keys it does not name after, in experiment order)."""
    evidence = Evidence(study, frames, gpu, scope=training.scope(study, frames),
                        scale=training.run_scale(study, frames))
    found = []
    for claim in experiments.claims():
        result = claim(evidence)
        found += [r for r in (result if isinstance(result, list) else [result]) if r is not None]
    rank = {key: i for i, key in enumerate(KEY_ORDER)}
    return sorted(found, key=lambda c: rank.get(c.key, len(rank)))


def check(claim: Claim) -> Claim:
    """A claim's verdict follows from its own tests: refuse to write one that does not."""
    want = inference.verdict_of([t["outcome"] for t in claim.tests])
    if claim.verdict != want or (want == inference.NOT_RUN and not claim.why):
        raise ValueError(f"claim {claim.key}: verdict {claim.verdict} does not follow from its tests ({want}) "
                         "or a NOT RUN claim says no why")
    return claim


# ---- the step ----------------------------------------------------------------------------------------
def write_claims(study: Study, tables_dir: Path, gpu_json: Path | None, out_json: Path, out_csv: Path) -> None:
    """The `claims` step: metrics/claims.json and the discrepancies table."""
    frames = tables.read_all(tables_dir)
    gpu = tables.read_json(gpu_json, "rerun benchmarks/gpu.sh") if gpu_json else None
    judged = judge(study, frames, gpu)
    claims = [check(c) for c in judged if isinstance(c, Claim)]
    observations = [o for o in judged if isinstance(o, Observation)]
    dataset = study.dataset
    found = discrepancies(dataset, frames[SELECTION.name], frames[SYNTHETIC_LOSS.name], frames[LATENCY.name],
                          train_size=study.dataset_entry.train_size, latency_width=study.latency.wide.width)
    beyond = found[found["beyond"].astype(bool)]
    scope = experiments_scope(dataset, beyond)
    counts = {v: sum(c.verdict == v for c in claims) for v in VERDICTS}
    atomic.write_json(out_json, {
        "dataset": dataset, "alpha": ALPHA, "counts": counts, "order": [c.key for c in claims],
        "claims": {c.key: asdict(c) for c in claims},
        "observations": {o.key: asdict(o) for o in observations},
        "scope": scope,
        "discrepancies": summary(found)})
    atomic.write_csv(out_csv, found)


def read_claims(path: Path) -> dict:
    """metrics/claims.json as written by the claims step."""
    obj = tables.read_json(path, "rerun `softmoe claims`")
    if obj is None or "claims" not in obj:
        raise UserError(f"{path}: no claims found; run `softmoe claims` first")
    return obj
