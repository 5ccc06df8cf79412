"""The model math: the Soft MoE layer (layer, docs/study.md §2), Algorithm 1/2 and the
baselines (selection), the models built on the layer (models, astroformer) and model files
(modelfile: build, save, load without the training loop)."""
