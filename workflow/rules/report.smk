rule claims:
    input:
        tables=TABLE_FILES,
        latency=rules.latency.output,
        gpu=GPU_BENCHMARKS,
        code=stages.code("claims"),
    output:
        claims=layout.CLAIMS,
        discrepancies=layout.DISCREPANCIES.format(dataset=DATASET),
    log:
        "logs/claims.log",
    benchmark:
        f"{layout.BENCHMARKS}/claims/{DATASET}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        files=PARAMS_OPTIONS,
        tables=lambda wildcards, input: os.path.dirname(input.tables[0]),
        # the path whether or not the file exists: `softmoe claims` reads it when present
        gpu=lambda wildcards, input: input.gpu or layout.GPU_BENCHMARKS,
    message:
        "Judging the paper's claims on the tables"
    shell:
        "softmoe claims {params.files} --tables {params.tables} --gpu {params.gpu}"
        " --out {output.claims} --discrepancies {output.discrepancies} > {log} 2>&1"


rule figures:
    input:
        tables=TABLE_FILES,
        latency=rules.latency.output,
        code=stages.code("figures"),
    output:
        report(
            directory(layout.FIGURES),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/figures.log",
    benchmark:
        f"{layout.BENCHMARKS}/figures/{DATASET}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        files=PARAMS_OPTIONS,
        tables=lambda wildcards, input: os.path.dirname(input.tables[0]),
    message:
        "Drawing every figure from the tables"
    shell:
        "softmoe figures {params.files} --tables {params.tables} --out {output} > {log} 2>&1"


rule report:
    input:
        figures=rules.figures.output,
        summary=rules.summarize.output,
        claims=rules.claims.output.claims,
        discrepancies=rules.claims.output.discrepancies,
        tables=TABLE_FILES,
        latency=rules.latency.output,
        models=[str(d / "model.safetensors") for d in layout.train_dirs(STUDY)],
        hypotheses=layout.HYPOTHESES,
        code=stages.code("report"),
    output:
        html=report(
            "reports/report.html", caption="../report/report.rst", category="Report"
        ),
        md="reports/report.md",
    log:
        "logs/report.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        files=PARAMS_OPTIONS,
        tables=lambda wildcards, input: os.path.dirname(input.tables[0]),
        figures=lambda wildcards, input: input.figures,
        benchmarks=layout.BENCHMARKS,
        hashed=" ".join(f"--hash {h}" for h in HASHED),
        settings=stages.param_values("report", P),
    message:
        "Writing the audit-ready report"
    shell:
        "softmoe report {params.files} --tables {params.tables} --figures {params.figures}"
        " --claims {input.claims} --benchmarks {params.benchmarks} {params.hashed}"
        " --html {output.html} --md {output.md} > {log} 2>&1"


rule crate:
    input:
        report=rules.report.output,
        claims=rules.claims.output.claims,
        code=stages.code("crate"),
    output:
        layout.CRATE,
    log:
        "logs/crate.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        files=PARAMS_OPTIONS,
        hashed=" ".join(f"--hash {h}" for h in CRATE_HASHED),
    message:
        "Describing the run as a Workflow Run RO-Crate, checked offline with roc-validator"
    shell:
        "softmoe crate {params.files} --claims {input.claims} {params.hashed}"
        " --out {output} --validate > {log} 2>&1"
