# Hypotheses tested by runs (docs/hypotheses.md): grid models trained anew with a hypothesis's
# overrides, and every hypothesis compared with the grid on its quantity.
rule hypothesis:
    input:
        data=layout.DATA,
        code=stages.code("hypothesis"),
    output:
        selection=f"{layout.HYPOTHESIS}/selection.csv",
        model=f"{layout.HYPOTHESIS}/model.safetensors",
        metrics=f"{layout.HYPOTHESIS}/metrics.json",
        curves=f"{layout.HYPOTHESIS}/curves.csv",
        timing=f"{layout.HYPOTHESIS}/timing.json",
    log:
        "logs/hypothesis/{dataset}/{name}/n{n}-s{seed}.log",
    benchmark:
        f"{layout.BENCHMARKS}/hypothesis/{{dataset}}/{{name}}/n{{n}}-s{{seed}}.tsv"
    wildcard_constraints:
        name="[a-z][a-z0-9_]*",
        n="[0-9]+",
        seed="[0-9]+",
    threads: P["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        files=PARAMS_OPTIONS,
        out=lambda wildcards, output: os.path.dirname(output.model),
        settings=stages.param_values("hypothesis", P),
    message:
        "Hypothesis {wildcards.name}: {wildcards.dataset} n={wildcards.n} seed {wildcards.seed}"
    shell:
        "softmoe hypothesis {params.files} --name {wildcards.name} --data {input.data}"
        " --experts {wildcards.n} --seed {wildcards.seed} --out {params.out} --threads {threads}"
        " > {log} 2>&1"


rule hypotheses:
    input:
        tables=expand(
            f"{TABLES}/{{table}}.csv",
            table=[t.name for t in (SELECTION, CALIBRATION, HYPOTHESES)],
        ),
        code=stages.code("hypotheses"),
    output:
        layout.HYPOTHESES,
    log:
        "logs/hypotheses.log",
    benchmark:
        f"{layout.BENCHMARKS}/hypotheses.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        files=PARAMS_OPTIONS,
        tables=lambda wildcards, input: os.path.dirname(input.tables[0]),
        settings=stages.param_values("hypotheses", P),
    message:
        "Hypotheses of {DATASET}: each variant against the grid on its quantity"
    shell:
        "softmoe hypotheses {params.files} --tables {params.tables} --out {output} > {log} 2>&1"
