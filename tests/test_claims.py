"""The claims step: verdicts from interval tests (softmoe.statistics.inference, softmoe.statistics.verdicts). Every
judged claim is SUPPORTED on good tables, CONTRADICTED where a table contradicts it beyond its
interval, INCONCLUSIVE (never CONTRADICTED) on a tie, NOT RUN without its data or on stale
evidence (with why), and metrics/claims.json carries the tests, alpha, correction, margins,
scale, the paper's numbering, the observations, the scope and the discrepancies."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from softmoe.audit import claims
from softmoe.provenance import deps
from softmoe.statistics import discrepancies, inference
from softmoe.study import paper, stats
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.experiments import e1_theorem as e1, e2_oracle as e2, e3_selection as e3, e4_latency as e4, training, unit
from test_figures import (latency_rows, random_acc, sample_study, selection_rows, synthetic_loss_rows,
                          training_rows, write_sample_tables)

SCOPE = {"dataset": "mnist5k", "device": "cpu", "model": "mnist"}
JUDGED = ["a", "b1", "b2", "b3", "c2", "c2_gpu", "x1"]
ORDER = JUDGED + ["cifar10", "cifar100", "imagenet"]
SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = unit.SUPPORTED, unit.CONTRADICTED, unit.INCONCLUSIVE, unit.NOT_RUN


def seeded_loss(**kw) -> pd.DataFrame:
    """The sample synthetic runs (three seeds unless `seeds` is given)."""
    return synthetic_loss_rows(**kw)


def flat_training() -> pd.DataFrame:
    """All-experts accuracy .950 ± .003 across n (one seed): inside x1's ±0.02 band."""
    train = training_rows()
    train["test_accuracy"] = [0.95 + 0.003 * ((i % 3) - 1) for i in range(len(train))]
    return train


def tenk_selection() -> pd.DataFrame:
    """The sample selection table on 10,000 test images (the paper's MNIST test set)."""
    return selection_rows().assign(images=10_000)


def _frames(tmp_path: Path, **kw) -> dict:
    kw.setdefault(e1.SYNTHETIC_LOSS.name, seeded_loss())
    kw.setdefault(training.TRAINING.name, flat_training())
    kw.setdefault(e3.SELECTION.name, tenk_selection())
    folder = write_sample_tables(tmp_path / "tables", **kw)
    return tables.read_all(folder)


def _judge(frames: dict, gpu: dict | None) -> list:
    return claims.judge(sample_study(), frames, gpu)


def _write_claims(tables_dir: Path, gpu: Path | None, out: Path, csv: Path) -> None:
    """The claims step as the CLI calls it, on the sample study."""
    claims.write_claims(sample_study(), tables_dir, gpu, out, csv)


def _by_key(found) -> dict:
    return {c.key: c for c in found}


def fresh_code() -> dict:
    """A code digest that matches today's files (softmoe.bench.suite.code_digest's form)."""
    return deps.code_digests(["src/softmoe/bench/timing.py", "src/softmoe/model/layer.py"])


def gpu_file(ratios: dict[int, dict[int, float]] | None = None, code: dict | None = None) -> dict:
    """A GPU benchmark file (reports/benchmarks-gpu.json) with the wide layer's keep path:
    batch -> k -> time ratio to k = n (n = 8; quartiles ±2 %, 30 repeats), plus rows the claim
    must ignore, and the code digest of the files it measured (today's unless given)."""
    ratios = ratios or {1: {8: 1.0, 6: 0.8, 4: 0.6, 2: 0.4}, 100: {8: 1.0, 6: 0.78, 4: 0.55, 2: 0.3}}
    rows = [{"config": "wide-full", "path": "selective", "device": "cuda", "n": 8, "k": k, "batch": b,
             "ratio": r, "median_ms": 3.0 * r, "q25_ms": 2.94 * r, "q75_ms": 3.06 * r, "repeats": 30}
            for b, by_k in ratios.items() for k, r in by_k.items()]
    rows += [{"config": "wide-full", "path": "dense", "device": "cuda", "n": 8, "k": 8, "batch": 1, "ratio": 1.0},
             {"config": "mnist", "path": "selective", "device": "cuda", "n": 16, "k": 4, "batch": 1, "ratio": 9.0},
             {"config": "wide-full", "path": "selective", "device": "cpu", "n": 8, "k": 2, "batch": 1, "ratio": 9.0}]
    return {"created": "2026-11-30T12:00:00+0000", "commit": "abc1234", "selective": rows,
            "code": fresh_code() if code is None else code,
            "machine": {"device_name": {"cpu": "Intel Xeon", "cuda": "NVIDIA H200"}, "devices": ["cuda"]}}


def outcomes(claim) -> dict[str, str]:
    return {t["what"]: t["outcome"] for t in claim.tests}


# ---- every claim -------------------------------------------------------------------------------
def test_every_claim_is_supported_on_good_tables(tmp_path):
    found = _judge(_frames(tmp_path), gpu_file())
    assert [c.key for c in found if isinstance(c, unit.Claim)] == ORDER
    by_key = _by_key(found)
    for key in JUDGED:
        claim = by_key[key]
        assert claim.verdict == SUPPORTED, (key, claim.ours, claim.tests)
        assert claim.tests and all(t["outcome"] == "supports" for t in claim.tests)
        assert claim.statement and claim.tolerance and claim.margin_reason and claim.ours != "–"
        assert claim.alpha == 0.05 and claim.correction and claim.why == "" and claim.detectable == ""
        assert claim.paper_claim == {"a": "a", "c2": "c", "c2_gpu": "c", "x1": None}.get(key, "b")
        assert set(claim.scale) >= {"train_images", "test_images", "seeds", "device", "model", "paper",
                                    "at_paper_scale", "note"}
    assert by_key["b1"].scale["at_paper_scale"] is False and "4,000 training images" in by_key["b1"].scale["note"]
    assert by_key["b1"].scale["paper"]["train_images"] == 60_000
    assert "Bonferroni over 15 tests" in by_key["b1"].correction
    for key in ("cifar10", "cifar100", "imagenet"):        # mnist5k: the paper's other datasets not run here
        claim = by_key[key]
        assert claim.verdict == NOT_RUN and f"--configfile config/{key}.yaml" in claim.why and not claim.tests
        assert claim.paper_claim == ("c" if key == "imagenet" else "b")
    observation = by_key["e_trained"]
    assert isinstance(observation, unit.Observation) and "dispatch dominates at this size" in observation.note


def test_a_claims_verdict_must_follow_from_its_tests():
    claim = e3.claim_alg1_beats_random(selection_rows(), SCOPE)
    assert claims.check(claim) is claim
    claim.verdict = CONTRADICTED
    with pytest.raises(ValueError, match="does not follow from its tests"):
        claims.check(claim)
    empty = e3.claim_alg1_beats_random(selection_rows().query("method != 'random'"), SCOPE)
    assert empty.verdict == NOT_RUN and empty.why and claims.check(empty) is empty


# ---- (b1) Algorithm 1 vs random: paired, non-inferiority -------------------------------------------
def _with_seeds(sel: pd.DataFrame, seed_sd: float = 0.01, diff_sd: float = 0.35) -> pd.DataFrame:
    """The sample selection table with 3 training seeds: each seed's Algorithm 1 − random moved by a
    seed-to-seed sd of about `seed_sd`, per-image sd of the difference `diff_sd`."""
    out = []
    for seed, jitter in zip((0, 1, 2), (-seed_sd, 0.0, seed_sd)):
        part = sel.assign(seed=seed)
        alg = part["method"] == "alg1"
        part.loc[alg, "accuracy"] += jitter
        part.loc[alg, "diff_sd"] = diff_sd
        out.append(part)
    return pd.concat(out, ignore_index=True)


def _set_alg1(sel: pd.DataFrame, n: int, k: int, below_random: float) -> pd.DataFrame:
    """Algorithm 1 at (n, k) set to the random mean minus `below_random`, per seed."""
    for seed in sel["seed"].unique():
        at = (sel["n"] == n) & (sel["k"] == k) & ~sel["renormalize"] & (sel["seed"] == seed)
        rnd = sel.loc[at & (sel["method"] == "random"), "accuracy"].iloc[0]
        sel.loc[at & (sel["method"] == "alg1"), "accuracy"] = rnd - below_random
    return sel


def test_alg1_clearly_below_random_is_contradicted():
    sel = _set_alg1(_with_seeds(selection_rows()), 16, 4, 0.08)
    claim = e3.claim_alg1_beats_random(sel, SCOPE)
    assert claim.verdict == CONTRADICTED
    assert outcomes(claim)["n=16, k=4 (n/4)"] == "contradicts"
    assert claim.numbers["contradicts"] == 1 and "1 contradict" in claim.ours
    worst = next(t for t in claim.tests if t["what"] == "n=16, k=4 (n/4)")
    assert worst["effect"] == pytest.approx(-0.08) and worst["hi"] < -0.01


@pytest.mark.parametrize("below", [0.0, 0.008])
def test_a_one_point_tie_at_n4_is_not_contradicted(below):
    """The paper's own tie (n = 4, k = n/4), and ours (.636 against .644): within the interval."""
    sel = _set_alg1(_with_seeds(selection_rows()), 4, 1, below)
    claim = e3.claim_alg1_beats_random(sel, SCOPE)
    assert claim.verdict == INCONCLUSIVE
    assert outcomes(claim)["n=4, k=1 (n/4)"] == "neither"
    assert "n=4, k=1" in claim.detectable and "80 % power" in claim.detectable
    test = next(t for t in claim.tests if t["what"] == "n=4, k=1 (n/4)")
    assert test["lo"] < -0.01 < test["hi"] and 0.01 < test["mde"] < 0.1


def test_alg1_claim_without_diff_sd_uses_the_bound_and_says_so():
    sel = _with_seeds(selection_rows())
    exact = e3.claim_alg1_beats_random(sel, SCOPE)
    bound = e3.claim_alg1_beats_random(sel.drop(columns="diff_sd"), SCOPE)
    assert "diff_sd missing" in bound.evidence and "diff_sd missing" not in exact.evidence
    width = {t["what"]: t["hi"] - t["lo"] for t in exact.tests}
    assert all(t["hi"] - t["lo"] > width[t["what"]] for t in bound.tests)     # the bound is wider
    assert "observation, not a criterion" in exact.evidence


def test_alg1_claim_reads_the_accuracies_not_the_z_column():
    sel = selection_rows()
    alg = (sel["method"] == "alg1") & (sel["n"] == 8) & (sel["k"] == 1) & ~sel["renormalize"]
    sel.loc[alg, "accuracy"] = 0.0  # the stored z column still says Algorithm 1 wins
    assert e3.claim_alg1_beats_random(sel, SCOPE).verdict == CONTRADICTED


def test_alg1_vs_random_pairs_and_z():
    pairs = e3.alg1_vs_random(selection_rows(ns=[8]))
    assert pairs["k"].tolist() == list(range(1, 8)) and (pairs["std"] == 0.004).all()
    assert pairs["z"].tolist() == pytest.approx(((pairs["accuracy"] - pairs["accuracy_random"]) / 0.004).tolist(),
                                                abs=0.05)
    assert pairs.loc[pairs["k"] == 2, "accuracy_random"].item() == round(random_acc(8, 2), 4)


# ---- (b2) the gap to all experts ----------------------------------------------------------------
def test_gap_claim_uses_n_over_8_and_is_contradicted_when_the_gap_grows():
    sel = selection_rows()
    good = e3.claim_gap_shrinks(sel, [0.5, 0.25, 0.125], SCOPE)
    assert good.verdict == SUPPORTED and "k = n/8" in good.statement and len(good.tests) == 2
    gaps = e3.gaps_to_all(sel, 0.125)
    assert gaps["n"].tolist() == [8, 16, 32, 64] and gaps["gap"].is_monotonic_decreasing
    bad = sel.copy()
    for n, drop in ((8, 0.0), (16, 0.2), (32, 0.3), (64, 0.4)):
        rows = (bad["method"] == "alg1") & (bad["n"] == n) & (bad["k"] == n // 8) & ~bad["renormalize"]
        bad.loc[rows, "accuracy"] -= drop
    claim = e3.claim_gap_shrinks(bad, [0.5, 0.25, 0.125], SCOPE)
    assert claim.verdict == CONTRADICTED and set(outcomes(claim).values()) == {"contradicts"}
    small = sel[sel["n"] <= 4]
    assert e3.gap_fraction(small, [0.5, 0.25, 0.125]) == 0.5
    one = e3.claim_gap_shrinks(sel[sel["n"] == 8], [0.125], SCOPE)
    assert one.verdict == NOT_RUN and "fewer than two n" in one.why


# ---- (b3) the oracle ---------------------------------------------------------------------------------
def test_oracle_rows_pair_the_random_baseline_at_the_same_k():
    rows = discrepancies.oracle_rows(selection_rows())
    assert list(rows["n"]) == [4, 8, 16] and list(rows["k"]) == [1, 2, 4]
    assert list(rows["distinct"]) == [4, 27, 110]
    assert list(rows["possible"]) == [4, 28, 1820]
    assert rows["random"].tolist() == pytest.approx([round(random_acc(n, n // 4), 4) for n in (4, 8, 16)])


def test_oracle_claim_is_contradicted_when_oracle_accuracy_falls():
    sel = selection_rows()
    assert e2.claim_oracle_rises(sel, SCOPE).verdict == SUPPORTED
    sel.loc[(sel["method"] == "oracle") & (sel["n"] == 16), "accuracy"] = 0.90
    bad = e2.claim_oracle_rises(sel, SCOPE)
    assert bad.verdict == CONTRADICTED and outcomes(bad)["oracle(n=16) − oracle(n=8)"] == "contradicts"
    assert "n=16: 0.9000" in bad.ours
    missing = e2.claim_oracle_rises(sel[sel["method"] != "oracle"], SCOPE)
    assert missing.verdict == NOT_RUN and "fewer than two n" in missing.why
    saturated = selection_rows()
    saturated.loc[saturated["method"] == "oracle", "accuracy"] = 1.0      # no rise to see: not a contradiction
    assert e2.claim_oracle_rises(saturated, SCOPE).verdict == INCONCLUSIVE


# ---- (a) Theorem 1 -----------------------------------------------------------------------------
def test_plateau_claim_is_contradicted_when_n1_is_not_far_above():
    good = e1.claim_plateau(seeded_loss(seeds=(0,)))
    assert good.verdict == SUPPORTED and len(good.tests) == 4
    assert "v=25 5x2: " in good.ours and "(n=10) = 30.0" in good.ours
    assert good.numbers["ratio_v25_5x2"] == pytest.approx(30.0, abs=0.05)
    assert "one synthetic seed" in good.evidence
    flat = seeded_loss(plateau_scale={("2x5", 1): 1.5 * 0.9 / 12.0}, seeds=(0,))   # n = 1 at 1.5x the best n >= 2
    bad = e1.claim_plateau(flat)
    assert bad.verdict == CONTRADICTED and outcomes(bad)["v=25 2x5: log(n=1 / n=10)"] == "contradicts"


def test_plateau_claim_pairs_synthetic_seeds():
    rng = np.random.default_rng(0)
    runs = []
    for seed in (0, 1, 2):
        part = seeded_loss(seeds=(0,)).assign(seed=seed)
        part["loss"] *= np.exp(rng.normal(0, 0.05)) * (1 + rng.normal(0, 0.01, len(part)))
        runs.append(part)
    claim = e1.claim_plateau(pd.concat(runs, ignore_index=True))
    assert claim.verdict == SUPPORTED and "intervals over 3 synthetic seeds" in claim.evidence


def test_plateau_claim_not_run_without_synthetic_runs():
    missing = e1.claim_plateau(None)
    assert missing.verdict == NOT_RUN and "synthetic_loss.csv missing" in missing.why
    assert e1.claim_plateau(seeded_loss().iloc[:0]).verdict == NOT_RUN
    no_single = seeded_loss()
    assert e1.claim_plateau(no_single[no_single["n"] > 1]).verdict == NOT_RUN


# ---- (c2) inference time on the paper's layer ---------------------------------------------------
def test_time_claim_judges_the_quarter_ratio_against_the_papers():
    good = e4.claim_time_wide(latency_rows())
    assert good.verdict == SUPPORTED and good.paper_claim == "c"
    assert [t["margin"] for t in good.tests] == pytest.approx([0.463 + 0.1, 0.522 + 0.1], abs=0.01)
    slow = latency_rows()
    quarter = (slow["config"] == "wide") & (slow["k"] == 2)
    slow.loc[quarter, "median_ms"] = slow.loc[(slow["config"] == "wide") & (slow["k"] == 8), "median_ms"].to_numpy()
    slow.loc[quarter, ["q25_ms", "q75_ms"]] = slow.loc[quarter, ["median_ms"]].to_numpy() * [0.97, 1.04]
    assert e4.claim_time_wide(slow).verdict == CONTRADICTED        # k = n/4 as slow as k = n
    missing = e4.claim_time_wide(None)
    assert missing.verdict == NOT_RUN and "no 'wide' rows" in missing.why
    assert e4.claim_time_wide(latency_rows().query("k == n")).verdict == NOT_RUN
    assert e4.claim_time_wide(latency_rows(), width=0.25).scale["at_paper_scale"] is False


def test_time_claim_uses_per_round_ratios_when_recorded():
    """latency_rounds.csv: the order-statistic interval of the median per-round ratio at k = n/4."""
    rounds = pd.DataFrame([{"config": "wide", "n": 8, "k": k, "batch": b, "round": r, "ms": 1.0,
                            "ratio_to_full": (0.30 + 0.002 * r) if k == 2 else 1.0}
                           for b in (1, 100) for k in (8, 2) for r in range(20)])
    claim = e4.claim_time_wide(latency_rows(), rounds=rounds)
    assert claim.verdict == SUPPORTED and all("median of 20 rounds" in t["what"] for t in claim.tests)
    assert all(0.30 <= t["lo"] <= t["effect"] <= t["hi"] <= 0.34 for t in claim.tests)
    few = e4.claim_time_wide(latency_rows(), rounds=rounds[rounds["round"] < 5])    # no interval from 5 rounds
    assert few.verdict == INCONCLUSIVE and "too few repeats" in few.detectable


def test_trained_model_timings_are_an_observation_not_a_verdict():
    obs = e4.observe_time_trained(latency_rows(monotone=False), SCOPE)
    assert isinstance(obs, unit.Observation) and obs.ours == "time falls with k in 0 of 2 (model, batch size)"
    assert "dispatch dominates at this size" in obs.note
    assert e4.observe_time_trained(None, SCOPE) is None


# ---- (c2_gpu) fresh evidence only --------------------------------------------------------------------
def test_gpu_claim_reads_the_wide_keep_path_on_cuda_only():
    good = e4.claim_time_gpu(gpu_file())
    assert good.verdict == SUPPORTED and good.ours == "batch 1: 0.40, batch 100: 0.30"
    assert good.scope["device"] == "cuda (NVIDIA H200)" and "2026-11-30" in good.evidence
    slow = e4.claim_time_gpu(gpu_file({1: {8: 2.53, 6: 2.28, 4: 2.1, 2: 1.88}, 100: {8: 1.0, 2: 0.3}}))
    assert slow.verdict == CONTRADICTED and "batch 1: 0.74" in slow.ours      # 1.88 / 2.53 against 0.56
    assert e4.claim_time_gpu({"selective": []}).verdict == NOT_RUN
    missing = e4.claim_time_gpu(None)
    assert missing.verdict == NOT_RUN and "not measured on GPU" in missing.why


@pytest.mark.parametrize("code", [{"src/softmoe/bench/timing.py": "0" * 64}, {"layer.py": "86905f4d078db5f4"}, {}])
def test_a_stale_gpu_file_is_not_run(code):
    """Measured on other code (today's timing.py differs; the old 16-hex form; no digest): NOT RUN."""
    claim = e4.claim_time_gpu(gpu_file(code=code))
    assert claim.verdict == NOT_RUN and claim.why.startswith("stale: measured at abc1234") and not claim.tests


# ---- (x1) the budget ------------------------------------------------------------------------------
def test_budget_check_is_an_equivalence_test_around_the_mean_over_n():
    good = training.claim_budget_holds(flat_training(), SCOPE, 10_000)
    assert good.verdict == SUPPORTED and good.paper_claim is None and len(good.tests) == 12
    # on 1,000 test images the interval of one n's deviation is about as wide as the band itself
    small = training.claim_budget_holds(flat_training(), SCOPE, 1000)
    assert small.verdict == INCONCLUSIVE and "80 % power" in small.detectable
    train = flat_training()
    train.loc[train["n"] == 64, "test_accuracy"] = 0.88
    bad = training.claim_budget_holds(train, SCOPE, 10_000)
    assert bad.verdict == CONTRADICTED and "n=64 0.880" in bad.ours
    one = training.claim_budget_holds(train[train["n"] == 2], SCOPE, 1000)
    assert one.verdict == NOT_RUN and "fewer than two n" in one.why


def test_budget_check_includes_n1_when_trained():
    train = pd.concat([flat_training(), flat_training().query("n == 2").assign(n=1, test_accuracy=0.949)])
    claim = training.claim_budget_holds(train, SCOPE, 10_000)
    assert "n=1: acc − mean over n" in outcomes(claim) and claim.verdict == SUPPORTED


# ---- the paper's other datasets ----------------------------------------------------------------
def test_dataset_mnist5k_names_cifar_and_imagenet_as_not_run():
    found = _by_key(e3.claims_elsewhere("mnist5k", selection_rows()))
    assert sorted(found) == ["cifar10", "cifar100", "imagenet"]
    for key, claim in found.items():
        assert claim.verdict == NOT_RUN and "not run here" in claim.why
        assert claim.scale["command"] == f"snakemake --cores all --configfile config/{key}.yaml"
        assert claim.paper != "–"


def test_cifar10_headlines_judged_when_the_run_is_on_cifar10():
    ref = paper.headlines("cifar10")        # n=64 Alg1 k=1 .960, n=128 Alg1 k=1 .925, random k=1 .204
    rows = [{"dataset": "cifar10", "n": int(r.n), "seed": s, "k": int(r.k), "k_frac": r.k / r.n, "method": r.method,
             "renormalize": False, "accuracy": r.accuracy + 0.001 * s, "std": 0.01, "z": None, "count": 10,
             "images": 10_000} for r in ref.itertuples() for s in (0, 1, 2)]
    sel = pd.DataFrame(rows)
    cifar = _by_key(e3.claims_elsewhere("cifar10", sel))
    assert cifar["cifar10"].verdict == SUPPORTED and cifar["cifar10"].ours == "0.961, 0.926, 0.205"
    assert cifar["cifar100"].verdict == NOT_RUN
    sel.loc[(sel["n"] == 128) & (sel["method"] == "alg1"), "accuracy"] = 0.85   # 7.5 points below the paper
    assert _by_key(e3.claims_elsewhere("cifar10", sel))["cifar10"].verdict == CONTRADICTED


# ---- the paper's own numbers ------------------------------------------------------------------
def test_the_papers_own_numbers_contradict_none_of_the_claims():
    """The margins accept what the paper reports (docs/study.md §5 E1, E2, E3), judged as one seed
    on 10,000 test images: its tie at n = 4, k = n/4 is not a contradiction."""
    plateaus = paper.e1_plateaus()
    loss = pd.DataFrame([{"step": s, "loss": r.loss * (1 + 0.01 * (s % 3)), "variance": 25, "tokens": r.tokens,
                          "n": r.n, "seed": 0} for r in plateaus.itertuples() for s in range(50)])
    assert e1.claim_plateau(loss).verdict == SUPPORTED
    rows = []
    for r in paper.e3_mnist().itertuples():
        k = r.n if r.method == "all" else stats.k_at(r.n, r.k_frac)
        rows.append({"n": r.n, "seed": 0, "k": k, "method": r.method, "renormalize": False,
                     "accuracy": r.accuracy, "std": float("nan"), "count": float("nan"), "images": 10_000})
    for r in paper.e2_oracle().itertuples():
        rows.append({"n": r.n, "seed": 0, "k": r.n // 4, "method": "oracle", "renormalize": False,
                     "accuracy": r.oracle, "std": float("nan"), "count": r.distinct, "images": 10_000})
    sel = pd.DataFrame(rows)
    b1 = e3.claim_alg1_beats_random(sel, SCOPE)
    assert b1.verdict == INCONCLUSIVE and "n=4, k=1" in b1.detectable
    assert e3.claim_gap_shrinks(sel, [0.5, 0.25, 0.125], SCOPE).verdict == SUPPORTED
    assert e2.claim_oracle_rises(sel, SCOPE).verdict == SUPPORTED
    train = pd.DataFrame([{"n": r.n, "seed": 0, "test_accuracy": r.accuracy}
                          for r in paper.e3_mnist().itertuples() if r.method == "all"])
    assert training.claim_budget_holds(train, SCOPE, 10_000).verdict == SUPPORTED


# ---- the step: metrics/claims.json ------------------------------------------------------------
def _strict_json(path: Path) -> dict:
    def no_constant(name):
        raise AssertionError(f"{path}: {name} is not JSON (DVC metrics cannot read it)")
    return json.loads(path.read_text(), parse_constant=no_constant)


def test_write_claims_writes_tests_counts_observations_scope_and_discrepancies(tmp_path):
    folder = write_sample_tables(tmp_path / "tables", synthetic_loss=seeded_loss(), training=flat_training(),
                                 selection=tenk_selection())
    out, csv = tmp_path / "metrics" / "claims.json", folder / "discrepancies.csv"
    _write_claims(folder, None, out, csv)
    obj = _strict_json(out)
    assert set(obj) == {"dataset", "alpha", "counts", "order", "claims", "observations", "scope", "discrepancies"}
    assert obj["dataset"] == "mnist5k" and obj["alpha"] == 0.05
    assert obj["order"] == ORDER and sorted(obj["claims"]) == sorted(ORDER)
    assert obj["counts"] == {SUPPORTED: 6, CONTRADICTED: 0, INCONCLUSIVE: 0, NOT_RUN: 4}
    for key, claim in obj["claims"].items():
        assert claim["key"] == key and claim["verdict"] in unit.VERDICTS
        assert {"statement", "scope", "paper_claim", "tests", "alpha", "correction", "margin_reason", "scale",
                "why", "detectable", "ours", "paper", "evidence", "numbers"} <= set(claim)
        for test in claim["tests"]:
            assert set(test) == {"what", "effect", "lo", "hi", "margin", "direction", "outcome", "mde"}
            assert test["lo"] <= test["effect"] <= test["hi"] and test["direction"] in ("above", "below")
    gpu = obj["claims"]["c2_gpu"]
    assert gpu["verdict"] == NOT_RUN and "not measured on GPU" in gpu["why"]
    assert "dispatch dominates at this size" in obj["observations"]["e_trained"]["note"]
    scope = obj["scope"]
    assert list(scope) == ["E1", "E2", "E3", "E4", "cifar10", "cifar100", "imagenet", "mnist_full"]
    for key in ("cifar10", "cifar100", "imagenet", "mnist_full"):
        assert scope[key]["status"] == "not run here"
    found = pd.read_csv(csv)
    assert found.columns.tolist() == discrepancies.DISCREPANCY_COLUMNS
    assert obj["discrepancies"] == json.loads(json.dumps(discrepancies.summary(found)))
    assert claims.read_claims(out)["order"] == ORDER


def test_write_claims_on_crafted_tables_gives_contradicted_and_not_run(tmp_path):
    """Algorithm 1 clearly below random: b1 CONTRADICTED; no synthetic runs: (a) NOT RUN, E1 not run."""
    sel = _set_alg1(_with_seeds(selection_rows()), 16, 4, 0.08)
    folder = write_sample_tables(tmp_path / "tables", skip=(e1.SYNTHETIC_LOSS.name,), selection=sel,
                                 training=flat_training())
    out = tmp_path / "claims.json"
    _write_claims(folder, None, out, tmp_path / "discrepancies.csv")
    obj = _strict_json(out)
    verdicts = {k: c["verdict"] for k, c in obj["claims"].items()}
    assert verdicts["a"] == NOT_RUN and "synthetic_loss.csv missing" in obj["claims"]["a"]["why"]
    assert verdicts["b1"] == CONTRADICTED and obj["claims"]["b1"]["numbers"]["contradicts"] == 1
    assert obj["counts"] == {v: list(verdicts.values()).count(v) for v in unit.VERDICTS}
    assert obj["counts"][CONTRADICTED] == 1 and obj["counts"][NOT_RUN] == 5
    assert "E1" not in set(pd.read_csv(tmp_path / "discrepancies.csv")["experiment"])


def test_write_claims_reads_the_gpu_file_and_sets_stale_evidence_aside(tmp_path):
    folder = write_sample_tables(tmp_path / "tables", synthetic_loss=seeded_loss(), training=flat_training(),
                                 selection=tenk_selection())
    gpu = tmp_path / "benchmarks-gpu.json"
    gpu.write_text(json.dumps(gpu_file()))
    _write_claims(folder, gpu, tmp_path / "c.json", tmp_path / "d.csv")
    assert _strict_json(tmp_path / "c.json")["claims"]["c2_gpu"]["verdict"] == SUPPORTED
    gpu.write_text(json.dumps(gpu_file(code={"src/softmoe/bench/timing.py": "0" * 64})))
    _write_claims(folder, gpu, tmp_path / "c.json", tmp_path / "d.csv")
    stale = _strict_json(tmp_path / "c.json")["claims"]["c2_gpu"]
    assert stale["verdict"] == NOT_RUN and "stale: measured at abc1234" in stale["why"]
    gpu.write_text("[]")
    with pytest.raises(UserError, match=r"benchmarks-gpu\.json: expected a JSON object; rerun benchmarks/gpu\.sh"):
        _write_claims(folder, gpu, tmp_path / "c.json", tmp_path / "d.csv")


def test_read_claims_names_the_missing_step(tmp_path):
    with pytest.raises(UserError, match=r"claims\.json: no claims found; run `softmoe claims` first"):
        claims.read_claims(tmp_path / "claims.json")


def test_verdict_names_agree_with_the_statistics():
    assert unit.VERDICTS == inference.VERDICTS and unit.ALPHA == inference.ALPHA
