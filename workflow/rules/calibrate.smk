# Steps vs epochs (docs/study.md §7): models of the grid trained for the paper's epochs.
rule calibrate:
    message: "Calibration: {wildcards.dataset} n={wildcards.n} seed {wildcards.seed} for the paper's epochs"
    input:
        data=layout.DATA,
        code=stages.code("calibrate"),
    output:
        selection=layout.CALIBRATION + "/selection.csv",
        model=layout.CALIBRATION + "/model.safetensors",
        metrics=layout.CALIBRATION + "/metrics.json",
        curves=layout.CALIBRATION + "/curves.csv",
    params:
        out=layout.CALIBRATION,
        settings=stages.param_values("calibrate", P),
    log: "logs/calibrate/{dataset}/n{n}-s{seed}.log"
    benchmark: layout.BENCHMARKS + "/calibrate/{dataset}/n{n}-s{seed}.tsv"
    threads: P["threads"]
    resources: mem_mb=4000, runtime=60
    shell:
        "softmoe calibrate --params {PARAMS} --data {input.data} --experts {wildcards.n}"
        " --seed {wildcards.seed} --out {params.out} --threads {threads} > {log} 2>&1"
