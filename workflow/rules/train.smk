rule train:
    input:
        data=layout.DATA,
        code=stages.code("train"),
    output:
        model=f"{layout.TRAIN}/model.safetensors",
        metrics=f"{layout.TRAIN}/metrics.json",
        curves=f"{layout.TRAIN}/curves.csv",
        timing=f"{layout.TRAIN}/timing.json",
    log:
        "logs/train/{dataset}/n{n}-s{seed}.log",
    benchmark:
        f"{layout.BENCHMARKS}/train/{{dataset}}/n{{n}}-s{{seed}}.tsv"
    threads: P["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
        gpu=DEVICES * NODES if P["model"]["kind"] != "mnist" else 0,
        nodes=NODES,
        tasks_per_node=DEVICES,
        mpi=LAUNCH,
    params:
        files=PARAMS_OPTIONS,
        out=lambda wildcards, output: os.path.dirname(output.model),
        settings=stages.param_values("train", P),
    message:
        "Training {wildcards.dataset} with n={wildcards.n} experts, seed {wildcards.seed}"
    shell:
        PREFIX
        + "softmoe train {params.files} --data {input.data} --experts {wildcards.n}"
        " --seed {wildcards.seed} --out {params.out} --threads {threads} > {log} 2>&1"
