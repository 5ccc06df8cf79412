"""Sharing through DVC remotes (docs/sharing.md): the tiny study built once by its "author",
pushed to the default remote with no setup and to a real SSH server, pulled into fresh clones
where Snakemake then has nothing to do; an unreachable remote, a missing object and a damaged
object each fail with DVC's error plus our one-line hint, leaving the workspace whole.

The SSH test needs a server: `bash scripts/sshd-up.sh` (root; .ci/run starts it); without one
it is skipped with the reason."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path

import pytest
import yaml
from workflow_helpers import BIN, ROOT, file_hashes, make_project, run, snakemake

pytestmark = pytest.mark.e2e
GIT_ID = ["-c", "user.name=t", "-c", "user.email=t@t"]
STORE = "softmoe-dvc-store"  # the default remote, beside the clone (.dvc/config)
# Files that are not DVC outputs: per-machine logs, timings, resume checkpoints, Snakemake markers.
LOCAL_ONLY = ("checkpoints", "dvclive", "benchmarks", ".snakemake_timestamp")


def add_tracked_inputs(project: Path) -> None:
    """Copy in the pipeline's own inputs (deps no stage writes) that the tiny copy lacks:
    make_project copies the workflow, not, e.g., committed measurements a stage reads."""
    from dvc.repo import Repo
    with Repo(str(project)) as repo:
        rel = lambda items: {str(Path(i.fs_path).relative_to(project)) for i in items}  # noqa: E731
        inputs = rel(repo.index.deps) - rel(repo.index.outs)
    for path in sorted(inputs):
        if not (project / path).exists() and (ROOT / path).is_file():
            (project / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / path, project / path)


def author_study(base: Path) -> Path:
    """The tiny study as its author has it: built by Snakemake, dvc.lock and the git-tracked
    metrics committed (nothing DVC tracks goes into git)."""
    project = make_project(base / "author", dvc=False)
    (project / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy2(ROOT / ".dvc" / name, project / ".dvc" / name)
    run(["git", "init", "-q"], project)
    add_tracked_inputs(project)
    run(["git", "add", "-A"], project)
    run(["git", *GIT_ID, "commit", "-qm", "tiny study"], project)
    snakemake(project)
    run(["git", "add", "-A"], project)
    run(["git", *GIT_ID, "commit", "-qm", "results"], project)
    return project


def clone(author: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "-q", str(author), str(dest)], dest.parent)
    return dest


def softmoe(project: Path, *args: str):
    return run([str(BIN / "softmoe"), *args], project, check=False)


def shared_files(project: Path) -> dict[str, str]:
    return file_hashes(project, folders=("data", "results", "reports", "metrics"), skip=LOCAL_ONLY)


def cached_outs(project: Path) -> list[tuple[str, str]]:
    """(path, md5) of every single-file output in dvc.lock that DVC caches (not in git), in order."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    in_git = set(run(["git", "ls-files"], project).stdout.split())
    return [(o["path"], o["md5"]) for st in lock["stages"].values() for o in st.get("outs", [])
            if not o["md5"].endswith(".dir") and o["path"] not in in_git]


def assert_nothing_to_do(project: Path):
    dry = snakemake(project, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
    status = run(["dvc", "status"], project).stdout
    assert "Data and pipelines are up to date" in status, status


def assert_whole(project: Path, before: dict[str, str]):
    """Files there before are unchanged, and every DVC output is either absent or as in dvc.lock."""
    after = shared_files(project)
    assert {k: after.get(k) for k in before} == before
    status = json.loads(run(["dvc", "status", "--json"], project).stdout or "{}")
    for stage, changes in status.items():
        for change in changes:
            outs = change.get("changed outs", {}) if isinstance(change, dict) else {}
            assert set(outs.values()) <= {"deleted", "not in cache"}, (stage, outs)
    leftovers = [p for p in project.rglob("*.tmp") if ".dvc" not in p.parts and ".git" not in p.parts]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def author(tmp_path_factory) -> Path:
    """Built and pushed with plain `dvc push`: the default remote needs no configuration."""
    project = author_study(tmp_path_factory.mktemp("share"))
    push = run(["dvc", "push"], project)
    store = project.parent / STORE / "files" / "md5"
    assert store.is_dir(), push.stdout
    # Nothing the remote holds is also in git: a clone gets it from `dvc pull` only.
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    pushed = {o["path"] for st in lock["stages"].values() for o in st.get("outs", [])
              if (store / o["md5"][:2] / o["md5"][2:]).exists()}
    tracked = run(["git", "ls-files"], project).stdout.split()
    assert pushed and not [t for t in tracked if any(t == o or t.startswith(o + "/") for o in pushed)]
    return project


def test_default_remote_holds_every_output(author):
    listed = run(["dvc", "remote", "list"], author).stdout.split()
    assert listed[:2] == ["shared", str(author.parent / STORE)], listed
    cloud = run(["dvc", "status", "--cloud"], author).stdout
    assert "in sync" in cloud, cloud
    for _, md5 in cached_outs(author):
        assert (author.parent / STORE / "files" / "md5" / md5[:2] / md5[2:]).is_file(), md5


def test_fresh_clone_pulls_and_has_nothing_to_do(author):
    reviewer = clone(author, author.parent / "reviewer")
    run(["dvc", "pull"], reviewer)
    assert shared_files(reviewer) == shared_files(author)
    assert_nothing_to_do(reviewer)
    assert_nothing_to_do(reviewer)  # and stays so

    # The report rebuilt from the pulled tables matches the author's but for its run facts.
    snakemake(reviewer, "--forcerun", "report")
    mine, theirs = (report_sections(p / "reports/report.md") for p in (reviewer, author))
    assert mine.keys() == theirs.keys()
    for title in mine:
        if title not in RUN_FACTS:
            assert without_run_facts(mine[title]) == without_run_facts(theirs[title]), title


# Facts of the run, not of the results: commit, machine, dvc.lock state, wall times, and the
# comparison with the metrics committed at git HEAD (the author's run had none yet).
RUN_FACTS = ("Provenance", "Reproduction check: this run against the committed metrics")
REPRO_CLAUSE = re.compile(r"Reproduction check: [^*]*")
COST_LINE = re.compile(r"^- Cost: .*$", re.MULTILINE)   # the summary's job times: Snakemake's benchmark files


def without_run_facts(section: str) -> str:
    return COST_LINE.sub("- Cost: …", REPRO_CLAUSE.sub("Reproduction check: …", section))


def report_sections(path: Path) -> dict[str, str]:
    """report.md split at its `## ` headings: title -> text."""
    sections: dict[str, str] = {}
    title = ""
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        sections[title] = sections.get(title, "") + line + "\n"
    return sections


def _sshd() -> dict[str, str] | None:
    env_file = Path(os.environ.get("SSHD_CI_DIR", "/tmp/sshdci")) / "env"
    if not env_file.is_file():
        return None
    conf = dict(line.split("=", 1) for line in env_file.read_text().split())
    try:
        socket.create_connection((conf["SSHD_CI_HOST"], int(conf["SSHD_CI_PORT"])), timeout=5).close()
    except OSError:
        return None
    return conf


def add_ssh_remote(project: Path, conf: dict, path: Path, default: bool = False):
    url = f"ssh://{conf['SSHD_CI_USER']}@{conf['SSHD_CI_HOST']}:{conf['SSHD_CI_PORT']}{path}"
    run(["dvc", "remote", "add", "--local", *(["-d"] if default else []), "ssh", url], project)
    run(["dvc", "remote", "modify", "--local", "ssh", "keyfile", conf["SSHD_CI_KEY"]], project)
    run(["dvc", "remote", "modify", "--local", "ssh", "verify", "true"], project)


def test_ssh_remote_push_and_pull(author, tmp_path):
    conf = _sshd()
    if conf is None:
        pytest.skip("no OpenSSH server from scripts/sshd-up.sh answers: start one with "
                    "`bash scripts/sshd-up.sh` (as root; .ci/run does)")
    store = tmp_path / "ssh-store"
    add_ssh_remote(author, conf, store)
    push = softmoe(author, "push", "-r", "ssh")
    assert push.returncode == 0, push.stderr[-3000:]
    assert (store / "files" / "md5").is_dir()
    # A clone in another folder (no default store beside it) pulls over SSH only.
    reviewer = clone(author, tmp_path / "elsewhere" / "reviewer")
    add_ssh_remote(reviewer, conf, store, default=True)
    assert "config.local" not in run(["git", "status", "--porcelain", "--ignored=no"], reviewer).stdout
    pull = softmoe(reviewer, "pull")
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert shared_files(reviewer) == shared_files(author)
    assert_nothing_to_do(reviewer)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def damaged_setup(author: Path, where: Path, damage) -> tuple[Path, dict[str, str]]:
    """A clone whose default remote (beside it) is a copy of the author's with `damage(object)`
    done to the object of the last single-file output; the first output already pulled."""
    shutil.copytree(author.parent / STORE, where / STORE)
    project = clone(author, where / "reviewer")
    outs = cached_outs(project)
    first, (_, md5) = outs[0][0], outs[-1]
    damage(where / STORE / "files" / "md5" / md5[:2] / md5[2:])
    run(["dvc", "pull", first], project)
    return project, shared_files(project)


def test_unreachable_remote(author, tmp_path):
    project, before = damaged_setup(author, tmp_path, lambda obj: None)
    shutil.rmtree(project / ".dvc" / "cache")
    run(["dvc", "remote", "add", "-d", "--local", "away",
         f"ssh://root@127.0.0.1:{_closed_port()}/nowhere"], project)
    pull = softmoe(project, "pull")
    assert pull.returncode != 0
    assert "ERROR" in pull.stderr and "Connect call failed" in pull.stderr, pull.stderr[-2000:]
    assert "softmoe pull: remote 'away'" in pull.stderr and "cannot be reached" in pull.stderr
    assert_whole(project, before)

    push = softmoe(project, "push")
    assert push.returncode != 0 and "softmoe push: remote 'away'" in push.stderr, push.stderr[-2000:]


def test_missing_default_store(author, tmp_path):
    project = clone(author, tmp_path / "reviewer")  # nothing beside it
    pull = softmoe(project, "pull")
    assert pull.returncode != 0 and "ERROR" in pull.stderr
    assert "does not exist: run `softmoe push`" in pull.stderr, pull.stderr[-2000:]
    assert_whole(project, {})


@pytest.mark.parametrize("damage", ["missing", "corrupted"])
def test_damaged_object(author, tmp_path, damage):
    def hurt(obj: Path):
        if damage == "missing":
            obj.unlink()
        else:
            data = bytearray(obj.read_bytes())
            data[len(data) // 2] ^= 0xFF
            obj.chmod(0o644)
            obj.write_bytes(bytes(data))

    project, before = damaged_setup(author, tmp_path, hurt)
    pull = softmoe(project, "pull")
    assert pull.returncode != 0 and "ERROR" in pull.stderr, pull.stderr[-2000:]
    assert "lacks, or holds a damaged copy of" in pull.stderr, pull.stderr[-2000:]
    assert_whole(project, before)
    # The damaged object never reached the cache: DVC's hashes still match.
    bad = cached_outs(project)[-1][1]
    assert not (project / ".dvc/cache/files/md5" / bad[:2] / bad[2:]).exists()
