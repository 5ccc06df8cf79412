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
    resources: mem_mb=4000, runtime=240, gpu=lambda wc: 1 if P["model"]["kind"] == "vit" else 0
    shell:
        "softmoe train --params {PARAMS} --data {input.data} --experts {wildcards.n}"
        " --seed {wildcards.seed} --out {params.out} --threads {threads} > {log} 2>&1"
