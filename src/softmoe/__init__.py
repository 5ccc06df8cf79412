"""Reproduction of "Beyond Parameter Count: Implicit Bias in Soft Mixture of Experts".

The package is split into rooms (docs/architecture.md, "Rooms"), one subpackage each: base,
study, provenance, model, data, statistics, experiments, workflow, bench, steps, audit and report.
What other code uses is importable from here, e.g. `from softmoe import SoftMoE, select_experts`:
the layer, Algorithm 1/2 and the baselines, the models, model files and the params loader. Each
name is imported from its room on first use, so `import softmoe` loads nothing else (no torch).
Code inside the package imports from the rooms, so that its dependencies stay visible.
"""
__version__ = "0.1.0"

PUBLIC = {
    "SoftMoE": "model.layer",
    "reference_forward": "model.layer",
    "select_experts": "model.selection",
    "expert_scores": "model.selection",
    "random_experts": "model.selection",
    "oracle_subsets": "model.selection",
    "MnistSoftMoE": "model.models",
    "SoftMoEViT": "model.models",
    "SoftMoEAstroformer": "model.astroformer",
    "count_parameters": "model.models",
    "build_model": "model.modelfile",
    "load_trained": "model.modelfile",
    "Study": "study.params",
    "load_study": "study.params",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str):
    """Import a public name from its room on first use (PEP 562)."""
    if name not in PUBLIC:
        raise AttributeError(f"module 'softmoe' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"softmoe.{PUBLIC[name]}"), name)
