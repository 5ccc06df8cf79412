"""What the study is: params.yaml loaded and checked (params, params.schema.yaml), where every
output lives (layout), the shared arithmetic of k, seeds and losses (stats) and the paper's
reference numbers (paper)."""
