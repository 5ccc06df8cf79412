"""`softmoe <step>`: the one entry point that Snakemake rules, DVC stages and people call.

Each step parses paths, validates params.yaml into its typed sections (softmoe.study.params.Study,
built once), and calls one room of the package with the sections it reads. Rooms are imported
inside the step so that light steps do not pay for importing Lightning."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from softmoe.base.errors import UserError


def _study(args):
    """The --params file with its --overlay files merged on, validated, as typed sections
    (softmoe.study.params.Study)."""
    from softmoe.study import params
    return params.load_study(args.params, args.overlay)


# Read by OpenMP/BLAS libraries when they load, by child processes, and by Lightning's DDP
# launchers, which otherwise reset torch to (cores / processes) threads when OMP_NUM_THREADS is unset.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


# glibc's malloc gives freed blocks over ~128 KiB back to the kernel (mmap, heap trim), so every
# training step faulted its tensors' pages in again: about a third of an MNIST step at n = 128, and
# 13 % of the default study's CPU time was spent in the kernel. M_MMAP_THRESHOLD (its maximum), M_TRIM_THRESHOLD,
# M_TOP_PAD: freed memory stays in the process for the next step. Numbers: docs/architecture.md.
MALLOPT = {-3: 32 << 20, -1: 1 << 30, -2: 256 << 20}


def _keep_freed_memory() -> None:
    """Set MALLOPT where the C library is glibc (elsewhere, nothing to set)."""
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    for option, value in MALLOPT.items():
        mallopt(option, value)


def _threads(args) -> None:
    """Set up a compute step: --threads compute threads (Snakemake's {threads} for the job) for
    torch's intra-op and inter-op pools and, through THREAD_ENV, the libraries loaded later;
    malloc keeps freed memory (`_keep_freed_memory`); and the CPU code paths are pinned to AVX2
    (softmoe.base.numerics.pin) before torch is imported, so that runs give the same bytes on any x86
    CPU with AVX2."""
    from softmoe.base import numerics
    _keep_freed_memory()
    for name in THREAD_ENV:
        os.environ[name] = str(args.threads)
    numerics.pin()
    import torch
    torch.set_num_threads(args.threads)
    if torch.get_num_interop_threads() != args.threads:
        try:
            torch.set_num_interop_threads(args.threads)
        except RuntimeError:  # settable once per process: a second in-process call keeps the first
            pass


def cmd_validate(args):
    study = _study(args)
    if args.out:  # a fixed marker: DVC stages depend on it without rerunning on every change
        from softmoe.base import atomic
        atomic.write_text(args.out, "params valid\n")
    print(f"{args.params}: valid (dataset {study.dataset}, experts {list(study.experts)}, "
          f"seeds {list(study.seeds)})")


def cmd_params(args):
    import yaml
    from softmoe.base import atomic
    from softmoe.study import params
    merged = params.load(args.params, args.overlay)   # validated before anything is written
    given = " ".join([f"--params {args.params}", *(f"--overlay {o}" for o in args.overlay)])
    text = (f"# Written by `softmoe params {given}`: merged and validated (docs/scale-out.md).\n"
            + yaml.safe_dump(merged, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None))
    if args.out == "-":
        print(text, end="")
    else:
        atomic.write_text(args.out, text)


def cmd_prepare(args):
    from softmoe.data import datasets
    datasets.prepare(_study(args).datasets, args.dataset, Path(args.out))


def cmd_train(args):
    _threads(args)
    from softmoe.steps import train
    study = _study(args)
    train.train_run(study.train, study.model, study.dataset_entry, Path(args.data), args.experts,
                    args.seed, Path(args.out))


def cmd_synthetic(args):
    _threads(args)
    from softmoe.steps import synthetic
    study = _study(args)
    synthetic.train_synthetic(study.synthetic, study.train.accelerator, args.variance, args.tokens,
                              args.experts, args.seed, Path(args.out))


def cmd_proof(args):
    _threads(args)
    from softmoe.steps import synthetic
    synthetic.proof_check(_study(args).synthetic.proof_scales, Path(args.run), Path(args.out))


def cmd_evaluate(args):
    _threads(args)
    from softmoe.steps import evaluate
    study = _study(args)
    evaluate.evaluate_run(study.evaluate, study.train, study.model, study.dataset_entry, Path(args.data),
                          Path(args.run), Path(args.out))


def cmd_tabulate(args):
    from softmoe.workflow import tables
    tables.concat(_study(args), args.table, Path(args.out))


def cmd_calibrate(args):
    _threads(args)
    from softmoe.steps import calibration
    calibration.calibrate(_study(args), Path(args.data), args.experts, args.seed, Path(args.out))


def cmd_hypothesis(args):
    _threads(args)
    from softmoe.steps import hypothesis
    hypothesis.run(_study(args), args.name, Path(args.data), args.experts, args.seed, Path(args.out))


def cmd_hypotheses(args):
    from softmoe.audit import hypotheses
    hypotheses.write(_study(args), Path(args.tables), Path(args.out))


def cmd_claims(args):
    from softmoe.audit import claims
    gpu = Path(args.gpu) if args.gpu and Path(args.gpu).is_file() else None
    claims.write_claims(_study(args), Path(args.tables), gpu, Path(args.out), Path(args.discrepancies))


def cmd_summarize(args):
    from softmoe.audit import summary
    summary.summarize(_study(args).dataset, Path(args.tables), Path(args.out), Path(args.machine))


def cmd_latency(args):
    _threads(args)
    from softmoe.steps import latency
    from softmoe.study import layout
    study = _study(args)
    latency.measure(study.latency, study.model, layout.train_dirs(study, first_seed_only=True),
                    Path(args.out), Path(args.hardware), Path(args.rounds))


def cmd_figures(args):
    from softmoe.report import figures
    figures.make_figures(_study(args), Path(args.tables), Path(args.out))


def cmd_report(args):
    from softmoe.report import build
    # The provenance names the study's own file: its (last) overlay if any, which the reproduce
    # line passes with --configfile; params.yaml itself is in git at the commit it names.
    study_file = Path((args.overlay or [args.params])[-1])
    build.build_report(_study(args), study_file, Path(args.tables), Path(args.figures),
                        Path(args.claims), Path(args.benchmarks), [Path(p) for p in args.hash],
                        Path(args.html), Path(args.md))


def cmd_crate(args):
    from softmoe.provenance import crate
    from softmoe.study import params
    from softmoe.workflow import stages
    raw = params.load(args.params, args.overlay)
    code = sorted({c for step in stages.STEPS for c in stages.code(step)})   # as the report lists them
    out = crate.write_crate(Path(args.out), [Path(args.params), *map(Path, args.overlay)], raw, Path(args.claims),
                            [Path(p) for p in args.hash], [Path(c) for c in code])
    if args.validate:
        issues = crate.validate(out.parent)
        if issues:
            raise UserError(f"{out}: roc-validator rejects the crate as {crate.PROFILE}:\n" + "\n".join(issues))
    print(f"{out}: Workflow Run RO-Crate" + (f", valid as {crate.PROFILE} (offline)" if args.validate else ""))


def cmd_bench(args):
    _threads(args)
    from softmoe.bench import suite
    suite.run(Path(args.out), Path(args.md), quick=args.quick)


def cmd_share(args):
    from softmoe.workflow import share
    rc = share.run_dvc(args.step, args.targets, remote=args.remote)
    if rc:
        raise SystemExit(rc)


def _parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="softmoe", description=__doc__.splitlines()[0])
    top.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = top.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name, func, help_, threads=False):
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--params", default="params.yaml", help="params file (default params.yaml)")
        p.add_argument("--overlay", action="append", default=[], metavar="FILE",
                       help="params overlay (config/*.yaml: only what differs) merged onto --params; "
                            "repeatable, later ones win (docs/scale-out.md)")
        if threads:
            p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        p.set_defaults(func=func)
        return p

    p = step("validate", cmd_validate, "check params.yaml against the schema and exit")
    p.add_argument("--out", help="also write a marker file when valid (DVC's first stage)")
    p = step("params", cmd_params, "write --params with its --overlay files merged on, validated, as one "
             "complete params file (for `dvc repro`, which reads params.yaml only)")
    p.add_argument("--out", required=True, help="output params file, e.g. params.yaml ('-': print it)")
    p = step("prepare", cmd_prepare, "prepare one dataset under data/<dataset>/ with a manifest")
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True, help="output folder, e.g. data/mnist5k")
    p = step("train", cmd_train, "train one model of the expert grid (dataset, n, seed)", threads=True)
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--experts", type=int, required=True, help="number of experts n")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder, e.g. results/train/mnist5k/n16-s0")
    p = step("synthetic", cmd_synthetic, "train one synthetic ||x||_2 regressor (docs/study.md §5 E1)", threads=True)
    p.add_argument("--variance", type=float, required=True, help="x ~ N(0, variance * I), e.g. 5")
    p.add_argument("--tokens", required=True, help="tokenization of x in R^10, e.g. 5x2")
    p.add_argument("--experts", type=int, required=True)
    p.add_argument("--seed", type=int, required=True, help="training seed, one of synthetic.seeds")
    p.add_argument("--out", required=True, help="run folder, e.g. results/synthetic/v5/5x2/n1-s0")
    p = step("proof", cmd_proof, "numerical check of Theorem 1's proof on a trained n=1 model", threads=True)
    p.add_argument("--run", required=True, help="synthetic run folder of an n=1 model, e.g. results/synthetic/v5/5x2/n1-s0")
    p.add_argument("--out", required=True, help="output CSV")
    p = step("evaluate", cmd_evaluate, "Algorithm 1 vs random, all experts and oracle for one model", threads=True)
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("--out", required=True, help="output CSV (tidy rows)")
    p = step("tabulate", cmd_tabulate, "concatenate the grid's per-run files into one tidy CSV")
    p.add_argument("--table", required=True, help="a table made of per-run files (softmoe.experiments)")
    p.add_argument("--out", required=True)
    p = step("calibrate", cmd_calibrate, "train one model of the grid for the paper's epochs instead of "
             "its steps, and evaluate it (docs/study.md §7)", threads=True)
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--experts", type=int, required=True, help="number of experts n")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder, e.g. results/calibration/mnist5k/n16-s0")
    p = step("hypothesis", cmd_hypothesis, "train one run of a hypothesis (params.yaml `hypotheses`) with its "
             "overrides and evaluate it like the grid (docs/hypotheses.md)", threads=True)
    p.add_argument("--name", required=True, help="the hypothesis, a key of `hypotheses`")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--experts", type=int, required=True, help="number of experts n")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder, e.g. results/hypotheses/mnist5k/authors_recipe/n32-s0")
    p = step("hypotheses", cmd_hypotheses, "compare every hypothesis with the grid on its quantity: effect, "
             "interval, share of the gap to the paper (metrics/hypotheses.json)")
    p.add_argument("--tables", required=True, help="folder of the study's tables")
    p.add_argument("--out", required=True, help="output JSON, e.g. metrics/hypotheses.json")
    p = step("claims", cmd_claims, "judge the paper's claims on the tables: metrics/claims.json and the "
             "discrepancies table")
    p.add_argument("--tables", required=True, help="folder of the study's tables")
    p.add_argument("--gpu", help="GPU benchmark JSON (benchmarks/gpu.sh), read when it exists")
    p.add_argument("--out", required=True, help="claims JSON, e.g. metrics/claims.json")
    p.add_argument("--discrepancies", required=True, help="output CSV of every comparison with the paper")
    p = step("summarize", cmd_summarize, "write the study's headline metrics JSON (dvc metrics)")
    p.add_argument("--tables", required=True, help="folder with selection.csv, training.csv and training_time.csv")
    p.add_argument("--out", required=True)
    p.add_argument("--machine", required=True, help="output JSON of where the grid was trained (CPU models, "
                   "code paths), e.g. metrics/mnist5k-machine.json")
    p = step("latency", cmd_latency, "time the Soft MoE layers (each n of the first training seed, and the wide layer) with only k experts running (E4)", threads=True)
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--hardware", required=True, help="output JSON describing the machine")
    p.add_argument("--rounds", required=True, help="output CSV of every timed call with its ratio to the "
                   "same round's k = n call, e.g. results/tables/mnist5k/latency_rounds.csv")
    p = step("figures", cmd_figures, "draw every figure (PNG and SVG) from the tables")
    p.add_argument("--tables", required=True)
    p.add_argument("--out", required=True)
    p = step("report", cmd_report, "write the audit-ready report (HTML and Markdown)")
    p.add_argument("--tables", required=True)
    p.add_argument("--figures", required=True)
    p.add_argument("--claims", required=True, help="claims JSON written by `softmoe claims`")
    p.add_argument("--benchmarks", required=True, help="folder of Snakemake benchmark files")
    p.add_argument("--hash", action="append", default=[], metavar="PATH",
                   help="a file or folder whose files' md5 the report lists (repeatable)")
    p.add_argument("--html", required=True)
    p.add_argument("--md", required=True)
    p = step("crate", cmd_crate, "describe the finished run as a Workflow Run RO-Crate (docs/sharing.md)")
    p.add_argument("--claims", required=True, help="claims JSON written by `softmoe claims`")
    p.add_argument("--hash", action="append", default=[], metavar="PATH",
                   help="an output file or folder the crate lists with sha256 (repeatable; as the report's --hash)")
    p.add_argument("--out", default="ro-crate-metadata.json",
                   help="the crate's metadata file, in the crate root (default ro-crate-metadata.json)")
    p.add_argument("--validate", action="store_true",
                   help="then check it with roc-validator against workflow-run-crate, offline")
    p = step("bench", cmd_bench, "layer and selective-inference benchmarks", threads=True)
    p.add_argument("--out", default="reports/benchmarks.json")
    p.add_argument("--md", default="reports/benchmarks.md")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (tests)")
    for verb, what in (("push", "upload the DVC-tracked results to a remote"),
                       ("pull", "download the DVC-tracked results from a remote and check them out")):
        p = sub.add_parser(verb, help=f"`dvc {verb}` plus one line on what to do when it fails",
                           description=f"{what} (`dvc {verb}`; docs/sharing.md)")
        p.add_argument("-r", "--remote", help="remote name (default: DVC's default remote)")
        p.add_argument("targets", nargs="*", help="stages or paths (default: all)")
        p.set_defaults(func=cmd_share)
    return top


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print(f"softmoe {args.step}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
