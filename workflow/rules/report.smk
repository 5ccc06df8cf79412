TABLE_NAMES = list(layout.TABLE_SOURCES)
GPU_BENCHMARKS = [layout.GPU_BENCHMARKS] if Path(layout.GPU_BENCHMARKS).is_file() else []
# What the report lists the md5 of, besides the tables, figures and claims: its data and models.
HASHED = [layout.DATA.format(dataset=DATASET), f"results/train/{DATASET}", "results/synthetic",
          f"results/calibration/{DATASET}", layout.METRICS.format(dataset=DATASET)]


rule claims:
    message: "Judging the paper's claims on the tables"
    input:
        expand(f"{TABLES}/{{table}}.csv", table=TABLE_NAMES),
        rules.latency.output,
        GPU_BENCHMARKS,
        code=stages.code("claims"),
    output:
        claims=layout.CLAIMS,
        discrepancies=layout.DISCREPANCIES.format(dataset=DATASET),
    params:
        tables=TABLES,
        gpu=layout.GPU_BENCHMARKS,
    log: "logs/claims.log"
    benchmark: f"{layout.BENCHMARKS}/claims/{DATASET}.tsv"
    threads: 1
    resources: mem_mb=2000, runtime=10
    shell:
        "softmoe claims --params {PARAMS} --tables {params.tables} --gpu {params.gpu}"
        " --out {output.claims} --discrepancies {output.discrepancies} > {log} 2>&1"


rule figures:
    message: "Drawing every figure from the tables"
    input:
        expand(f"{TABLES}/{{table}}.csv", table=TABLE_NAMES),
        rules.latency.output,
        code=stages.code("figures"),
    output:
        report(
            directory(layout.FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        tables=TABLES,
    log: "logs/figures.log"
    benchmark: f"{layout.BENCHMARKS}/figures/{DATASET}.tsv"
    threads: 1
    resources: mem_mb=2000, runtime=20
    shell: "softmoe figures --params {PARAMS} --tables {params.tables} --out {output} > {log} 2>&1"


rule report:
    message: "Writing the audit-ready report"
    input:
        rules.figures.output,
        rules.summarize.output,
        rules.claims.output,
        expand(f"{TABLES}/{{table}}.csv", table=TABLE_NAMES),
        rules.latency.output,
        [str(d / "model.safetensors") for d in layout.train_dirs(STUDY)],
        code=stages.code("report"),
    output:
        html=report("reports/report.html", caption="../report/report.rst", category="Report"),
        md="reports/report.md",
    params:
        tables=TABLES,
        figures=layout.FIGURES,
        benchmarks=layout.BENCHMARKS,
        hashed=" ".join(f"--hash {h}" for h in HASHED),
        settings=stages.param_values("report", P),
    log: "logs/report.log"
    threads: 1
    resources: mem_mb=2000, runtime=20
    shell:
        "softmoe report --params {PARAMS} --tables {params.tables} --figures {params.figures}"
        " --claims {rules.claims.output.claims} --benchmarks {params.benchmarks} {params.hashed}"
        " --html {output.html} --md {output.md} > {log} 2>&1"
