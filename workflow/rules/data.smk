rule prepare:
    message: "Preparing dataset {wildcards.dataset}"
    input:
        code=stages.code("prepare"),
    output:
        directory(layout.DATA),
    params:
        settings=stages.param_values("prepare", P),
    log: "logs/prepare/{dataset}.log"
    benchmark: layout.BENCHMARKS + "/prepare/{dataset}.tsv"
    threads: 1
    resources: mem_mb=4000, runtime=60
    shell: "softmoe prepare --params {PARAMS} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
