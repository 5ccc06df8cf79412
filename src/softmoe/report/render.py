"""The report's document model (sections of blocks) and its two renderers: self-contained HTML
(inline CSS, figures as data URIs, no scripts, no network) and Markdown (figures and files linked
by relative path). Formatting of numbers lives here too; what the report says lives in build.py and the section modules."""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import markupsafe
import numpy as np
import pandas as pd

STATUS = {"PASS": "pass", "FAIL": "fail", "NOT RUN": "notrun", "SUPPORTED": "pass", "CONTRADICTED": "fail",
          "INCONCLUSIVE": "inconclusive", "NOTE": "note"}
CODE = re.compile(r"`([^`]+)`")


@dataclass
class Block:
    """One piece of a section: text, warn, subhead (a heading inside the section), list (`items`
    of sentences), verdict (`text` the head line, `caption` a caveat shown inside the box, `items`
    of (verdict, sentence), a verdict "" making the sentence a group heading), table (`limit`:
    show the first rows only, `link`: the file with all of them), figure (`text` = stem), pre
    (preformatted, collapsed) or trace (where it came from: `items` of (label, value, link or
    None))."""
    kind: str
    text: str = ""
    frame: pd.DataFrame | None = None
    caption: str = ""
    collapsed: bool = False
    items: list = field(default_factory=list)
    limit: int | None = None
    link: Path | None = None

    def shown(self) -> pd.DataFrame:
        """The rows the report prints: all, or the first `limit`."""
        return self.frame if self.limit is None else self.frame.head(self.limit)

    def more(self) -> str:
        """'N more rows' when the table is cut ('' when it is not)."""
        rest = len(self.frame) - len(self.shown())
        return f"{rest:,} more row(s)" if rest > 0 else ""


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# ---- numbers ----------------------------------------------------------------------------------
def given(value) -> bool:
    """False for None and NaN (the empty cells of the reference tables)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and not pd.isna(value)


def num(value, digits: int = 3, signed: bool = False) -> str:
    if not given(value):
        return "–"
    if isinstance(value, (int, np.integer)) and not signed:
        return f"{int(value):,}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def pm(value, err, digits: int = 3) -> str:
    """'value ± err' (err omitted when absent or 0)."""
    if not given(value):
        return "–"
    return num(value, digits) + (f" ± {err:.{digits}f}" if given(err) and err > 0 else "")


def diff(ours, ref, digits: int = 3) -> str:
    if not (given(ours) and given(ref)):
        return "–"
    return num(float(ours) - float(ref), digits, signed=True)


# ---- HTML -------------------------------------------------------------------------------------
def _rel(target: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve().parent)).as_posix()


def _image(figures_dir: Path, stem: str) -> str | None:
    png = Path(figures_dir) / f"{stem}.png"
    if not png.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def code_spans(text) -> markupsafe.Markup:
    """HTML-escaped text with `command` spans as <code> (Markdown keeps the backticks)."""
    escaped = str(markupsafe.escape(str(text)))
    return markupsafe.Markup(CODE.sub(r"<code>\1</code>", escaped))


def render_html(title: str, sections: list[Section], figures_dir: Path, html: Path) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("softmoe.report", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["code"] = code_spans
    images = {b.text: _image(figures_dir, b.text) for s in sections for b in s.blocks if b.kind == "figure"}
    links = {str(v[2]): _rel(v[2], html) for s in sections for b in s.blocks if b.kind == "trace"
             for v in b.items if v[2] is not None}
    links.update({str(b.link): _rel(b.link, html) for s in sections for b in s.blocks if b.link is not None})
    return env.get_template("report.html.j2").render(
        title=title, sections=sections, images=images, links=links, figures_dir=str(figures_dir),
        status=STATUS)


# ---- Markdown ---------------------------------------------------------------------------------
def md_table(frame: pd.DataFrame) -> str:
    def esc(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def render_markdown(title: str, sections: list[Section], figures_dir: Path, md: Path) -> str:
    out = [f"# {title}", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for b in s.blocks:
            if b.kind in ("text", "warn"):
                out += [f"> **{b.text}**" if b.kind == "warn" else b.text, ""]
            elif b.kind == "subhead":
                out += [f"### {b.text}", ""]
            elif b.kind == "list":
                out += [f"- {item}" for item in b.items] + [""]
            elif b.kind == "verdict":
                out += ([f"> **{b.text}**", ">"] if b.text else []) + ([f"> ⚠ **{b.caption}**", ">"] if b.caption else []) + \
                    [f"> **{v}** — {sentence}  " if v else f"> *{sentence}*  " for v, sentence in b.items] + [""]
            elif b.kind == "figure":
                png = Path(figures_dir) / f"{b.text}.png"
                out += [f"![{b.text}]({_rel(png, md)})" if png.is_file() else f"*(figure {png} not found)*", "",
                        f"*{b.caption}*", ""]
            elif b.kind == "table":
                out += ([f"*{b.caption}*", ""] if b.caption else []) + [md_table(b.shown()), ""]
                if b.link is not None:
                    out += [f"{b.more() + ' in ' if b.more() else 'All rows: '}[{b.link}]({_rel(b.link, md)})", ""]
            elif b.kind == "trace":
                out += ["<sub>" + "; ".join(
                    f"{label}: [{value}]({_rel(link, md)})" if link is not None else f"{label}: {value}"
                    for label, value, link in b.items) + "</sub>", ""]
            else:
                out += [f"*{b.caption}*", "", "```", b.text.rstrip("\n"), "```", ""]
    return "\n".join(out)
