rule latency:
    input:
        models=[
            str(d / "model.safetensors")
            for d in layout.train_dirs(STUDY, first_seed_only=True)
        ],
        code=stages.code("latency"),
    output:
        csv=f"{TABLES}/latency.csv",
        hardware=f"{TABLES}/hardware.json",
        rounds=f"{TABLES}/latency_rounds.csv",
    log:
        f"logs/latency/{DATASET}.log",
    benchmark:
        f"{layout.BENCHMARKS}/latency/{DATASET}.tsv"
    # all cores reserved so that no other job disturbs the timings; torch itself uses 1 thread
    threads: workflow.cores
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        files=PARAMS_OPTIONS,
        settings=stages.param_values("latency", P),
    message:
        "Timing the Soft MoE layers with only k experts running (alone on the machine)"
    shell:
        "softmoe latency {params.files} --out {output.csv} --hardware {output.hardware}"
        " --rounds {output.rounds} --threads 1 > {log} 2>&1"
