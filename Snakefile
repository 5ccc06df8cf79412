# The Soft MoE study from data to report. `snakemake --cores all` runs params.yaml;
# `snakemake --cores all --configfile config/<study>.yaml` runs a paper-scale study (an overlay).
# Every rule calls the one CLI (`softmoe <step>`) that dvc.yaml calls too.
import os
import sys
import time
from pathlib import Path

from snakemake.utils import min_version

from softmoe.provenance import record
from softmoe.study import layout
from softmoe.workflow import share, stages
from softmoe.experiments.e3_calibration import CALIBRATION
from softmoe.experiments.e3_selection import SELECTION
from softmoe.experiments.hypotheses import HYPOTHESES
from softmoe.experiments.training import TRAINING, TRAINING_TIME
from softmoe.study.params import ParamsError, Study, load

min_version("9.0")


configfile: "params.yaml"


# Each --configfile is an overlay (config/*.yaml: only what differs) that Snakemake deep-merges
# onto params.yaml into `config`; every softmoe command gets the same files (`{params.files}`:
# --params params.yaml --overlay ...) and merges them the same way (softmoe.study.params.load).
# (Snakemake makes their paths absolute; the commands name them relative to the working directory.)
OVERLAYS = [os.path.relpath(f) for f in workflow.overwrite_configfiles]
PARAMS_OPTIONS = " ".join(
    ["--params params.yaml", *(f"--overlay {o}" for o in OVERLAYS)]
)
if workflow.config_settings.config:  # --config pairs (not --configfile contents)
    raise WorkflowError(
        "--config key=value overrides are not passed to the softmoe steps; "
        "edit params.yaml or pass an overlay file with --configfile"
    )
try:  # schema + cross-key checks, before any job starts
    P = load("params.yaml", OVERLAYS)
except ParamsError as err:
    raise WorkflowError(str(err)) from None
if P != config:
    raise WorkflowError(
        f"Snakemake's config differs from params.yaml merged with {OVERLAYS} by "
        "softmoe.study.params.load: the softmoe steps would not see the values Snakemake sees"
    )
STUDY = Study.of(P)  # typed sections of P, for softmoe.study.layout
if not OVERLAYS and workflow.is_main_process:
    # After `dvc pull` in a fresh clone: keep what DVC verified (softmoe.workflow.share.settle).
    share.settle()
DATASET = P["dataset"]
# How this run was started, for the report's provenance (not a rerun trigger: environment only).
os.environ.setdefault(record.RUN_COMMAND, " ".join(["snakemake", *sys.argv[1:]]))
os.environ.setdefault(record.RUN_START, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
TABLES = layout.TABLES.format(dataset=DATASET)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/hypotheses.smk"
include: "workflow/rules/latency.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        rules.summarize.output,
        rules.claims.output,
        rules.hypotheses.output,
        rules.crate.output,


onsuccess:
    # Keep DVC's lock in step with what Snakemake just built (README: "Snakemake and DVC").
    # DVC's first stage only writes the params marker, which Snakemake checked at parse time.
    if not OVERLAYS and Path(".dvc").is_dir():
        shell(
            "{{ test -f results/params.valid || softmoe validate --params params.yaml --out results/params.valid > /dev/null; }}"
            " && dvc commit --force --quiet"
            " || echo 'note: dvc.lock not updated; run `dvc status` to see why'"
        )
