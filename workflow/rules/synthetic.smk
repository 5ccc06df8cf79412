rule synthetic:
    input:
        code=stages.code("synthetic"),
    output:
        model=f"{layout.SYNTHETIC}/model.safetensors",
        loss=f"{layout.SYNTHETIC}/loss.csv",
        metrics=f"{layout.SYNTHETIC}/metrics.json",
    log:
        "logs/synthetic/v{variance}/{tokens}/n{n}-s{seed}.log",
    benchmark:
        f"{layout.BENCHMARKS}/synthetic/v{{variance}}/{{tokens}}/n{{n}}-s{{seed}}.tsv"
    threads: P["threads"]
    resources:
        mem_mb=2000,
        runtime=60,
    params:
        files=PARAMS_OPTIONS,
        out=lambda wildcards, output: os.path.dirname(output.model),
        settings=stages.param_values("synthetic", P),
    message:
        "Synthetic ||x||_2 regressor, variance {wildcards.variance}, tokens {wildcards.tokens}, n={wildcards.n}, seed {wildcards.seed}"
    shell:
        "softmoe synthetic {params.files} --variance {wildcards.variance} --tokens {wildcards.tokens}"
        " --experts {wildcards.n} --seed {wildcards.seed}"
        " --out {params.out} --threads {threads} > {log} 2>&1"


rule proof:
    input:
        model=f"{PROOF_RUN}/model.safetensors",
        code=stages.code("proof"),
    output:
        layout.PROOF,
    log:
        "logs/proof/v{variance}/{tokens}.log",
    benchmark:
        f"{layout.BENCHMARKS}/proof/v{{variance}}/{{tokens}}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        files=PARAMS_OPTIONS,
        run=lambda wildcards, input: os.path.dirname(input.model),
        settings=stages.param_values("proof", P),
    message:
        "Theorem 1 proof check on the n=1 model (first synthetic seed), variance {wildcards.variance}, tokens {wildcards.tokens}"
    shell:
        "softmoe proof {params.files} --run {params.run} --out {output} --threads {threads} > {log} 2>&1"
