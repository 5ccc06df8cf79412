"""docs/study.md and src/softmoe/study/paper.py hold the same reference numbers, and every
`docs/study.md §…` citation in the code names a section that exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from softmoe.study import paper

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "docs" / "study.md"


def _section(heading: str) -> str:
    """The text under the heading that starts with `heading`, up to the next heading."""
    text = STUDY.read_text(encoding="utf-8")
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#)", text, flags=re.M | re.S)
    assert match, f"docs/study.md has no heading starting with {heading!r}"
    return match.group(1)


def _first_table(section: str) -> list[list[str]]:
    """Rows (cells stripped) of the first markdown table of a section, header and rule removed."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    end = next((i for i, row in enumerate(rows[2:], 2) if len(row) != len(rows[0])), len(rows))
    return rows[2:end]


def _number(cell: str) -> float | None:
    return None if cell == "–" else float(cell)


def test_e1_plateaus_match_paper_data():
    rows = {row[0].replace(" ", ""): [float(c) for c in row[1:]] for row in _first_table(_section("§5 E1"))}
    ref = paper.e1_plateaus()
    for tokens, losses in rows.items():
        expected = ref[ref["tokens"] == tokens.replace("×", "x")].sort_values("n")["loss"].tolist()
        assert losses == expected, tokens


def test_e2_oracle_matches_paper_data():
    oracle, random, distinct = _first_table(_section("§5 E2"))
    ref = paper.e2_oracle().sort_values("n")
    assert [float(c) for c in oracle[1:]] == ref["oracle"].tolist()
    means_stds = [[float(x) for x in c.split("±")] for c in random[1:]]
    assert [m for m, _ in means_stds] == ref["random"].tolist()
    assert [s for _, s in means_stds] == ref["random_std"].tolist()
    assert [int(c) for c in distinct[1:]] == ref["distinct"].tolist()


ROW_KEYS = {"all experts": ("all", 1.0)} | {
    f"{label}, k = n/{d}": (method, 1 / d)
    for label, method in (("Algorithm 1", "alg1"), ("random", "random")) for d in (2, 4, 8)}


def test_e3_mnist_matches_paper_data():
    rows = _first_table(_section("§5 E3"))
    assert {row[0] for row in rows} == set(ROW_KEYS)
    ref = paper.e3_mnist()
    for row in rows:
        method, frac = ROW_KEYS[row[0]]
        cells = ref[(ref["method"] == method) & (ref["k_frac"] == frac)]
        expected = dict(zip(cells["n"], cells["accuracy"]))
        got = {n: _number(c) for n, c in zip([2, 4, 8, 16, 32, 64, 128, 256, 512], row[1:])}
        assert {n: v for n, v in got.items() if v is not None} == expected, row[0]


def test_e4_latency_matches_paper_data():
    ref = paper.e4_latency()
    for row in _first_table(_section("§5 E4")):
        batch = int(row[0])
        expected = ref[ref["batch"] == batch].sort_values("k_frac", ascending=False)["ms"].tolist()
        assert [float(c) for c in row[1:]] == expected, batch


def _headings() -> set[str]:
    """'§N' and '§N EM' for every numbered heading of docs/study.md."""
    found = set()
    for match in re.finditer(r"^#+ (§\d+)(?: (E\d+))?", STUDY.read_text(encoding="utf-8"), flags=re.M):
        found.add(match.group(1))
        if match.group(2):
            found.add(f"{match.group(1)} {match.group(2)}")
    return found


def test_sections_are_numbered_one_to_eight():
    assert {f"§{i}" for i in range(1, 9)} | {f"§5 E{i}" for i in range(1, 5)} <= _headings()


@pytest.mark.parametrize("path", sorted((ROOT / "src" / "softmoe").glob("*.py")), ids=lambda p: p.name)
def test_code_cites_existing_sections(path):
    cited = re.findall(r"docs/study\.md (§\d+(?: E\d+)?)", path.read_text(encoding="utf-8"))
    missing = sorted(set(cited) - _headings())
    assert not missing, f"{path.name} cites {missing}, not headings of docs/study.md"
