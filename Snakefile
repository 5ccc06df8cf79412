# The Soft MoE study from data to report. `snakemake --cores all` runs params.yaml;
# `snakemake --cores all --configfile config/<study>.yaml` runs a paper-scale study.
# Every rule calls the one CLI (`softmoe <step>`) that dvc.yaml calls too.
import os
import sys
import time
from pathlib import Path

from snakemake.utils import min_version

from softmoe import layout, provenance, share, stages
from softmoe.params import ParamsError, Study, load

min_version("9.0")


configfile: "params.yaml"


# The complete params file the `softmoe` commands read: the last --configfile, else params.yaml.
PARAMS = str((workflow.overwrite_configfiles or ["params.yaml"])[-1])
if workflow.config_settings.config:  # --config pairs (not --configfile contents)
    raise WorkflowError(
        "--config key=value overrides are not passed to the softmoe steps; "
        "edit params.yaml or pass a complete params file with --configfile"
    )
try:
    P = load(PARAMS)  # schema + cross-key checks, before any job starts
except ParamsError as err:
    raise WorkflowError(str(err)) from None
STUDY = Study.of(P)  # typed sections of P, for softmoe.layout
if PARAMS == "params.yaml" and workflow.is_main_process:
    # After `dvc pull` in a fresh clone: keep what DVC verified (softmoe.share.settle).
    share.settle()
DATASET = P["dataset"]
# How this run was started, for the report's provenance (not a rerun trigger: environment only).
os.environ.setdefault(provenance.RUN_COMMAND, " ".join(["snakemake", *sys.argv[1:]]))
os.environ.setdefault(provenance.RUN_START, time.strftime("%Y-%m-%d %H:%M:%S %Z"))
TABLES = layout.TABLES.format(dataset=DATASET)


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/calibrate.smk"
include: "workflow/rules/latency.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        rules.report.output,
        rules.summarize.output,
        rules.claims.output,


onsuccess:
    # Keep DVC's lock in step with what Snakemake just built (README: "Snakemake and DVC").
    # DVC's first stage only writes the params marker, which Snakemake checked at parse time.
    if PARAMS == "params.yaml" and Path(".dvc").is_dir():
        shell(
            "{{ test -f results/params.valid || softmoe validate --params params.yaml --out results/params.valid > /dev/null; }}"
            " && dvc commit --force --quiet"
            " || echo 'note: dvc.lock not updated; run `dvc status` to see why'"
        )
