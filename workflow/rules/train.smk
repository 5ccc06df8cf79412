# Several devices/nodes: under Slurm, srun starts one task per device and Lightning reads the
# Slurm environment (a present `mpi` resource stops the executor plugin's own `srun -n1`
# wrapper); outside Slurm the prefix is empty and Lightning starts the processes itself.
DEVICES = P["train"]["devices"] if P["train"]["devices"] != "auto" else 1
NODES = P["train"]["num_nodes"]
LAUNCH = f"srun --ntasks-per-node={DEVICES}" if DEVICES * NODES > 1 else ""
PREFIX = "${{SLURM_JOB_ID:+{resources.mpi}}} " if LAUNCH else ""


rule train:
    message: "Training {wildcards.dataset} with n={wildcards.n} experts, seed {wildcards.seed}"
    input:
        data=layout.DATA,
        code=stages.code("train"),
    output:
        model=layout.TRAIN + "/model.safetensors",
        metrics=layout.TRAIN + "/metrics.json",
        curves=layout.TRAIN + "/curves.csv",
    params:
        out=layout.TRAIN,
        settings=stages.param_values("train", P),
    log: "logs/train/{dataset}/n{n}-s{seed}.log"
    benchmark: layout.BENCHMARKS + "/train/{dataset}/n{n}-s{seed}.tsv"
    threads: P["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=DEVICES * NODES if P["model"]["kind"] != "mnist" else 0,
        nodes=NODES,
        tasks_per_node=DEVICES,
        mpi=LAUNCH,
    shell:
        PREFIX + "softmoe train --params {PARAMS} --data {input.data} --experts {wildcards.n}"
        " --seed {wildcards.seed} --out {params.out} --threads {threads} > {log} 2>&1"
