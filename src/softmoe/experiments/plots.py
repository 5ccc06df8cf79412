"""The figures' shared drawing kit: style, panels, palettes, log2 axes, the "not run" panel and
atomic PNG/SVG files. Each experiment (softmoe.experiments) draws its own figures with it;
seaborn is imported on first use, so that declaring an experiment stays cheap."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from softmoe.base import atomic

PANEL = (5.4, 3.9)
VARIANTS = {False: "Algorithm 1 (paper)", True: "Algorithm 1, renormalized"}


def style() -> dict:
    import seaborn as sns
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=0.8)}
    rc.update({"svg.hashsalt": "softmoe", "figure.dpi": 100})
    return rc


def palette(name: str, count: int | None = None) -> list:
    """seaborn's colour palette `name` with `count` colours."""
    import seaborn as sns
    return sns.color_palette(name, count)


def save(fig: Figure, out_dir: Path, stem: str) -> None:
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None})):
        with atomic.atomic_path(out_dir / f"{stem}.{ext}") as tmp:
            fig.savefig(tmp, format=ext, dpi=120, bbox_inches="tight", metadata=meta)


def not_run(title: str, reason: str) -> Figure:
    fig = Figure(figsize=PANEL)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, f"NOT RUN\n{reason}", ha="center", va="center", wrap=True,
            transform=ax.transAxes, fontsize=10)
    return fig


def panels(count: int, cols: int | None = None, **kw) -> tuple[Figure, list]:
    cols = cols or count
    rows = math.ceil(count / cols)
    fig = Figure(figsize=(PANEL[0] * cols, PANEL[1] * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, **kw)).ravel().tolist()
    for ax in axes[count:]:
        ax.set_axis_off()
    return fig, axes[:count]


def n_palette(ns) -> dict:
    ns = sorted({int(n) for n in ns})
    return dict(zip(ns, palette("viridis", len(ns))))


def log2_axis(ax, ns) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({int(n) for n in ns}))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.minorticks_off()


def variants(selection: pd.DataFrame) -> list[bool]:
    """The renormalize modes of a selection table's Algorithm 1 rows."""
    return sorted(set(selection.loc[selection["method"] == "alg1", "renormalize"]))


def tokenizations(frame: pd.DataFrame, order: tuple[str, ...]) -> list[str]:
    """The tokenizations of a table, in the given order (params.synthetic.tokenizations)."""
    found = set(frame["tokens"])
    order = [t for t in order if t in found]
    return order + sorted(found - set(order))
