def table_files(table):
    return [str(path) for path, _ in layout.table_inputs(STUDY, table)]


rule evaluate:
    message: "Algorithm 1 vs random, all experts and oracle: {wildcards.dataset} n={wildcards.n} seed {wildcards.seed}"
    input:
        data=layout.DATA,
        model=rules.train.output.model,
        code=stages.code("evaluate"),
    output:
        layout.EVAL,
    params:
        run=layout.TRAIN,
        settings=stages.param_values("evaluate", P),
    log: "logs/evaluate/{dataset}/n{n}-s{seed}.log"
    benchmark: layout.BENCHMARKS + "/evaluate/{dataset}/n{n}-s{seed}.tsv"
    threads: P["threads"]
    resources: mem_mb=4000, runtime=60
    shell:
        "softmoe evaluate --params {PARAMS} --data {input.data} --run {params.run}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule tabulate:
    message: "Collecting the {wildcards.table} table of {wildcards.dataset}"
    input:
        runs=lambda wc: table_files(wc.table),
        code=stages.code("tabulate"),
    output:
        layout.TABLES + "/{table}.csv",
    wildcard_constraints:
        table="|".join(layout.TABLE_SOURCES),
    log: "logs/tabulate/{dataset}/{table}.log"
    benchmark: layout.BENCHMARKS + "/tabulate/{dataset}/{table}.tsv"
    threads: 1
    resources: mem_mb=1000, runtime=10
    shell: "softmoe tabulate --params {PARAMS} --table {wildcards.table} --out {output} > {log} 2>&1"


rule summarize:
    message: "Headline metrics of {DATASET} for dvc metrics"
    input:
        expand(layout.TABLES + "/{table}.csv", dataset=DATASET, table=["selection", "training"]),
        code=stages.code("summarize"),
    output:
        layout.METRICS.format(dataset=DATASET),
    params:
        tables=TABLES,
    log: f"logs/summarize/{DATASET}.log"
    benchmark: f"{layout.BENCHMARKS}/summarize/{DATASET}.tsv"
    threads: 1
    resources: mem_mb=1000, runtime=10
    shell: "softmoe summarize --params {PARAMS} --tables {params.tables} --out {output} > {log} 2>&1"
