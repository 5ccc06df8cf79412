rule prepare:
    input:
        code=stages.code("prepare"),
    output:
        directory(layout.DATA),
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        f"{layout.BENCHMARKS}/prepare/{{dataset}}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        files=PARAMS_OPTIONS,
        settings=stages.param_values("prepare", P),
    message:
        "Preparing dataset {wildcards.dataset}"
    shell:
        "softmoe prepare {params.files} --dataset {wildcards.dataset} --out {output} > {log} 2>&1"
