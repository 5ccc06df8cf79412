# Steps vs epochs (docs/study.md §7): models of the grid trained for the paper's epochs.
rule calibrate:
    input:
        data=layout.DATA,
        code=stages.code("calibrate"),
    output:
        selection=f"{layout.CALIBRATION}/selection.csv",
        model=f"{layout.CALIBRATION}/model.safetensors",
        metrics=f"{layout.CALIBRATION}/metrics.json",
        curves=f"{layout.CALIBRATION}/curves.csv",
        timing=f"{layout.CALIBRATION}/timing.json",
    log:
        "logs/calibrate/{dataset}/n{n}-s{seed}.log",
    benchmark:
        f"{layout.BENCHMARKS}/calibrate/{{dataset}}/n{{n}}-s{{seed}}.tsv"
    threads: P["threads"]
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        files=PARAMS_OPTIONS,
        out=lambda wildcards, output: os.path.dirname(output.model),
        settings=stages.param_values("calibrate", P),
    message:
        "Calibration: {wildcards.dataset} n={wildcards.n} seed {wildcards.seed} for the paper's epochs"
    shell:
        "softmoe calibrate {params.files} --data {input.data} --experts {wildcards.n}"
        " --seed {wildcards.seed} --out {params.out} --threads {threads} > {log} 2>&1"
