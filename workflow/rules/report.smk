TABLE_NAMES = ["selection", "training", "curves", "synthetic_loss", "synthetic_proof"]


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
        expand(f"{TABLES}/{{table}}.csv", table=TABLE_NAMES),
        rules.latency.output,
        code=stages.code("report"),
    output:
        html=report("reports/report.html", caption="../report/report.rst", category="Report"),
        md="reports/report.md",
    params:
        tables=TABLES,
        figures=layout.FIGURES,
        benchmarks=layout.BENCHMARKS,
        settings=stages.param_values("report", P),
    log: "logs/report.log"
    threads: 1
    resources: mem_mb=2000, runtime=20
    shell:
        "softmoe report --params {PARAMS} --tables {params.tables} --figures {params.figures}"
        " --benchmarks {params.benchmarks} --html {output.html} --md {output.md} > {log} 2>&1"
