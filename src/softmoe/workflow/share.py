"""Sharing results through a DVC remote (docs/sharing.md).

`softmoe push` / `softmoe pull` run `dvc push` / `dvc pull` with DVC's output as it comes and,
when DVC fails, add one line that says what to do. `settle` lets Snakemake trust what DVC
restored: a fresh clone has no Snakemake records, and DVC writes files with checkout-time mtimes
in no particular order, so Snakemake would rebuild whatever came out older than its inputs."""
from __future__ import annotations

import os
import subprocess
import sys
from base64 import urlsafe_b64encode
from pathlib import Path

import yaml

# DVC's wording (dvc 3.67, dvc-ssh 4.3) -> what to do. First match wins.
_UNREACHABLE = ("failed to connect", "connect call failed", "connection refused", "timed out",
                "name or service not known", "no route to host", "network is unreachable",
                "permission denied", "host key", "could not resolve", "unable to locate credentials")
_MISSING = ("failed to transfer", "checkout failed", "do not exist neither locally nor on remote",
            "missing cache files", "failed to pull data", "files failed to download")
_NO_REMOTE = ("no remote provided", "no default remote", "remote 'does not exist", "does not exist")


def _remote(root: Path, name: str | None) -> tuple[str, str]:
    """(name, url) of the remote `dvc push/pull -r name` would use ('?' when it cannot be read)."""
    try:
        from dvc.config import Config
        conf = Config(dvc_dir=str(root / ".dvc"))
        name = name or conf["core"].get("remote") or "?"
        return name, str(conf["remote"].get(name, {}).get("url", "?"))
    except Exception:  # a broken config: DVC's own error already says why
        return name or "?", "?"


def hint(verb: str, output: str, root: Path, remote: str | None) -> str:
    """The one line added after DVC's error: what to do next."""
    name, url = _remote(root, remote)
    low = output.lower()
    where = f"remote '{name}' ({url})"
    if any(s in low for s in _UNREACHABLE):
        return (f"softmoe {verb}: {where} cannot be reached or refused the login: check the URL and "
                f"that the server is up, and put keys or credentials in .dvc/config.local "
                f"(`dvc remote modify --local {name} keyfile ...`; docs/sharing.md)")
    if verb == "pull" and url != "?" and "://" not in url and not Path(url).is_dir():
        return (f"softmoe pull: {where} does not exist: run `softmoe push` in the clone that holds the "
                f"results, or point to the right place with `dvc remote add -d --local <name> <url>`")
    if verb == "pull" and any(s in low for s in _MISSING):
        return (f"softmoe pull: {where} lacks, or holds a damaged copy of, the objects named above; "
                f"nothing in the workspace was overwritten. Ask whoever ran the study to "
                f"`softmoe push` again, or rebuild those outputs with `snakemake --cores all`")
    if any(s in low for s in _NO_REMOTE):
        return (f"softmoe {verb}: no usable remote '{name}': list them with `dvc remote list`, "
                f"add one with `dvc remote add -d --local <name> <url>` (docs/sharing.md)")
    return f"softmoe {verb}: `dvc {verb}` failed (its error is above); see docs/sharing.md"


def run_dvc(verb: str, args: list[str], root: Path = Path("."), remote: str | None = None) -> int:
    """`dvc <verb> [-r remote] args...` with its output shown as it comes; on failure, one hint."""
    cmd = ["dvc", verb, *(["-r", remote] if remote else []), *args]
    proc = subprocess.Popen(cmd, cwd=root, stderr=subprocess.PIPE, text=True, errors="replace")
    err = []
    for line in proc.stderr:  # DVC writes errors and progress to stderr
        sys.stderr.write(line)
        err.append(line)
    rc = proc.wait()
    if rc:
        print(hint(verb, "".join(err), root, remote), file=sys.stderr)
    return rc


def _mtime(path: Path, tree: bool = False) -> int | None:
    """Snakemake's idea of a path's mtime (ns): a directory's .snakemake_timestamp when it has one.
    With `tree`, a directory counts as new as the newest file in it: Snakemake's inputs are often
    single files inside a folder that DVC lists as one dep."""
    try:
        stamp = path / ".snakemake_timestamp"
        own = (stamp if path.is_dir() and stamp.exists() else path).stat().st_mtime_ns
    except FileNotFoundError:
        return None
    if tree and path.is_dir():
        own = max([own, *(p.stat().st_mtime_ns for p in path.rglob("*") if p.is_file())])
    return own


def _newest(deps: list[Path]) -> int | None:
    return max((t for d in deps if (t := _mtime(d, tree=True)) is not None), default=None)


def _raise_mtime(path: Path, when: int) -> None:
    for p in (path, path / ".snakemake_timestamp"):
        if p.exists():
            os.utime(p, ns=(p.stat().st_atime_ns, when))


def _stages(root: Path) -> dict[str, tuple[list[Path], list[Path]]]:
    """stage -> (deps, outs) as recorded in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    return {name: ([root / d["path"] for d in st.get("deps", [])],
                   [root / o["path"] for o in st.get("outs", [])])
            for name, st in (lock.get("stages") or {}).items()}


def _built_here(root: Path, out: Path) -> bool:
    """Whether Snakemake recorded building `out` in this clone (its default file records: one file
    per output, named by the path in URL-safe base64; see snakemake.persistence.file)."""
    key = urlsafe_b64encode(str(out.relative_to(root)).encode()).decode()
    return (root / ".snakemake" / "metadata" / (f"@{key[:254]}" if len(key) > 254 else key)).exists()


def _stale(root: Path, deps: list[Path], outs: list[Path]) -> list[Path]:
    """Outputs not built here by Snakemake that are older than a dep (what Snakemake would rebuild)."""
    newest = _newest(deps)
    if newest is None:
        return []
    return [o for o in outs if (t := _mtime(o)) is not None and t < newest and not _built_here(root, o)]


def settle(root: Path = Path(".")) -> int:
    """Give the outputs that DVC restored (not built here by Snakemake) of every stage DVC finds
    up to date (hashes as in dvc.lock) mtimes no older than their deps, in pipeline order, so that
    Snakemake rebuilds nothing DVC has verified. Costs a few stat calls unless such an output is
    older than its deps; then one `dvc status`. Returns the number of outputs whose mtime moved."""
    if not (root / "dvc.lock").is_file() or not (root / ".dvc").is_dir():
        return 0
    stages = _stages(root)
    if not any(_stale(root, deps, outs) for deps, outs in stages.values()):
        return 0
    try:
        from dvc.repo import Repo
        with Repo(str(root)) as repo:
            changed = set(repo.status())
    except Exception as err:  # e.g. another dvc process holds the lock: leave mtimes as they are
        print(f"note: outputs restored by DVC not checked ({type(err).__name__}: {err})", file=sys.stderr)
        return 0
    moved: set[Path] = set()
    for _ in range(len(stages)):  # pipeline order without the graph: repeat until nothing moves
        stale = [(out, deps) for name, (deps, outs) in stages.items() if name not in changed
                 for out in _stale(root, deps, outs)]
        for out, deps in stale:
            _raise_mtime(out, _newest(deps))
            moved.add(out)
        if not stale:
            break
    if moved:
        print(f"note: {len(moved)} outputs restored by DVC match dvc.lock; their mtimes now follow "
              f"the pipeline order, so Snakemake keeps them", file=sys.stderr)
    return len(moved)
