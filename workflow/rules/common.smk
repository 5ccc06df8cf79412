# What the rule files share, so that they hold rules only (snakemake --lint). Read after the
# Snakefile has set P, STUDY, DATASET and TABLES.

# The tables that `tabulate` builds, and what reads them all.
TABLE_NAMES = stages.tabulated()
TABLE_FILES = expand(f"{TABLES}/{{table}}.csv", table=TABLE_NAMES)

# The committed GPU measurements (benchmarks/gpu.sh): an input of `claims` when present.
GPU_BENCHMARKS = (
    [layout.GPU_BENCHMARKS] if Path(layout.GPU_BENCHMARKS).is_file() else []
)

# What the report lists the md5 of, besides the tables, figures and claims: its data and models.
HASHED = [
    layout.DATA.format(dataset=DATASET),
    f"results/train/{DATASET}",
    "results/synthetic",
    f"results/calibration/{DATASET}",
    layout.METRICS.format(dataset=DATASET),
    layout.MACHINE.format(dataset=DATASET),
    f"results/hypotheses/{DATASET}",
    layout.HYPOTHESES,
]

# What the run's RO-Crate describes: the report's files, and the tables, figures and report.
CRATE_HASHED = [
    *HASHED,
    TABLES,
    layout.FIGURES,
    "reports/report.html",
    "reports/report.md",
]

# The n = 1 synthetic run (first synthetic seed) whose model Theorem 1's proof check reads.
PROOF_RUN = layout.proof_run(STUDY.synthetic)

# Several devices/nodes: under Slurm, srun starts one task per device and Lightning reads the
# Slurm environment (a present `mpi` resource stops the executor plugin's own `srun -n1`
# wrapper); outside Slurm the prefix is empty and Lightning starts the processes itself.
DEVICES = P["train"]["devices"] if P["train"]["devices"] != "auto" else 1
NODES = P["train"]["num_nodes"]
LAUNCH = f"srun --ntasks-per-node={DEVICES}" if DEVICES * NODES > 1 else ""
PREFIX = "${{SLURM_JOB_ID:+{resources.mpi}}} " if LAUNCH else ""
