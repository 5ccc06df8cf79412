"""The glue between steps, Snakemake and DVC: the results tables (tables, the tabulate step),
dvc.yaml generated and checked from the code (stages), and sharing through a DVC remote
(share)."""
