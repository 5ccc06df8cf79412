"""The reproduction check (README, "Reproducibility"): this run's science outputs against the ones
committed at git HEAD, by their bytes, and the CPU models of both sides.

The committed side is dvc.lock at HEAD (the md5 of every DVC output, as DVC computes it: of the
file's bytes, or of a folder's listing) and the git-tracked metrics (metrics/claims.json,
metrics/<dataset>.json). Science is every output except the files that carry timings or machine
facts (NOT_SCIENCE): those differ between hosts by design, the science does not where the code
paths are pinned (softmoe.base.numerics). The CPUs come from metrics/<dataset>-machine.json (softmoe
summary) of each side; a committed file of the older layout names its CPU in metrics/<dataset>.json."""
from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from softmoe.provenance import record
from softmoe.study import layout

# Outputs that carry timings or machine facts, not results (fnmatch patterns, paths as in dvc.lock).
NOT_SCIENCE = ("*/timing.json", "*/training_time.csv", "*/latency*.csv", "*/hardware.json",
               "metrics/*-machine.json", "reports/*", "results/benchmarks/*")
TOLERANCE = 0.01          # the accuracies of metrics/<dataset>.json compared when bytes differ


@dataclass
class Check:
    """The outcome: `verdict` (one line for the verdict box) and what it rests on."""
    verdict: str
    compared: list[str] = field(default_factory=list)     # science outputs present on both sides
    differ: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)      # committed, but absent from this run
    claims: str = "not compared"
    accuracies: str = ""
    cpus: dict[str, str] = field(default_factory=dict)    # side -> CPU model(s) and code paths


def is_science(path: str) -> bool:
    return not any(fnmatch.fnmatch(path, pattern) for pattern in NOT_SCIENCE)


def committed_outputs(root: Path) -> dict[str, str] | None:
    """{path: md5} of every output recorded in dvc.lock at git HEAD (None: no dvc.lock there)."""
    text = record.git_show(root, "dvc.lock")
    if text is None:
        return None
    try:
        lock = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None
    outs = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if isinstance(out, dict) and out.get("path") and out.get("md5"):
                outs[out["path"]] = out["md5"]
    return outs


def dir_md5(folder: Path) -> str:
    """A folder's md5 as DVC records it: the md5 of the JSON list of its files' (md5, relpath),
    sorted by relpath, with ".dir" appended (dvc-data's Tree digest)."""
    entries = sorted(({"md5": record.md5(f), "relpath": f.relative_to(folder).as_posix()}
                      for f in folder.rglob("*") if f.is_file()), key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def current_md5(root: Path, path: str, committed: str) -> str | None:
    """This run's md5 of a committed output, computed the way DVC recorded it (None: absent)."""
    target = root / path
    if committed.endswith(".dir"):
        return dir_md5(target) if target.is_dir() else None
    return record.md5(target) if target.is_file() else None


def check(root: Path, dataset: str) -> Check:
    """Compare this run's science outputs under `root` with the ones committed at HEAD."""
    metrics_rel, machine_rel = layout.METRICS.format(dataset=dataset), layout.MACHINE.format(dataset=dataset)
    cpus = {"this run": _cpus(_read(root / machine_rel), _read(root / metrics_rel)),
            "committed (git HEAD)": _cpus(record.committed_json(root, machine_rel),
                                          record.committed_json(root, metrics_rel))}
    outs = committed_outputs(root)
    if outs is None:
        return Check("not possible (no dvc.lock at git HEAD)", cpus=cpus)
    for rel in (layout.CLAIMS, metrics_rel):     # git-tracked: compared with the committed bytes
        text = record.git_show(root, rel)
        if text is not None:
            outs[rel] = hashlib.md5(text.encode()).hexdigest()
    result = Check("", cpus=cpus)
    for path, md5 in sorted(outs.items()):
        if not is_science(path):
            continue
        now = current_md5(root, path, md5)
        if now is None:
            result.missing.append(path)
            continue
        result.compared.append(path)
        if now != md5:
            result.differ.append(path)
    result.claims = _claims(root)
    result.accuracies = _accuracies(_read(root / metrics_rel), record.committed_json(root, metrics_rel))
    result.verdict = _verdict(result)
    return result


def _verdict(r: Check) -> str:
    """"identical" only when every committed science output exists here with its bytes."""
    if not r.compared:
        return f"not possible (none of the {len(r.missing)} committed science outputs exists in this run)"
    sides = "; ".join(f"{side}: {cpu}" for side, cpu in r.cpus.items())
    claims = f"{layout.CLAIMS} included" if layout.CLAIMS in r.compared else f"{layout.CLAIMS} not in this run"
    if r.differ:
        shown = ", ".join(r.differ[:3]) + (", …" if len(r.differ) > 3 else "")
        missing = f"; {len(r.missing)} committed output(s) not in this run" if r.missing else ""
        return (f"differs: {len(r.differ)} of {len(r.compared)} science outputs ({shown}); {layout.CLAIMS}: "
                f"{r.claims}; {r.accuracies}{missing} ({sides})")
    if r.missing:
        return (f"partial: the {len(r.compared)} science outputs present have the committed bytes ({claims}), "
                f"{len(r.missing)} committed output(s) are not in this run ({sides})")
    return f"identical: all {len(r.compared)} science outputs, {claims}, have the committed bytes ({sides})"


def _claims(root: Path) -> str:
    """claims.json against HEAD's: identical, or which claims differ and whether a verdict did."""
    ours, theirs = _read(root / layout.CLAIMS), record.committed_json(root, layout.CLAIMS)
    if ours is None or theirs is None:
        return "missing here" if ours is None else "not committed"
    if ours == theirs:
        return "identical"
    a, b = ours.get("claims", {}), theirs.get("claims", {})
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    flips = [f"{k} {b.get(k, {}).get('verdict', '–')} → {a.get(k, {}).get('verdict', '–')}" for k in changed
             if a.get(k, {}).get("verdict") != b.get(k, {}).get("verdict")]
    rest = sorted(k for k in set(ours) | set(theirs) if k != "claims" and ours.get(k) != theirs.get(k))
    parts = [f"claim(s) {', '.join(changed)} differ" if changed else "",
             f"verdicts changed: {', '.join(flips)}" if flips else ("same verdicts" if changed else ""),
             f"also differs in {', '.join(rest)}" if rest else ""]
    return "differs (" + "; ".join(p for p in parts if p) + ")"


def _accuracies(ours: dict | None, theirs: dict | None) -> str:
    """The largest difference of the headline accuracies (metrics/<dataset>.json) to HEAD's."""
    if ours is None or theirs is None:
        return "headline accuracies not compared (metrics file missing on one side)"
    a, b = _flat(ours.get("experts", {})), _flat(theirs.get("experts", {}))
    common = [k for k in a if k in b and k.rsplit(".", 1)[-1] in ("all", "alg1", "random", "accuracy")]
    if not common:
        return "no headline accuracy in common"
    worst = max(common, key=lambda k: abs(a[k] - b[k]))
    big = abs(a[worst] - b[worst])
    within = "within" if big <= TOLERANCE else "beyond"
    return (f"headline accuracies {within} {TOLERANCE:g} of the committed ones (largest difference "
            f"{big:.4f}, at {worst}; {len(common)} compared)")


def _cpus(machine: dict | None, metrics: dict | None) -> str:
    """The CPU model(s) and code paths a side's grid was trained on."""
    if machine and machine.get("trained_on", {}).get("cpu"):
        trained = machine["trained_on"]
        return f"{', '.join(trained['cpu'])} [{', '.join(trained.get('numerics') or ['code paths not recorded'])}]"
    if metrics and metrics.get("machine", {}).get("cpu"):       # the layout before timing files
        return f"{metrics['machine']['cpu']} [code paths not recorded: native]"
    return "not recorded"


def _read(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


def _flat(obj, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in obj.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(_flat(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out
