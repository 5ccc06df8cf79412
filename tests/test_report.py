"""The report: a verdict box first, every section, figure and claim, offline HTML and Markdown,
our numbers beside the paper's with intervals, and a provenance section whose every md5 is the
md5 of the file it names, computed when the report is written. The claims themselves are
tests/test_claims.py's."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from softmoe import claims, cli, experiments, figures, paper, provenance, report, report_context, tables
from softmoe.errors import UserError
from softmoe.params import Study
from test_figures import draw as draw_figures, sample_params, selection_rows, training_rows, write_sample_tables

BENCH_HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# an attribute or CSS rule that would make a browser fetch something over the network
REMOTE = re.compile(r"""(?:src|href|srcset|action|poster|data)\s*=\s*["']?\s*(?:https?:)?//"""
                    r"""|url\(\s*["']?\s*(?:https?:)?//|@import|<script|<link|<iframe""", re.IGNORECASE)
SECTIONS = ["Verdict", "Setting", "Claims", "Scope: every experiment of the paper",
            "Algorithm 1 vs random (E3; paper figures 1 and 2)", "Oracle: best expert subsets (E2; paper table 1)",
            "Synthetic ‖x‖₂: Theorem 1 (E1; paper appendix C)",
            "Inference time of the selective path (E4; paper table 3)", "Training and the fixed budget",
            "Discrepancies: differences to the paper beyond the interval",
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
    report.build_report(Study.of(params), _params_file(root, params), tables, figs, claims_json, _bench_dir(root),
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
    assert re.findall(r"<h2[^>]*>([^<]*)</h2>", text) == SECTIONS
    assert text.count('src="data:image/png;base64,') == len(experiments.figures())
    assert text.count('<td class="pass">PASS</td>') == 7 and text.count('<td class="notrun">NOT RUN</td>') == 4
    assert "Not the paper&#39;s scale" in text and "4,000 training images instead of 60,000" in text
    assert "220 epochs instead of 15" in text and "optimizer steps instead" not in text  # 3,500 ~ 3,525
    md_text = md.read_text()
    assert _sections(md_text) == SECTIONS
    for stem in experiments.figures():
        assert f"![{stem}](figures/{stem}.png)" in md_text
        assert f"SVG: [{html.parent / 'figures' / stem}.svg](figures/{stem}.svg)" in md_text
    assert md_text.count("| PASS |") == 7 and md_text.count("| NOT RUN |") == 4


def test_the_verdict_opens_the_report_one_sentence_per_claim(built):
    html, md = built
    md_text = md.read_text()
    first = md_text.split("\n## ")[1]
    assert first.startswith("Verdict\n")
    verdicts = re.findall(r"^> \*\*(PASS|FAIL|NOT RUN)\*\* — \((\w+)\) ", first, re.MULTILINE)
    obj = json.loads((html.parent.parent / "metrics" / "claims.json").read_text())
    assert [key for _, key in verdicts] == obj["order"]
    assert dict((k, v) for v, k in verdicts) == {k: c["verdict"] for k, c in obj["claims"].items()}
    assert "7 PASS, 0 FAIL, 4 NOT RUN on mnist5k (1 training seed(s))" in first
    assert "not measured on GPU" in first
    for name in ("CIFAR-10", "CIFAR-100", "ImageNet-1k", "full MNIST"):
        assert name in first.split("Not run here (see Scope):")[1], name
    text = html.read_text()
    assert text.index("<h2>Verdict</h2>") < text.index('<div class="verdict">') < text.index("<h2>Setting</h2>")


def _printed_md5s(md: str, cwd: Path) -> list[tuple[Path, str]]:
    """(file, md5 or its first 10 hex digits) for every md5 report.md prints: the provenance
    file table, the params file, and the trace lines under figures and tables."""
    found = re.findall(r"^\| (\S+) \| [\d,]+ \| ([0-9a-f]{32}) \|$", md, re.MULTILINE)
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
    assert any(p.name == "claims.py" and p.parent.name == "softmoe" for p in files)
    assert len(printed) > 60


def test_hashes_describe_the_files_when_the_report_is_written(tmp_path):
    """A table changed after the claims step: the report prints the md5 of the file as it is."""
    params = sample_params()
    tables = write_sample_tables(tmp_path / "tables")
    claims_json = _claims(params, tables, tmp_path)
    training_rows().assign(wall_time_s=1.0).to_csv(tables / "training.csv", index=False)
    md = tmp_path / "r.md"
    report.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "figs", claims_json,
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
    assert "| 25 | 5x2 | 1 | 29.700 | 27.000 | +2.700 | 12.173 |" in md
    assert "| 5 | 5x2 | 1 | 5.940 | 27.000 | -21.060 | 2.435 |" in md
    # E4 ratios, ours / paper: k = n/4 at batch 1 of 'wide': 0.34 vs 9.96 / 21.5 = 0.46
    assert "| wide | 8 | 1 | 20.00 | 0.23 | 0.34 / 0.46 | 0.56 / 0.69 | 0.78 / 0.91 |" in md
    # the training table with the all-experts interval
    assert "| 16 | 1 | 49 | 307,328 | 318,305 | 3,500 | 0.942 ± 0.014 | 0.978 | -0.036 | 71 |" in md


def test_discrepancies_come_with_the_hypotheses_the_pipeline_tests(built):
    md = built[1].read_text()
    section = md.split("## Discrepancies")[1].split("\n## ")[0]
    found = [line for line in (built[0].parent.parent / "results" / "tables" / "mnist5k" /
                               "discrepancies.csv").read_text().splitlines()[1:] if line.endswith(",True")]
    assert f"{len(found)} of " in section and "*E1: 12 difference(s) beyond the interval*" in section
    assert "| final loss, variance 25, 5x2 | 1 | – | 29.700 | 27.000 ± 0.300 | +2.700 |" in section
    assert "variance 25, 5x2: n=1 plateau 29.70 vs constant predictor 12.17" in section
    assert "variance 5, 2x5: n=1 plateau 2.64 vs constant predictor 2.43" in section
    # the calibration step's models (the paper's 15 epochs) beside the grid's steps
    assert "n=16: 240 steps (15 epochs) give all 0.892, Alg1 n/4 0.654 vs random 0.361" in section
    assert "Oracle definition:" in section


def test_scale_warnings_name_every_difference_from_the_paper():
    params = sample_params()
    params["synthetic"]["steps"] = 50
    params["latency"]["wide"]["width"] = 1.0
    study = Study.of(params)
    syn, wide = study.synthetic, study.latency.wide
    warn = report.scale_warnings("mnist5k", study.datasets["mnist5k"], syn, wide, paper.SETTING["mnist"],
                                 steps=[1000], epochs=[15])
    assert warn == ["4,000 training images instead of 60,000", "1,000 test images instead of 10,000",
                    "1,000 optimizer steps instead of 3,525",
                    "synthetic runs of 50 steps × 10,000 inputs instead of 500 × 10,000"]
    assert report.scale_warnings("fashion_mnist", study.datasets["fashion_mnist"], syn, wide, {}, [1000], [15])[0] == \
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
    assert f"| machine.cpu | {provenance.cpu_model()} |" in text
    assert "| random-subset seeds (evaluate.random_seeds) | 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 |" in text
    assert "| synthetic seed (synthetic.seed) | 0 |" in text
    # benchmarks.json (not an input of the report step) is pointed to, never read
    assert "reports/benchmarks.md" in text and "0.7312345" not in text


def test_run_command_and_start_come_from_the_workflow(monkeypatch, tmp_path):
    monkeypatch.setenv(provenance.RUN_COMMAND, "snakemake --cores all")
    monkeypatch.setenv(provenance.RUN_START, "2026-11-30 10:00:00 UTC")
    run = provenance.run_info(tmp_path / "params.yaml")
    assert run["command"] == "snakemake --cores all" and run["start"] == "2026-11-30 10:00:00 UTC"
    git = {"commit": "0123456789abcdef" * 2, "remote": "https://example.org/softmoe.git"}
    assert provenance.reproduce_line(git, Path("config/mnist.yaml")) == (
        "git clone https://example.org/softmoe.git softmoe && cd softmoe && git checkout 0123456789ab && "
        "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
        "snakemake --cores all --configfile config/mnist.yaml")


def test_missing_optional_inputs_say_not_run(tmp_path):
    no_oracle = selection_rows()
    no_oracle = no_oracle[no_oracle["method"] != "oracle"]
    html, md = _build(tmp_path, draw=False, selection=no_oracle,
                      skip=("curves", "synthetic_loss", "synthetic_proof", "latency", "hardware", "calibration"))
    text = md.read_text()
    found = dict(re.findall(r"^\| (\w+) \| .*? \| (PASS|FAIL|NOT RUN) \| [^|]* \|$", text, re.MULTILINE))
    assert found == {"a": "NOT RUN", "b": "PASS", "c": "PASS", "d": "NOT RUN", "e_wide": "NOT RUN",
                     "e_trained": "NOT RUN", "e_gpu": "NOT RUN", "f": "PASS", "cifar10": "NOT RUN",
                     "cifar100": "NOT RUN", "imagenet": "NOT RUN"}
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
    report.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "figs",
                        _claims(params, tables, tmp_path), tmp_path / "no-benchmarks", [], html, md)
    total = training_rows()["wall_time_s"].sum()
    assert f"Training alone (training.csv): {total:,.0f} s" in md.read_text()


def test_git_commit_and_dirty_state(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(git + ["init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "a.txt").write_text("1")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    subprocess.run(git + ["add", "a.txt", "dvc.lock"], cwd=tmp_path, check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    state = provenance.git_state(tmp_path)
    assert state["commit"] == head and state["dirty"] is False
    (tmp_path / "a.txt").write_text("2")
    (tmp_path / "new.txt").write_text("3")
    state = provenance.git_state(tmp_path)
    assert state["dirty"] is True and state["modified"] == ["a.txt"] and state["untracked"] == 1
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")      # dvc commit after a run
    assert provenance.git_state(tmp_path)["modified"] == ["a.txt", "dvc.lock"]
    assert provenance.git_state(Path("/")).get("dirty") is None


def test_bad_benchmark_file_is_a_user_error(tmp_path):
    bench = tmp_path / "bench" / "train"
    bench.mkdir(parents=True)
    (bench / "n2.tsv").write_text("seconds\n1.0\n")
    with pytest.raises(UserError, match=r"n2\.tsv: Snakemake benchmark file without column 's'"):
        provenance.wall_times(tmp_path / "bench")


def test_file_hashes_of_files_and_folders(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "x.bin").write_bytes(b"abc")
    (tmp_path / "d" / ".x.bin.tmp").write_bytes(b"half-written")
    (tmp_path / "f.txt").write_text("hello")
    frame = provenance.file_hashes([tmp_path / "d", tmp_path / "f.txt", tmp_path / "absent"])
    assert frame["path"].tolist() == [(tmp_path / "d" / "sub" / "x.bin").as_posix(), (tmp_path / "f.txt").as_posix(),
                                      (tmp_path / "absent").as_posix()]
    assert frame["md5"].tolist() == [hashlib.md5(b"abc").hexdigest(), hashlib.md5(b"hello").hexdigest(), "missing"]
    assert frame["bytes"].tolist()[:2] == [3, 5]    # an absent path is listed as missing, never skipped


def test_tables_of_another_dataset_are_rejected(tmp_path):
    params = sample_params()
    sel = selection_rows().assign(dataset="cifar10")
    tables = write_sample_tables(tmp_path / "tables", selection=sel)
    with pytest.raises(UserError, match=r"selection\.csv: holds dataset\(s\) \['cifar10'\].*'mnist5k'"):
        report.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "f",
                            _claims(params, tables, tmp_path), tmp_path / "b", [], tmp_path / "r.html",
                            tmp_path / "r.md")


def test_report_needs_the_claims_step(tmp_path):
    params = sample_params()
    tables = write_sample_tables(tmp_path / "tables")
    with pytest.raises(UserError, match=r"claims\.json: no claims found; run `softmoe claims` first"):
        report.build_report(Study.of(params), _params_file(tmp_path, params), tables, tmp_path / "f",
                            tmp_path / "claims.json", tmp_path / "b", [], tmp_path / "r.html", tmp_path / "r.md")


def test_cli_steps_write_claims_figures_and_report(tmp_path, capsys):
    params = sample_params()
    pfile = _params_file(tmp_path, params)
    tables = write_sample_tables(tmp_path / "tables", skip=("synthetic_proof", "curves"))
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
