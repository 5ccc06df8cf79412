# Not part of `all`: `snakemake --cores all bench` runs the benchmark suite on its own.
rule bench:
    output:
        json="reports/benchmarks.json",
        md="reports/benchmarks.md",
    log:
        "logs/bench.log",
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    message:
        "Benchmarks: layer formulations, selective inference, throughput, workflow overhead"
    shell:
        "softmoe bench --out {output.json} --md {output.md} --threads 1 > {log} 2>&1"
