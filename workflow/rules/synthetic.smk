rule synthetic:
    message: "Synthetic ||x||_2 regressor, variance {wildcards.variance}, tokens {wildcards.tokens}, n={wildcards.n}"
    input:
        code=stages.code("synthetic"),
    output:
        model=layout.SYNTHETIC + "/model.safetensors",
        loss=layout.SYNTHETIC + "/loss.csv",
        metrics=layout.SYNTHETIC + "/metrics.json",
    params:
        out=layout.SYNTHETIC,
        settings=stages.param_values("synthetic", P),
    log: "logs/synthetic/v{variance}/{tokens}/n{n}.log"
    benchmark: layout.BENCHMARKS + "/synthetic/v{variance}/{tokens}/n{n}.tsv"
    threads: P["threads"]
    resources: mem_mb=2000, runtime=60
    shell:
        "softmoe synthetic --params {PARAMS} --variance {wildcards.variance} --tokens {wildcards.tokens}"
        " --experts {wildcards.n}"
        " --out {params.out} --threads {threads} > {log} 2>&1"


rule proof:
    message: "Theorem 1 proof check on the n=1 model, variance {wildcards.variance}, tokens {wildcards.tokens}"
    input:
        model=layout.SYNTHETIC.replace("{n}", "1") + "/model.safetensors",
        code=stages.code("proof"),
    output:
        layout.PROOF,
    params:
        run=layout.SYNTHETIC.replace("{n}", "1"),
        settings=stages.param_values("proof", P),
    log: "logs/proof/v{variance}/{tokens}.log"
    benchmark: layout.BENCHMARKS + "/proof/v{variance}/{tokens}.tsv"
    threads: 1
    resources: mem_mb=1000, runtime=10
    shell: "softmoe proof --params {PARAMS} --run {params.run} --out {output} --threads {threads} > {log} 2>&1"
