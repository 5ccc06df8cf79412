"""The report: a verdict box first, every section, figure and claim, offline HTML and Markdown,
our numbers beside the paper's with intervals, and a provenance section whose every md5 is the
md5 of the file it names, computed when the report is written. The claims themselves are
tests/test_claims.py's."""
from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from softmoe import cli, experiments
from softmoe.audit import claims
from softmoe.provenance import record
from softmoe.report import audit, build, render, summary
from softmoe.statistics import discrepancies
from softmoe.study import paper
from softmoe.workflow import tables
from softmoe.base.errors import UserError
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.e4_latency import LATENCY
from softmoe.study.params import Study
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS, SYNTHETIC_PROOF
from softmoe.experiments.e3_calibration import CALIBRATION
from softmoe.experiments.e4_latency import LATENCY
from softmoe.experiments.training import CURVES
from test_figures import (calibration_rows, draw as draw_figures, latency_rows, sample_params, selection_rows,
                          synthetic_loss_rows, training_rows, training_time_rows, write_sample_tables)

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# an attribute or CSS rule that would make a browser fetch something over the network
REMOTE = re.compile(r"""(?:src|href|srcset|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//"""
                    r"""|url\(\s*["']?\s*(?:https?:)?//|@import|<script|<link|<iframe""", re.IGNORECASE)
SECTIONS = ["Reproducibility summary", "Setting", "Claims", "Scope: every experiment of the paper",
            "Algorithm 1 vs random (E3; paper figures 1 and 2)", "Oracle: best expert subsets (E2; paper table 1)",
            "Synthetic ‖x‖₂: Theorem 1 (E1; paper appendix C)",
            "Inference time of the selective path (E4; paper table 3)", "Training and the fixed budget",
            "Discrepancies: our numbers beside the paper's",
            "Reproduction check: this run against the committed metrics", "Benchmarks", "Provenance"]


def _bench_dir(root: Path) -> Path:
    bench = root / "benchmarks"
    for rule, job, seconds in (("train", "mnist5k/n2-s0", 61.5), ("train", "mnist5k/n4-s0", 70.25),
                               ("evaluate", "mnist5k/n2-s0", 12.0), ("figures", "mnist5k", 9.5)):
        path = bench / rule / f"{job}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(BENCH_HEADER + f"{seconds}\t0:01:01\t812.5\t1400.1\t700.2\t710.3\t0.1\t2.5\t95.0\t60.1\n")
    return bench


def _params_file(root: Path, params: dict) -> Path:
    path = root / "params.yaml"
    path.write_text("# sample study\n" + yaml.safe_dump(params, sort_keys=False))
    return path


def _claims(params: dict, tables: Path, root: Path) -> Path:
    """The claims step on the tables: metrics/claims.json and tables/discrepancies.csv."""
    out = root / "metrics" / "claims.json"
    study = Study.of(params)
    claims.write_claims(study, tables, None, out, tables / "discrepancies.csv")
    return out


def _hashed(root: Path) -> list[Path]:
    """Stand-ins for the data, models and metrics the workflow passes with --hash."""
    data, run = root / "data" / "mnist5k", root / "results" / "train" / "mnist5k" / "n2-s0"
    for folder in (data, run):
        folder.mkdir(parents=True, exist_ok=True)
    (data / "test.safetensors").write_bytes(b"\x00images" * 100)
    (run / "model.safetensors").write_bytes(b"\x01weights" * 100)
    (root / "metrics").mkdir(exist_ok=True)
    (root / "metrics" / "mnist5k.json").write_text('{"dataset": "mnist5k", "experts": {}}')
    return [data, root / "results" / "train" / "mnist5k", root / "metrics" / "mnist5k.json"]


def _build(root: Path, params: dict | None = None, draw: bool = True, **table_kw) -> tuple[Path, Path]:
    params = params or sample_params()
    tables = write_sample_tables(root / "results" / "tables" / "mnist5k", **table_kw)
    claims_json = _claims(params, tables, root)
    figs = root / "reports" / "figures"
    if draw:
        draw_figures(Study.of(params), tables, figs)
    html, md = root / "reports" / "report.html", root / "reports" / "report.md"
    build.build_report(Study.of(params), _params_file(root, params), tables, figs, claims_json, _bench_dir(root),
                        _hashed(root), html, md)
    return html, md


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("study")
    (root / "reports").mkdir()
    (root / "reports" / "benchmarks.json").write_text('{"layer": [{"n": 16, "batch": 1, "ms": 0.7312345}]}')
    return _build(root)


def _sections(md: str) -> list[str]:
    return re.findall(r"^## (.+)$", md, re.MULTILINE)


def test_report_has_every_section_figure_and_claim(built):
    html, md = built
    text = html.read_text()
    assert "<title>Beyond Parameter Count" in text
    assert [html_lib.unescape(t) for t in re.findall(r"<h2[^>]*>([^<]*)</h2>", text)] == SECTIONS
    assert text.count('src="data:image/png;base64,') == len(experiments.figures())
    verdicts = [c["verdict"] for c in _claims_json(html)["claims"].values()]
    for v in set(verdicts):
        assert text.count(f'<td class="{render.STATUS[v]}">{v}</td>') == verdicts.count(v), v
    assert "Not the paper&#39;s scale" in text and "4,000 training images instead of 60,000" in text
    assert "220 epochs instead of 15" in text and "optimizer steps instead" not in text  # 3,500 ~ 3,525
    md_text = md.read_text()
    assert _sections(md_text) == SECTIONS
    for stem in experiments.figures():
        assert f"![{stem}](figures/{stem}.png)" in md_text
        assert f"SVG: [{html.parent / 'figures' / stem}.svg](figures/{stem}.svg)" in md_text
    for v in set(verdicts):
        assert md_text.count(f"| {v} |") == verdicts.count(v), v


def _claims_json(html: Path) -> dict:
    return json.loads((html.parent.parent / "metrics" / "claims.json").read_text())


SUMMARY_PARTS = ["Scope of reproducibility", "Methodology", "Results", "What was easy", "What was difficult",
                 "Communication with the original authors"]


def test_the_reproducibility_summary_opens_the_report(built):
    html, md = built
    md_text = md.read_text()
    first = md_text.split("\n## ")[1]
    assert first.startswith("Reproducibility summary\n") and _sections(md_text)[0] == "Reproducibility summary"
    assert re.findall(r"^### (.+)$", first, re.MULTILINE) == SUMMARY_PARTS
    text = html.read_text()
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", text)[0] == "Reproducibility summary"
    assert text.index("<h2>Reproducibility summary</h2>") < text.index('<div class="verdict">') < \
        text.index("<h2>Setting</h2>")
    # methodology: what ran, at what scale and cost (the sample benchmark files: 153.25 s in 4 jobs)
    method = first.split("### Methodology")[1].split("### Results")[0]
    assert "n ∈ {2, 4, 8, 16, 32, 64}" in method and "1 training seed(s)" in method and "3,500 optimizer steps" in method
    assert "of 4,000 training images" in method and "on 1,000 test images" in method
    assert f"153 s of job time in 4 jobs" in method and record.cpu_model() in method
    # communication: none, and what the authors' code shows
    talk = first.split("### Communication with the original authors")[1]
    assert talk.lstrip().startswith("None.") and "ep14" in talk and "no shuffling" in talk and "renormalizes" in talk


def test_the_verdict_box_one_line_per_claim_with_the_scale_caveat(built):
    html, md = built
    obj = _claims_json(html)
    box = md.read_text().split("### Results")[1].split("### What was easy")[0]
    verdicts = [(v, k) for v, k in re.findall(r"^> \*\*([A-Z][A-Z ]+)\*\* — \((\w+)\) ", box, re.MULTILINE)
                if v != "NOTE"]                           # NOTE: the observations, not verdicts
    assert sorted(key for _, key in verdicts) == sorted(obj["order"])
    assert {k: v for v, k in verdicts} == {k: c["verdict"] for k, c in obj["claims"].items()}
    assert summary.counts_text(obj["counts"]) + " on mnist5k (1 training seed(s))" in box
    caveat = ("Not the paper's scale: 4,000 training images instead of 60,000; 1,000 test images instead of 10,000; "
              "220 epochs instead of 15. Compare shapes and claims, not absolute numbers.")
    assert f"> ⚠ **{caveat}**" in box
    html_box = html.read_text().split('<div class="verdict">')[1].split("</div>")[0]
    assert "4,000 training images instead of 60,000" in html_box and "Compare shapes and claims" in html_box
    found = pd.read_csv(html.parent.parent / "results" / "tables" / "mnist5k" / "discrepancies.csv")
    counted = found[found["counted"]]
    assert f"{len(counted)} comparisons, each counted once; {int(counted['beyond'].sum())} beyond the interval" in box
    for name in ("CIFAR-10", "CIFAR-100", "ImageNet-1k", "full MNIST"):
        assert name in md.read_text().split("Not run here (see Scope):")[1], name


def _tested_claims(base: dict) -> dict:
    """A claims.json of the tested-verdict schema (docs/study.md §1 numbering): (a) supported,
    (b) by two claims, one inconclusive with the worse test, (c) not run, one check of our own."""
    scale = {"train_images": 4000, "test_images": 1000, "seeds": 3, "device": "cpu", "model": "mnist",
             "paper": {"train_images": 60000, "test_images": 10000, "seeds": 1, "device": "gpu"},
             "at_paper_scale": False, "note": ""}
    def test(what, effect, lo, hi, margin=0.0, direction="above"):
        return {"what": what, "effect": effect, "lo": lo, "hi": hi, "margin": margin, "direction": direction,
                "outcome": "", "mde": None}
    claims = {
        "a": {"paper_claim": "a", "statement": "one expert cannot fit the norm", "verdict": "SUPPORTED",
              "tests": [test("log ratio n=1 / best n, 2x5", 2.6, 2.2, 3.0, 0.69)], "scale": {**scale, "at_paper_scale": True}},
        "b1": {"paper_claim": "b", "statement": "Algorithm 1 at least random at the headline points",
               "verdict": "INCONCLUSIVE", "detectable": "0.031",
               "tests": [test("Alg1 − random, n=16, k=n/4", 0.07, 0.05, 0.09, -0.01),
                         test("Alg1 − random, n=4, k=n/4", -0.008, -0.038, 0.022, -0.01)], "scale": scale},
        "b2": {"paper_claim": "b", "statement": "the oracle gets more accurate with n", "verdict": "SUPPORTED",
               "tests": [test("oracle n=16 − n=4", 0.04, 0.02, 0.06)], "scale": scale},
        "c2_gpu": {"paper_claim": "c", "statement": "k = n/4 is faster on a GPU", "verdict": "NOT RUN",
                   "why": "stale: measured at 0123abc", "tests": [], "scale": scale},
        "x1": {"paper_claim": None, "statement": "all-experts accuracy holds across n", "verdict": "CONTRADICTED",
               "tests": [test("max − min all-experts accuracy", 0.032, 0.025, 0.039, 0.02, "below")],
               "scale": scale},
    }
    for key, c in claims.items():
        c.update(key=key, ours="–", paper="–", evidence="", alpha=0.05, correction="Holm",
                 margin_reason="a reason")
    return {**base, "alpha": 0.05, "order": list(claims), "claims": claims,
            "counts": {"SUPPORTED": 2, "CONTRADICTED": 1, "INCONCLUSIVE": 1, "NOT RUN": 1},
            "observations": {"e_trained": {"statement": "trained MNIST models: time with k = n/4 / all",
                                           "ours": "0.93", "note": "dispatch dominates at this size"}}}


def test_the_verdict_box_tells_the_papers_claims_from_ours(tmp_path):
    params = sample_params()
    tables = write_sample_tables(tmp_path / "tables")
    claims_json = _claims(params, tables, tmp_path)
    claims_json.write_text(json.dumps(_tested_claims(json.loads(claims_json.read_text()))))
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    build.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "figs", claims_json,
                        tmp_path / "none", [], html, md)
    box = md.read_text().split("### Results")[1].split("### What was easy")[0]
    assert "**2 SUPPORTED, 1 CONTRADICTED, 1 INCONCLUSIVE, 1 NOT RUN on mnist5k" in box
    groups = re.findall(r"^> \*(.+)\*  $", box, re.MULTILINE)
    assert [g[:25] for g in groups[:4]] == ["The paper's claim (a): on", "The paper's claim (b): at",
                                            "The paper's claim (c): ru", "Our own checks (not claim"]
    assert groups[4] == "Observations (reported, not verdicts)"
    lines = dict((k, line) for k, line in re.findall(r"^> \*\*[A-Z ]+\*\* — \((\w+)\) (.*)$", box, re.MULTILINE))
    # b1: the worse of its two tests (the n=4 point, whose interval reaches below the margin)
    assert "Alg1 − random, n=4, k=n/4: -0.008 (simultaneous 95 % interval -0.038 to +0.022; claimed ≥ -0.010) [worst of 2 tests]" \
        in lines["b1"]
    assert "smallest effect this run could detect: 0.031" in lines["b1"]
    assert "reached only at this run's scale (ours 4,000 training / 1,000 test images, 3 seed(s); paper 60,000 " \
           "training / 10,000 test images, 1 seed(s))" in lines["b1"]
    assert "reached at the paper's scale" in lines["a"]
    assert "why: stale: measured at 0123abc" in lines["c2_gpu"] and "reached" not in lines["c2_gpu"]
    assert "claimed ≤ +0.020" in lines["x1"]
    scope = md.read_text().split("### Scope of reproducibility")[1].split("### Methodology")[0]
    assert "Judged here by: b1, b2." in scope and "- (x1) all-experts accuracy holds across n" in scope
    assert '<td class="inconclusive">INCONCLUSIVE</td>' in html.read_text()


def _printed_md5s(md: str, cwd: Path) -> list[tuple[Path, str]]:
    """(file, md5 or its first 10 hex digits) for every md5 report.md prints: the provenance
    file table, the params file, and the trace lines under figures and tables."""
    found = re.findall(r"^\| (\S+) \| [\d,]+ \| ([0-9a-f]{32}) \|(?: [0-9a-f]{64} \|)?$", md, re.MULTILINE)
    found += re.findall(r"\[(\S+) \(md5 ([0-9a-f]{10})\)\]", md)
    found += re.findall(r"\| params file \| (\S+) \(md5 ([0-9a-f]{32})\) \|", md)
    return [(Path(p) if Path(p).is_absolute() else cwd / p, digest) for p, digest in found]


def test_every_md5_in_the_report_is_the_md5_of_its_file(built):
    html, md = built
    root = html.parent.parent
    printed = _printed_md5s(md.read_text(), Path.cwd())
    files = {path for path, _ in printed}
    for path, digest in printed:
        assert path.is_file(), path
        assert hashlib.md5(path.read_bytes()).hexdigest().startswith(digest), path
    # what the report describes: data, models, metrics, tables, figures, claims, params, code
    expected = {root / "data" / "mnist5k" / "test.safetensors", root / "metrics" / "mnist5k.json",
                root / "results" / "train" / "mnist5k" / "n2-s0" / "model.safetensors",
                root / "metrics" / "claims.json", root / "params.yaml",
                root / "results" / "tables" / "mnist5k" / "discrepancies.csv",
                *(root / "reports" / "figures" / f"{s}.{e}" for s in experiments.figures() for e in ("png", "svg")),
                *(root / "results" / "tables" / "mnist5k" / f"{t}.csv" for t in tables.names())}
    assert expected <= files, sorted(map(str, expected - files))
    assert any(p.name == "claims.py" and p.parent.name == "audit" for p in files)
    assert len(printed) > 60


def test_hashes_describe_the_files_when_the_report_is_written(tmp_path):
    """A table changed after the claims step: the report prints the md5 of the file as it is."""
    params = sample_params()
    tables = write_sample_tables(tmp_path / "tables")
    claims_json = _claims(params, tables, tmp_path)
    training_rows().assign(test_loss=1.0).to_csv(tables / "training.csv", index=False)
    md = tmp_path / "r.md"
    build.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "figs", claims_json,
                        tmp_path / "none", [], tmp_path / "r.html", md)
    text = md.read_text()
    digest = hashlib.md5((tables / "training.csv").read_bytes()).hexdigest()
    assert f"| {tables / 'training.csv'} | " in text and digest in text
    assert f"{tables / 'training.csv'} (md5 {digest[:10]})" in text


def test_html_needs_no_network_and_shows_no_backticks(built):
    text = built[0].read_text()
    assert not REMOTE.search(text), REMOTE.search(text)
    assert "http://" not in text and "https://" not in text
    assert "`" not in text and "<code>dvc metrics diff</code>" in text


def test_report_puts_our_numbers_beside_the_papers_with_intervals(built):
    md = built[1].read_text()
    # E3 in the paper's layout: ours ± 95 % / paper, n across
    assert "| ours ± 95 % / paper | n=2 | n=4 | n=8 | n=16 | n=32 | n=64 |" in md
    assert "| all experts | 0.933 ± 0.015 / 0.972 |" in md and "0.942 ± 0.014 / 0.978" in md
    # z next to the paper's table 10 with the test-set-size caveat
    assert "z on our 1,000 images is about √(10,000/1,000) = 3.2× smaller" in md
    # E2 oracle at n=8: ours 0.99 ± its interval vs 0.999, distinct 27 vs 27, C(8,2) = 28
    assert "| 8 | 2 | 0.9900 ± 0.0062 | 0.9990 | 0.3941 (std 0.0040) | 0.5195 (std 0.0046) | 27 | 27 | 28 |" in md
    # E1 plateaus under both readings of N(0, 5I), with the constant predictor Var‖x‖₂
    finals = discrepancies.e1_finals(synthetic_loss_rows()).set_index(["variance", "tokens", "n"])
    for variance, paper_loss, constant in ((25, 27.0, "12.173"), (5, 27.0, "2.435")):
        r = finals.loc[(variance, "5x2", 1)]
        assert (f"| {variance} | 5x2 | 1 | {int(r['seeds'])} | {render.pm(r['final_loss'], r['ci'])} | 27.000 | "
                f"{render.diff(r['final_loss'], paper_loss)} | {constant} |") in md
    # E4 ratios, ours / paper: k = n/4 at batch 1 of 'wide': 0.34 vs 9.96 / 21.5 = 0.46
    assert "| wide | 8 | 1 | 20.00 | 0.23 | 0.34 / 0.46 | 0.56 / 0.69 | 0.78 / 0.91 |" in md
    # the training table with the all-experts interval
    assert "| 16 | 1 | 49 | 307,328 | 318,305 | 3,500 | 0.942 ± 0.014 | 0.978 | -0.036 | 71 |" in md


def test_discrepancies_come_with_the_hypotheses_the_pipeline_tests(built):
    md = built[1].read_text()
    section = md.split("## Discrepancies: our numbers beside the paper's")[1].split("\n## ")[0]
    found = pd.read_csv(built[0].parent.parent / "results" / "tables" / "mnist5k" / "discrepancies.csv")
    counted = found[found["counted"]]
    assert section.startswith(f"\n\n{len(counted)} numbers compared with the paper's, each comparison counted once")
    assert f"{int(counted['beyond'].sum())} lie beyond it" in section
    # the absolute comparisons, labelled by scale; E1's variance-5 reading is listed, not counted
    assert "*E3, absolute numbers (ours: mnist5k, 4,000 training / 1,000 test images, 1 seed(s); paper: 60,000 / " \
           "10,000, 1 seed)" in section
    e1 = found[found["experiment"] == "E1"]
    seeds = int(discrepancies.e1_finals(synthetic_loss_rows())["seeds"].max())
    assert f"*E1, absolute numbers (ours: 500 steps × 10,000 inputs, {seeds} seed(s); paper: 500 × 10,000): " \
           f"{int(e1['counted'].sum())} comparison(s)" in section
    assert re.search(r"^\| E1 \| final loss, variance 5, 5x2 \| 1 \| – \| .* \| not counted: variance 5, the reading "
                     r"of N\(0, 5I\) the paper's plot rules out \(context\) \|$", section, re.MULTILINE)
    finals = discrepancies.e1_finals(synthetic_loss_rows()).set_index(["variance", "tokens", "n"])
    assert f"variance 25, 5x2: n=1 plateau {finals.loc[(25, '5x2', 1), 'final_loss']:.2f} vs constant predictor " \
           "12.17" in section
    assert f"variance 5, 2x5: n=1 plateau {finals.loc[(5, '2x5', 1), 'final_loss']:.2f} vs constant predictor " \
           "2.43" in section
    # the calibration step's models (the paper's 15 epochs) beside the grid's steps
    assert "n=16: 240 steps (15 epochs) give all 0.892, Alg1 n/4 0.654 vs random 0.361" in section
    assert "Oracle definition:" in section and "At n = 16: ours 110 on 1,000 test images, the paper's 112" in section


def _inputs(**replace) -> tuple:
    """discrepancies()'s tables in memory: the sample selection, synthetic_loss and latency tables
    (test_figures' SAMPLES), some replaced."""
    from test_figures import SAMPLES
    return tuple(replace.get(t.name, SAMPLES[t.name]()) for t in (SELECTION, SYNTHETIC_LOSS, LATENCY))


def _row(found, quantity: str, n: int) -> pd.Series:
    rows = found[(found["quantity"] == quantity) & (found["n"] == n)]
    assert len(rows) == 1, (quantity, n, rows)
    return rows.iloc[0]


def test_each_comparison_is_counted_once():
    """E2's random row at k = n/4 and E3's random k = n/4 row are the same number: counted once."""
    found = discrepancies.discrepancies("mnist5k", *_inputs(), train_size=4000, latency_width=1.0)
    for n in (4, 8, 16):
        e2, e3 = _row(found, "random k-subset accuracy", n), _row(found, "accuracy, random k=n/4", n)
        assert e2["ours"] == pytest.approx(e3["ours"])       # one number, two readings of the paper
        assert e2["counted"] and not e3["counted"] and not e3["beyond"]
        assert e3["status"].startswith("not counted: the same comparison as E2")
    # n = 32 has no E2 row: its E3 random k = n/4 row is counted
    assert _row(found, "accuracy, random k=n/4", 32)["counted"]
    assert discrepancies.summary(found)["compared"] == int(found["counted"].sum())


def test_timings_that_beat_the_papers_one_sided_claim_are_not_discrepancies():
    lat = latency_rows()
    wide = lat["config"] == "wide"
    found = discrepancies.discrepancies("mnist5k", *_inputs(latency=lat), train_size=4000, latency_width=1.0)
    e4 = found[found["experiment"] == "E4"]
    assert len(e4) == 6 and (e4["diff"] < 0).all()           # every ratio below the paper's
    assert (e4["status"] == discrepancies.BEATEN).all() and not e4["beyond"].any() and e4["counted"].all()
    # slower than the paper beyond the interval: a discrepancy, which a narrower layer explains
    slow = lat.assign(ratio=lat["ratio"].where(~wide | (lat["k"] == lat["n"]), 0.99))
    at_full = discrepancies.discrepancies("mnist5k", *_inputs(latency=slow), train_size=4000, latency_width=1.0)
    narrow = discrepancies.discrepancies("mnist5k", *_inputs(latency=slow), train_size=4000, latency_width=0.25)
    ratio = at_full[(at_full["experiment"] == "E4") & (at_full["k"] == 2)]
    assert ratio["beyond"].all() and (ratio["status"] == discrepancies.UNEXPLAINED).all()
    assert (narrow[(narrow["experiment"] == "E4") & (narrow["k"] == 2)]["status"] == discrepancies.SCALE).all()


def test_rows_without_an_interval_are_reported_not_counted():
    found = discrepancies.discrepancies("mnist5k", *_inputs(), train_size=4000)
    distinct = found[found["quantity"] == "distinct best subsets"]
    assert len(distinct) == 3 and not distinct["counted"].any() and not distinct["beyond"].any()
    assert _row(found, "distinct best subsets", 16)["diff"] == -2          # reported, with its difference
    loss = synthetic_loss_rows()                      # three synthetic seeds, each 1 % above the previous
    one_seed = discrepancies.discrepancies("mnist5k", *_inputs(synthetic_loss=loss[loss["seed"] == 0]), train_size=4000)
    e1 = one_seed[one_seed["experiment"] == "E1"]
    assert len(e1) == 16 and not e1["counted"].any()                       # one synthetic seed: no interval
    assert (e1.loc[e1["quantity"].str.contains("variance 25"), "status"] == "not counted: no interval (1 seed)").all()
    assert e1.loc[e1["quantity"].str.contains("variance 5,"), "status"].str.contains("rules out").all()
    # three seeds give an interval: the variance-25 rows count, the variance-5 reading still does not
    found = discrepancies.discrepancies("mnist5k", *_inputs(synthetic_loss=loss), train_size=4000)
    e1 = found[found["experiment"] == "E1"]
    v25 = e1[e1["quantity"].str.contains("variance 25")]
    assert v25["counted"].all() and (v25["ours_err"] > 0).all()
    assert not e1[e1["quantity"].str.contains("variance 5,")]["counted"].any()
    one = _row(found, "final loss, variance 25, 5x2", 1)
    assert one["ours"] == pytest.approx(29.700301 * 1.01, abs=1e-3) and one["beyond"]     # 29.997 vs 27 ± 0.3


def test_the_scale_model_explains_only_differences_on_its_side():
    """mnist5k (4,000 training images): all experts below the paper's and subsets keeping a larger
    share are explained by scale; the same numbers from a run at the paper's scale are not."""
    small = discrepancies.discrepancies("mnist5k", *_inputs(), train_size=4000)
    full = discrepancies.discrepancies("mnist5k", *_inputs(), train_size=None)
    all16 = _row(small, "accuracy, all experts", 16)
    assert all16["diff"] < 0 and all16["status"] == discrepancies.SCALE
    assert _row(full, "accuracy, all experts", 16)["status"] == discrepancies.UNEXPLAINED
    # Algorithm 1 k = n/4 at n = 4: 0.603 of 0.936 against the paper's 0.465 of 0.975, above the paper's
    assert _row(small, "accuracy, alg1 k=n/4", 4)["status"] == discrepancies.SCALE
    # random k = n/2 at n = 64: 0.705 of 0.948 against 0.892 of 0.977, a smaller share: unexplained
    assert _row(small, "accuracy, random k=n/2", 64)["status"] == discrepancies.UNEXPLAINED
    s = discrepancies.summary(small)
    assert s["beyond_interval"] == s["explained_by_scale"] + s["unexplained"] > 0
    assert discrepancies.summary(full)["explained_by_scale"] == 0


def test_oracle_and_calibration_comments_follow_the_numbers(tmp_path):
    """More distinct subsets than the paper on fewer images; paper-epoch models where Alg1 falls
    below random: the report says what each suggests, with the numbers of the tables."""
    params = sample_params()
    sel = selection_rows()
    sel.loc[(sel["method"] == "oracle") & (sel["n"] == 16), "count"] = 497
    cal = calibration_rows(ns=(4, 64))
    low = (cal["n"] == 64) & (cal["method"] == "alg1") & (cal["k"] == 16) & ~cal["renormalize"]
    cal.loc[low, "accuracy"] = 0.380                       # below its random k-subset (0.393)
    folder = write_sample_tables(tmp_path / "tables", selection=sel, calibration=cal)
    md = tmp_path / "r.md"
    build.build_report(Study.of(params), _params_file(tmp_path, params), folder, tmp_path / "figs",
                        _claims(params, folder, tmp_path), tmp_path / "none", [], tmp_path / "r.html", md)
    text = md.read_text()
    assert "At n = 16: ours 497 distinct subsets on 1,000 test images against the paper's 112 on 10,000, i.e. " \
           "more distinct subsets on fewer images" in text
    rnd = cal[(cal["n"] == 64) & (cal["method"] == "random") & (cal["k"] == 16) & ~cal["renormalize"]]["accuracy"]
    label = audit.alg1_claim(build.Context(Study.of(params), tmp_path / "params.yaml", folder, tmp_path,
                                                    tmp_path / "metrics" / "claims.json"))
    assert label in ("(b)", "(b1)")
    assert f"At the paper's 15 epochs, claim {label} would not hold on this data (n = 64: Alg1 0.380 < random " \
           f"{rnd.mean():.3f})" in text
    assert "n = 4: Alg1" not in text


def test_hypotheses_tested_by_runs_are_read_from_their_json(tmp_path):
    """metrics/hypotheses.json (softmoe.audit.hypotheses) next to claims.json: the summary names each
    hypothesis with its effect and the share it explains, the discrepancy section tabulates them."""
    params = sample_params()
    folder = write_sample_tables(tmp_path / "tables")
    claims_json = _claims(params, folder, tmp_path)
    (claims_json.parent / "hypotheses.json").write_text(json.dumps({"dataset": "mnist5k", "hypotheses": [
        {"name": "authors_recipe", "description": "fixed data order, 14 epochs of updates",
         "quantity": {"label": "random k = n/4 at n >= 32", "method": "random", "k_frac": 0.25},
         "status": "tested", "runs": [{"n": 32, "seed": 0}, {"n": 64, "seed": 0}],
         "effect": {"estimate": 0.021, "lo": 0.004, "hi": 0.038},
         "explained_share": {"estimate": 0.4, "lo": 0.1, "hi": 0.7}},
        {"name": "renormalize", "description": "renormalized combine weights", "quantity": {"label": "Alg1 n=4 k=1"},
         "status": "not run", "why": "applies to ['mnist'], not mnist5k", "runs": []}]}))
    md = tmp_path / "r.md"
    build.build_report(Study.of(params), _params_file(tmp_path, params), folder, tmp_path / "figs", claims_json,
                        tmp_path / "none", [], tmp_path / "r.html", md)
    text = md.read_text()
    talk = text.split("### Communication with the original authors")[1].split("\n## ")[0]
    assert "Tested by runs (metrics/hypotheses.json): authors_recipe (random k = n/4 at n >= 32): tested, effect " \
           "+0.021 (+0.004 to +0.038), explains 40% (10% to 70%), 2 run(s); renormalize (Alg1 n=4 k=1): not run: " \
           "applies to ['mnist'], not mnist5k." in talk
    section = text.split("## Discrepancies: our numbers beside the paper's")[1].split("\n## ")[0]
    assert "| authors_recipe | fixed data order, 14 epochs of updates | random k = n/4 at n >= 32 | tested | +0.021 " \
           "(+0.004 to +0.038) | 40% (10% to 70%) | 2 |" in section


def test_figures_carry_tables_and_steps_but_no_code_list(built):
    md = built[1].read_text()
    traces = re.findall(r"^<sub>(.*)</sub>$", md, re.MULTILINE)
    assert traces and all("code:" not in t for t in traces)
    assert all("made by: softmoe" in t for t in traces)
    provenance_md = md.split("## Provenance")[1]
    assert "*The code each step runs (the traces under figures and tables name the steps)*" in provenance_md
    assert re.search(r"^\| evaluate \| (?=.*steps/evaluate\.py)(?=.*model/selection\.py)", provenance_md, re.MULTILINE)


def test_long_tidy_tables_are_linked_not_inlined(built):
    md = built[1].read_text()
    body = md.split("## Provenance")[0]          # the provenance section lists every file with its md5
    longest = max(len(block.splitlines()) for block in re.split(r"\n\n", body) if block.startswith("| "))
    assert longest <= 2 + 40
    section = md.split("## Algorithm 1 vs random")[1].split("\n## ")[0]
    assert re.search(r"the first 12 of [\d,]+ rows; the table per seed is selection.csv", section)
    assert re.search(r"^[\d,]+ more row\(s\) in \[\S+selection\.csv\]\(\.\./results/tables/mnist5k/selection\.csv\)$",
                     section, re.MULTILINE)


def test_scale_warnings_name_every_difference_from_the_paper():
    params = sample_params()
    params["synthetic"]["steps"] = 50
    params["latency"]["wide"]["width"] = 1.0
    study = Study.of(params)
    syn, wide = study.synthetic, study.latency.wide
    warn = build.scale_warnings("mnist5k", study.datasets["mnist5k"], syn, wide, paper.SETTING["mnist"],
                                 steps=[1000], epochs=[15])
    assert warn == ["4,000 training images instead of 60,000", "1,000 test images instead of 10,000",
                    "1,000 optimizer steps instead of 3,525",
                    "synthetic runs of 50 steps × 10,000 inputs instead of 500 × 10,000"]
    assert build.scale_warnings("fashion_mnist", study.datasets["fashion_mnist"], syn, wide, {}, [1000], [15])[0] == \
        "the paper has no results on fashion_mnist"


def test_provenance_section(built):
    html, md = built
    text = md.read_text()
    params_path = html.parent.parent / "params.yaml"
    assert f"| params file | {params_path} (md5 {hashlib.md5(params_path.read_bytes()).hexdigest()}) |" in text
    assert "| git commit | not a git repository" in text or re.search(r"\| git commit \| [0-9a-f]{40} \|", text)
    assert "| command | softmoe report (by hand) |" in text and "| reproduce this | git clone " in text
    # wall time per rule and in total from the Snakemake benchmark files
    assert "| train | 2 | 131.8 | 65.9 | 70.2 | 812.5 |" in text
    assert "total 153.2 s" in text
    for pkg in ("torch", "lightning", "snakemake", "dvc", "pandas", "seaborn", "timm"):
        assert f"| {pkg} |" in text
    assert "| latency hardware.cpu | Intel Xeon (2 cores) |" in text
    assert f"| machine.cpu | {record.cpu_model()} |" in text
    assert "| random-subset seeds (evaluate.random_seeds) | 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 |" in text
    assert "| synthetic seeds (synthetic.seeds) | 0, 1, 2 |" in text
    # benchmarks.json (not an input of the report step) is pointed to, never read
    assert "reports/benchmarks.md" in text and "0.7312345" not in text


def test_run_command_and_start_come_from_the_workflow(monkeypatch, tmp_path):
    monkeypatch.setenv(record.RUN_COMMAND, "snakemake --cores all")
    monkeypatch.setenv(record.RUN_START, "2026-11-30 10:00:00 UTC")
    run = record.run_info(tmp_path / "params.yaml")
    assert run["command"] == "snakemake --cores all" and run["start"] == "2026-11-30 10:00:00 UTC"
    git = {"commit": "0123456789abcdef" * 2, "remote": "https://example.org/softmoe.git"}
    assert record.reproduce_line(git, Path("config/mnist.yaml")) == (
        "git clone https://example.org/softmoe.git softmoe && cd softmoe && git checkout 0123456789ab && "
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
        "snakemake --cores all --configfile config/mnist.yaml")


def test_missing_optional_inputs_say_not_run(tmp_path):
    no_oracle = selection_rows()
    no_oracle = no_oracle[no_oracle["method"] != "oracle"]
    html, md = _build(tmp_path, draw=False, selection=no_oracle,
                      skip=(CURVES.name, SYNTHETIC_LOSS.name, SYNTHETIC_PROOF.name, LATENCY.name, "hardware",
                            CALIBRATION.name))
    text = md.read_text()
    verdicts = "|".join(render.STATUS)
    found = dict(re.findall(rf"^\| (\w+) \| .*? \| ({verdicts}) \| [^|]* \|$", text, re.MULTILINE))
    obj = _claims_json(html)
    assert found == {k: c["verdict"] for k, c in obj["claims"].items()}
    assert found["a"] == "NOT RUN"                                 # no synthetic runs: Theorem 1 not judged
    for phrase in ("NOT RUN: synthetic_loss.csv missing or empty", "NOT RUN: synthetic_proof.csv missing",
                   "NOT RUN: latency.csv missing", "NOT RUN: no oracle rows", "| latency model | n=8, width ×1, "
                   "latency not run |"):
        assert phrase in text, phrase
    assert "figure " in text and "not found" in text  # figures not drawn: said, not crashed
    assert "not found: run <code>softmoe figures</code>" in html.read_text()


def test_no_benchmark_files_falls_back_to_training_time(tmp_path):
    params = sample_params()
    tables = write_sample_tables(tmp_path / "tables")
    html, md = tmp_path / "r.html", tmp_path / "r.md"
    build.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "figs",
                        _claims(params, tables, tmp_path), tmp_path / "no-benchmarks", [], html, md)
    total = training_time_rows()["wall_time_s"].sum()
    assert f"Training alone (training_time.csv): {total:,.0f} s" in md.read_text()


def test_git_commit_and_dirty_state(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run(git + ["add", "a.txt", "dvc.lock"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    state = record.git_state(tmp_path)
    assert state["commit"] == head and state["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    (tmp_path / "new.txt").write_text("3")
    state = record.git_state(tmp_path)
    assert state["dirty"] is True and state["modified"] == ["a.txt"] and state["untracked"] == 1
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")      # dvc commit after a run
    assert record.git_state(tmp_path)["modified"] == ["a.txt", "dvc.lock"]
    assert record.git_state(Path("/")).get("dirty") is None


def test_bad_benchmark_file_is_a_user_error(tmp_path):
    bench = tmp_path / "bench" / "train"
    bench.mkdir(parents=True)
    (bench / "n2.tsv").write_text("seconds\n1.0\n")
    with pytest.raises(UserError, match=r"n2\.tsv: Snakemake benchmark file without column 's'"):
        record.wall_times(tmp_path / "bench")


def test_file_hashes_of_files_and_folders(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.bin").write_bytes(b"abc")
    (tmp_path / "d" / ".x.bin.tmp").write_bytes(b"half-written")
    (tmp_path / "f.txt").write_text("hello")
    frame = record.file_hashes([tmp_path / "d", tmp_path / "f.txt", tmp_path / "absent"])
    assert frame["path"].tolist() == [(tmp_path / "d" / "sub" / "x.bin").as_posix(), (tmp_path / "f.txt").as_posix(),
                                      (tmp_path / "absent").as_posix()]
    assert frame["md5"].tolist() == [hashlib.md5(b"abc").hexdigest(), hashlib.md5(b"hello").hexdigest(), "missing"]
    assert frame["bytes"].tolist()[:2] == [3, 5]    # an absent path is listed as missing, never skipped


def test_tables_of_another_dataset_are_rejected(tmp_path):
    params = sample_params()
    sel = selection_rows().assign(dataset="cifar10")
    tables = write_sample_tables(tmp_path / "tables", selection=sel)
    with pytest.raises(UserError, match=r"selection\.csv: holds dataset\(s\) \['cifar10'\].*'mnist5k'"):
        build.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "f",
                            _claims(params, tables, tmp_path), tmp_path / "b", [], tmp_path / "r.html",
                            tmp_path / "r.md")


def test_report_needs_the_claims_step(tmp_path):
    params = sample_params()
    tables = write_sample_tables(tmp_path / "tables")
    with pytest.raises(UserError, match=r"claims\.json: no claims found; run `softmoe claims` first"):
        build.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "f",
                            tmp_path / "claims.json", tmp_path / "b", [], tmp_path / "r.html", tmp_path / "r.md")


def test_cli_steps_write_claims_figures_and_report(tmp_path, capsys):
    params = sample_params()
    pfile = _params_file(tmp_path, params)
    tables = write_sample_tables(tmp_path / "tables", skip=(SYNTHETIC_PROOF.name, CURVES.name))
    figs, html, md = tmp_path / "figs", tmp_path / "out" / "report.html", tmp_path / "out" / "report.md"
    claims_json = tmp_path / "metrics" / "claims.json"
    assert cli.main(["claims", "--params", str(pfile), "--tables", str(tables), "--gpu", str(tmp_path / "no-gpu.json"),
                     "--out", str(claims_json), "--discrepancies", str(tables / "discrepancies.csv")]) == 0
    assert json.loads(claims_json.read_text())["counts"]["NOT RUN"] == 4
    assert cli.main(["figures", "--params", str(pfile), "--tables", str(tables), "--out", str(figs)]) == 0
    report_args = ["report", "--params", str(pfile), "--tables", str(tables), "--figures", str(figs),
                   "--claims", str(claims_json), "--benchmarks", str(tmp_path / "none"), "--hash", str(pfile),
                   "--html", str(html), "--md", str(md)]
    assert cli.main(report_args) == 0
    assert html.stat().st_size > 100_000 and "../figs/fig1_selection_vs_fraction.png" in md.read_text()
    (tables / "training.csv").write_text("dataset,n\nmnist5k,2\n")
    assert cli.main(report_args) == 2
    assert "training.csv: missing column(s) seed, test_accuracy" in capsys.readouterr().err
