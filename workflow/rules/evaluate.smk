rule evaluate:
    input:
        data=layout.DATA,
        model=rules.train.output.model,
        code=stages.code("evaluate"),
    output:
        layout.EVAL,
    log:
        "logs/evaluate/{dataset}/n{n}-s{seed}.log",
    benchmark:
        f"{layout.BENCHMARKS}/evaluate/{{dataset}}/n{{n}}-s{{seed}}.tsv"
    threads: P["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        files=PARAMS_OPTIONS,
        run=lambda wildcards, input: os.path.dirname(input.model),
        settings=stages.param_values("evaluate", P),
    message:
        "Algorithm 1 vs random, all experts and oracle: {wildcards.dataset} n={wildcards.n} seed {wildcards.seed}"
    shell:
        "softmoe evaluate {params.files} --data {input.data} --run {params.run}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule tabulate:
    input:
        runs=lambda wc: stages.table_files(STUDY, wc.table),
        code=stages.code("tabulate"),
    output:
        f"{layout.TABLES}/{{table}}.csv",
    log:
        "logs/tabulate/{dataset}/{table}.log",
    benchmark:
        f"{layout.BENCHMARKS}/tabulate/{{dataset}}/{{table}}.tsv"
    wildcard_constraints:
        table="|".join(stages.tabulated()),
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        files=PARAMS_OPTIONS,
    message:
        "Collecting the {wildcards.table} table of {wildcards.dataset}"
    shell:
        "softmoe tabulate {params.files} --table {wildcards.table} --out {output} > {log} 2>&1"


rule summarize:
    input:
        tables=expand(
            f"{TABLES}/{{table}}.csv",
            table=[t.name for t in (SELECTION, TRAINING, TRAINING_TIME)],
        ),
        code=stages.code("summarize"),
    output:
        metrics=layout.METRICS.format(dataset=DATASET),
        machine=layout.MACHINE.format(dataset=DATASET),
    log:
        f"logs/summarize/{DATASET}.log",
    benchmark:
        f"{layout.BENCHMARKS}/summarize/{DATASET}.tsv"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        files=PARAMS_OPTIONS,
        tables=lambda wildcards, input: os.path.dirname(input.tables[0]),
    message:
        "Headline metrics of {DATASET} for dvc metrics"
    shell:
        "softmoe summarize {params.files} --tables {params.tables} --out {output.metrics}"
        " --machine {output.machine} > {log} 2>&1"
