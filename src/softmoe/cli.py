"""`softmoe <step>`: the one entry point that Snakemake rules, DVC stages and people call.

Each step parses paths, validates params.yaml into its typed sections (softmoe.params.Study,
built once), and calls one room of the package with the sections it reads. Rooms are imported
inside the step so that light steps do not pay for importing Lightning."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from softmoe.errors import UserError
from softmoe.layout import TABLE_SOURCES


def _study(args):
    """The --params file, validated, as typed sections (softmoe.params.Study)."""
    from softmoe import params
    return params.load_study(args.params)


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
    torch's intra-op and inter-op pools and, through THREAD_ENV, the libraries loaded later; and
    malloc keeps freed memory (`_keep_freed_memory`)."""
    _keep_freed_memory()
    for name in THREAD_ENV:
        os.environ[name] = str(args.threads)
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
        from softmoe import atomic
        atomic.write_text(args.out, "params valid\n")
    print(f"{args.params}: valid (dataset {study.dataset}, experts {list(study.experts)}, "
          f"seeds {list(study.seeds)})")


def cmd_prepare(args):
    from softmoe import data
    data.prepare(_study(args).datasets, args.dataset, Path(args.out))


def cmd_train(args):
    _threads(args)
    from softmoe import train
    study = _study(args)
    train.train_run(study.train, study.model, study.dataset_entry, Path(args.data), args.experts,
                    args.seed, Path(args.out))


def cmd_synthetic(args):
    _threads(args)
    from softmoe import synthetic
    study = _study(args)
    synthetic.train_synthetic(study.synthetic, study.train.accelerator, args.variance, args.tokens,
                              args.experts, Path(args.out))


def cmd_proof(args):
    _threads(args)
    from softmoe import synthetic
    synthetic.proof_check(_study(args).synthetic.proof_scales, Path(args.run), Path(args.out))


def cmd_evaluate(args):
    _threads(args)
    from softmoe import evaluate
    study = _study(args)
    evaluate.evaluate_run(study.evaluate, study.train, study.model, study.dataset_entry, Path(args.data),
                          Path(args.run), Path(args.out))


def cmd_tabulate(args):
    from softmoe import layout, tables
    tables.concat(layout.table_inputs(_study(args), args.table), args.table, Path(args.out))


def cmd_calibrate(args):
    _threads(args)
    from softmoe import calibration
    calibration.calibrate(_study(args), Path(args.data), args.experts, args.seed, Path(args.out))


def cmd_claims(args):
    from softmoe import claims
    gpu = Path(args.gpu) if args.gpu and Path(args.gpu).is_file() else None
    study = _study(args)
    claims.write_claims(study.dataset, study.model, study.evaluate, Path(args.tables), gpu, Path(args.out),
                        Path(args.discrepancies))


def cmd_summarize(args):
    from softmoe import summary
    summary.summarize(_study(args).dataset, Path(args.tables), Path(args.out))


def cmd_latency(args):
    _threads(args)
    from softmoe import latency
    from softmoe import layout
    study = _study(args)
    latency.measure(study.latency, study.model, layout.train_dirs(study, first_seed_only=True),
                    Path(args.out), Path(args.hardware))


def cmd_figures(args):
    from softmoe import figures
    study = _study(args)
    figures.make_figures(study.dataset, study.evaluate, study.synthetic, Path(args.tables), Path(args.out))


def cmd_report(args):
    from softmoe import report
    report.build_report(_study(args), Path(args.params), Path(args.tables), Path(args.figures),
                        Path(args.claims), Path(args.benchmarks), [Path(p) for p in args.hash],
                        Path(args.html), Path(args.md))


def cmd_bench(args):
    _threads(args)
    from softmoe import bench
    bench.run(Path(args.out), Path(args.md), quick=args.quick)


def cmd_share(args):
    from softmoe import share
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
        if threads:
            p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        p.set_defaults(func=func)
        return p

    p = step("validate", cmd_validate, "check params.yaml against the schema and exit")
    p.add_argument("--out", help="also write a marker file when valid (DVC's first stage)")
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
    p.add_argument("--out", required=True, help="run folder, e.g. results/synthetic/v5/5x2/n1")
    p = step("proof", cmd_proof, "numerical check of Theorem 1's proof on a trained n=1 model", threads=True)
    p.add_argument("--run", required=True, help="synthetic run folder of an n=1 model")
    p.add_argument("--out", required=True, help="output CSV")
    p = step("evaluate", cmd_evaluate, "Algorithm 1 vs random, all experts and oracle for one model", threads=True)
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--run", required=True, help="training run folder")
    p.add_argument("--out", required=True, help="output CSV (tidy rows)")
    p = step("tabulate", cmd_tabulate, "concatenate the grid's per-run files into one tidy CSV")
    p.add_argument("--table", required=True, choices=sorted(TABLE_SOURCES))
    p.add_argument("--out", required=True)
    p = step("calibrate", cmd_calibrate, "train one model of the grid for the paper's epochs instead of "
             "its steps, and evaluate it (docs/study.md §7)", threads=True)
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--experts", type=int, required=True, help="number of experts n")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="run folder, e.g. results/calibration/mnist5k/n16-s0")
    p = step("claims", cmd_claims, "judge the paper's claims on the tables: metrics/claims.json and the "
             "discrepancies table")
    p.add_argument("--tables", required=True, help="folder of the study's tables")
    p.add_argument("--gpu", help="GPU benchmark JSON (benchmarks/gpu.sh), read when it exists")
    p.add_argument("--out", required=True, help="claims JSON, e.g. metrics/claims.json")
    p.add_argument("--discrepancies", required=True, help="output CSV of every comparison with the paper")
    p = step("summarize", cmd_summarize, "write the study's headline metrics JSON (dvc metrics)")
    p.add_argument("--tables", required=True, help="folder with selection.csv and training.csv")
    p.add_argument("--out", required=True)
    p = step("latency", cmd_latency, "time the Soft MoE layers (each n of the first training seed, and the wide layer) with only k experts running (E4)", threads=True)
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--hardware", required=True, help="output JSON describing the machine")
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
