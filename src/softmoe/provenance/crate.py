"""One finished run as a Workflow Run RO-Crate (docs/sharing.md, "The run as an RO-Crate").

The crate's metadata file sits at the crate root, and every path in it is relative to that root:
the repository root for a study, so `results/tables/mnist5k/selection.csv` is a data entity
(an attached RO-Crate keeps its metadata file in its root; RO-Crate 1.1, "RO-Crate structure").
It holds the workflow (the Snakefile as the main ComputationalWorkflow, with the rule files and
the package code as parts), the run (a CreateAction with start, end and the workflow as
instrument), the params (the file and one PropertyValue per top-level key), every output with the
sha256 the report prints (softmoe.provenance.record.file_hashes), the software versions and
metrics/claims.json. Built with the `rocrate` library; `validate` checks it with `roc-validator`
against the workflow-run-crate profile, offline, from the JSON-LD contexts vendored in
src/softmoe/provenance/jsonld/."""
from __future__ import annotations

import datetime as dt
import io
import json
import mimetypes
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from softmoe.base import atomic
from softmoe.provenance import record
from softmoe.base.errors import UserError

# workflow-run-crate 0.5 builds on RO-Crate 1.1: roc-validator 0.13's profile checks that version.
CRATE_VERSION = "1.1"
WORKFLOW_RUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"   # defines `sha256`
# The remote JSON-LD contexts the crate names, and their vendored copies (package data): the
# RO-Crate 1.1 context (ResearchObject/ro-crate, docs/_specification/1.1/context.jsonld, CC0) and
# the workflow-run terms (ResearchObject/ro-terms, workflow-run/context.json).
CONTEXTS = {f"https://w3id.org/ro/crate/{CRATE_VERSION}/context": "jsonld/ro-crate-1.1-context.json",
            WORKFLOW_RUN_CONTEXT: "jsonld/workflow-run-context.json"}
PROFILES = [("https://w3id.org/ro/wfrun/process/0.5", "Process Run Crate", "0.5"),
            ("https://w3id.org/ro/wfrun/workflow/0.5", "Workflow Run Crate", "0.5"),
            ("https://w3id.org/workflowhub/workflow-ro-crate/1.0", "Workflow RO-Crate", "1.0")]
PROFILE = "workflow-run-crate"       # roc-validator's name of the profile `validate` checks
WORKFLOW, RULES = "Snakefile", "workflow/rules"
METADATA = "ro-crate-metadata.json"
FORMATS = {".yaml": "application/yaml", ".yml": "application/yaml", ".smk": "text/plain", "": "text/plain"}
# RO-Crate 1.1 requires a license; pyproject.toml [project] license wins when it names one.
NO_LICENSE = ("No license declared: the repository names none (pyproject.toml [project] license); "
              "ask the authors before reusing these files.")


def write_crate(out: Path, params_files: Sequence[Path], params: Mapping, claims: Path,
                outputs: Sequence[Path], code: Sequence[Path] = ()) -> Path:
    """Write the crate of one finished run to `out` (named ro-crate-metadata.json; its folder is
    the crate root, holding the Snakefile and workflow/rules/). `params_files` are the params file
    and its overlays, `params` their merged values, `outputs` the files and folders the report
    hashes, `code` the package files it lists; every path must exist."""
    from rocrate.rocrate import ROCrate

    out = Path(out)
    if out.name != METADATA:
        raise UserError(f"--out {out}: an RO-Crate's metadata file is named {METADATA} and sits in the "
                        f"crate root (RO-Crate 1.1); pass --out <root>/{METADATA}")
    root = _abs(out.parent)
    workflow, readme = root / WORKFLOW, [r for r in [root / "README.md"] if r.is_file()]
    rules = sorted((root / RULES).glob("*.smk"))
    hashes = _hashes(root, [workflow, *rules, *readme, *code, *params_files, claims, *outputs])
    crate = ROCrate(version=CRATE_VERSION)
    crate.metadata.extra_contexts.append(WORKFLOW_RUN_CONTEXT)
    wf = crate.add_workflow(dest_path=WORKFLOW, main=True, lang="snakemake",
                            properties=_file_props(hashes, WORKFLOW, "the study's Snakemake workflow"))
    wf["hasPart"] = [_add_file(crate, hashes, _rel(root, f)) for f in [*rules, *code]]
    git = record.git_state(root)
    if git["dirty"] is not None:   # a git checkout: the workflow's version is its commit
        wf["version"] = git["commit"] + ("+dirty" if git["dirty"] else "")
    for r in readme:   # Workflow RO-Crate: a README.md in the root is about the crate
        _add_file(crate, hashes, "README.md", "how to run and read the study")["about"] = crate.root_dataset
    run = _describe_run(crate, wf, root, hashes, params_files, params, claims, outputs)
    _describe_root(crate, run, params, _license(root))
    wf["softwareRequirements"] = _software(crate)
    atomic.write_json(out, crate.metadata.generate())
    return out


def _hashes(root: Path, paths: Sequence[Path]) -> dict[str, dict]:
    """path relative to the crate root -> bytes and sha256 (softmoe.provenance.record.file_hashes);
    a missing path or one outside the root stops the step before anything is written."""
    outside = [str(p) for p in paths if not _abs(p).is_relative_to(root)]
    if outside:
        more = f" and {len(outside) - 3} more" if len(outside) > 3 else ""
        raise UserError(f"{', '.join(outside[:3])}{more}: outside the crate root {root}; an RO-Crate lists only files "
                        "under the folder of its ro-crate-metadata.json (write the crate at the repository root)")
    frame = record.file_hashes([Path(p) for p in paths])
    missing = frame.loc[frame["sha256"] == "missing", "path"].tolist()
    if missing:
        raise UserError(f"{', '.join(missing)}: not found, so the crate cannot describe it; build it "
                        "(`snakemake --cores all` makes every output) or drop it from the --hash/--claims arguments")
    return {_rel(root, Path(r.path)): {"bytes": int(r.bytes), "sha256": r.sha256} for r in frame.itertuples()}


def _abs(path) -> Path:
    """Absolute, links kept: a DVC output linked into the cache is still a path in the crate."""
    return Path(os.path.abspath(path))


def _rel(root: Path, path: Path) -> str:
    return _abs(path).relative_to(root).as_posix()


def _file_props(hashes: dict, rel: str, description: str | None = None) -> dict:
    props = {"name": Path(rel).name, "contentSize": str(hashes[rel]["bytes"]), "sha256": hashes[rel]["sha256"]}
    kind = mimetypes.guess_type(rel)[0] or FORMATS.get(Path(rel).suffix)
    if kind:
        props["encodingFormat"] = kind
    if description:
        props["description"] = description
    return props


def _add_file(crate, hashes: dict, rel: str, description: str | None = None):
    return crate.add_file(dest_path=rel, properties=_file_props(hashes, rel, description))


def _add_output(crate, root: Path, hashes: dict, path: Path):
    """A file, or a folder as a Dataset whose hasPart lists each of its files with its sha256."""
    rel = _rel(root, path)
    if not Path(path).is_dir():
        return _add_file(crate, hashes, rel)
    files = [_add_file(crate, hashes, f) for f in sorted(hashes) if f.startswith(rel + "/")]
    return crate.add_dataset(dest_path=rel + "/", properties={"name": rel, "hasPart": files})


def _formal(crate, ident: str, name: str, kind: str, example, description: str | None = None):
    """A FormalParameter of the workflow with `example` (a data entity or PropertyValue) as its
    value in this run (workExample / exampleOfWork both ways, as Workflow Run Crate asks)."""
    from rocrate.model.contextentity import ContextEntity
    props = {"@type": "FormalParameter", "name": name, "additionalType": kind, "workExample": example,
             "conformsTo": {"@id": "https://bioschemas.org/profiles/FormalParameter/1.0-RELEASE"}}
    if description:
        props["description"] = description
    param = crate.add(ContextEntity(crate, ident, properties=props))
    example["exampleOfWork"] = param
    return param


def _value(value) -> tuple[object, str]:
    """A params value as a PropertyValue value and its DataType; lists and sections as JSON text."""
    if isinstance(value, bool):
        return value, "Boolean"
    if isinstance(value, int):
        return value, "Integer"
    if isinstance(value, float):
        return value, "Float"
    if isinstance(value, str):
        return value, "Text"
    return json.dumps(value, sort_keys=True), "Text"


def _describe_run(crate, wf, root: Path, hashes: dict, params_files: Sequence[Path], params: Mapping,
                  claims: Path, outputs: Sequence[Path]):
    from rocrate.model.contextentity import ContextEntity
    inputs, values = [], []
    for i, path in enumerate(params_files):
        what = "params file" if i == 0 else f"params overlay {i}"
        entity = _add_file(crate, hashes, _rel(root, path), f"the {what} of this run")
        inputs.append(_formal(crate, f"#params-file-{i}", what, "File", entity))
        values.append(entity)
    for key, raw in params.items():
        value, kind = _value(raw)
        pv = crate.add(ContextEntity(crate, f"#pv-{key}", properties={
            "@type": "PropertyValue", "name": key, "value": value}))
        inputs.append(_formal(crate, f"#param-{key}", key, kind, pv, f"params key `{key}`"))
        values.append(pv)
    results, produced = [], []
    for path in outputs:
        entity = _add_output(crate, root, hashes, path)
        kind = "Dataset" if Path(path).is_dir() else "File"
        produced.append(_formal(crate, f"#output-{entity.id.rstrip('/')}", entity.id, kind, entity))
        results.append(entity)
    claims_file = _add_file(crate, hashes, _rel(root, claims), "the verdict on each of the paper's claims")
    produced.append(_formal(crate, "#output-claims", "claims", "File", claims_file))
    results.append(claims_file)
    wf["input"], wf["output"] = inputs, produced
    info = record.run_info(Path(params_files[-1]))
    props = {"name": f"Run of {WORKFLOW}: {info['command']}", "actionStatus": "http://schema.org/CompletedActionStatus",
             "description": f"started {info['start']}; crate written {info['end']}",
             "endTime": dt.datetime.now().astimezone().isoformat(timespec="seconds")}
    start = _iso(info["start"])
    if start:
        props["startTime"] = start
    return crate.add_action(wf, identifier="#run", object=values, result=results, properties=props)


def _iso(stamp: str) -> str | None:
    """`%Y-%m-%d %H:%M:%S %Z` as the Snakefile exports SOFTMOE_RUN_START, in ISO 8601 (None when the
    start was not recorded or its zone is unknown here)."""
    text, _, zone = stamp.rpartition(" ")
    try:
        naive = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return None
    if zone in ("UTC", "GMT"):
        return naive.replace(tzinfo=dt.timezone.utc).isoformat(timespec="seconds")
    import time
    return naive.astimezone().isoformat(timespec="seconds") if zone in time.tzname else None


def _license(root: Path) -> str:
    """pyproject.toml's [project] license (text or SPDX expression), else NO_LICENSE."""
    import tomllib
    try:
        license_ = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {}).get("license")
    except (OSError, tomllib.TOMLDecodeError):
        return NO_LICENSE
    if isinstance(license_, dict):
        license_ = license_.get("text")
    return license_ if isinstance(license_, str) and license_.strip() else NO_LICENSE


def _describe_root(crate, run, params: Mapping, license_: str) -> None:
    """Name, description, date, the run and the profiles; hasPart keeps only top-level entities
    (a folder's files are listed by its Dataset)."""
    from rocrate.model.contextentity import ContextEntity
    root = crate.root_dataset
    nested = {p.id for d in crate.get_by_type("Dataset") if d is not root for p in d.get("hasPart", [])}
    root["hasPart"] = [e for e in root.get("hasPart", []) if e.id not in nested]
    root["name"] = f"Soft MoE study run ({params.get('dataset', 'study')})"
    root["description"] = ("One finished run of the Soft MoE reproduction workflow: its Snakefile, params, "
                           "outputs with sha256, software versions and the claims verdicts.")
    root["datePublished"] = run["endTime"]
    root["mentions"] = run
    root["license"] = license_
    for ident, name, version in PROFILES:
        if ident not in crate:
            crate.add(ContextEntity(crate, ident, properties={"@type": "CreativeWork", "name": name,
                                                              "version": version}))
        root.append_to("conformsTo", crate.get(ident))


def _software(crate) -> list:
    """One SoftwareApplication per package of softmoe.provenance.record.versions() that is installed."""
    from rocrate.model.softwareapplication import SoftwareApplication
    apps = []
    for row in record.versions().itertuples():
        if row.version == "not installed":
            continue
        url = f"https://pypi.org/project/{row.package}/{row.version}/"
        local = row.package == "softmoe-repro"      # this package: installed from the repository
        apps.append(crate.add(SoftwareApplication(crate, f"#software-{row.package}" if local else url, properties={
            "name": row.package, "version": row.version, **({} if local else {"url": url})})))
    return apps


# ---- offline validation --------------------------------------------------------------------------
def validate(crate_root: Path, severity: str = "REQUIRED") -> list[str]:
    """roc-validator's issues with the crate in `crate_root` against the workflow-run-crate profile
    at `severity` and above (REQUIRED: the profile's MUSTs); [] when it conforms. Offline: the
    validator's HTTP cache (requests-cache, as `rocrate-validator --offline` reads it) is filled
    first from the vendored copies of CONTEXTS, so no JSON-LD context is fetched."""
    from rocrate_validator import services
    from rocrate_validator.models import Severity, ValidationSettings

    with tempfile.TemporaryDirectory(prefix="softmoe-crate-") as tmp:
        cache = Path(tmp) / "http"
        seed_cache(cache)
        settings = ValidationSettings(rocrate_uri=str(_abs(crate_root)), profile_identifier=PROFILE,
                                      requirement_severity=Severity[severity], offline=True, cache_path=cache)
        result = services.validate(settings)
        return [f"{i.severity.name} {i.check.identifier} {i.check.name}: {i.message}"
                + (f" ({i.violatingEntity})" if getattr(i, "violatingEntity", None) else "")
                for i in result.get_issues()]


def seed_cache(cache: Path) -> None:
    """Store each vendored context in requests-cache's SQLite file `<cache>.sqlite` under its URL,
    served by a local transport adapter instead of the network."""
    import requests
    import requests_cache
    import urllib3
    from importlib.resources import files

    class Vendored(requests.adapters.HTTPAdapter):
        def send(self, request, **kwargs):
            body = files("softmoe.provenance").joinpath(CONTEXTS[request.url]).read_bytes()
            raw = urllib3.HTTPResponse(body=io.BytesIO(body), status=200, preload_content=False,
                                       headers={"Content-Type": "application/ld+json"}, request_url=request.url)
            return self.build_response(request, raw)

    with requests_cache.CachedSession(str(cache), backend="sqlite", expire_after=-1,
                                      allowable_methods=("GET",)) as session:
        session.mount("https://", Vendored())
        for url in CONTEXTS:
            session.get(url).raise_for_status()
