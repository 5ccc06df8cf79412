"""params.yaml validation: every invalid file stops with one message naming the key."""
import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from softmoe.study import params as P
from softmoe.cli import main

ROOT = Path(__file__).resolve().parents[1]
BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_and_paper_configs_are_valid(tmp_path, monkeypatch):
    P.validate(copy.deepcopy(BASE))
    for path in sorted((ROOT / "config").glob("*.yaml")):   # overlays of params.yaml
        params = P.merged(BASE, yaml.safe_load(path.read_text()))
        if params["dataset"] == "imagenet":  # needs a local ImageFolder tree
            (tmp_path / "train").mkdir()
            params["datasets"]["imagenet"]["root"] = str(tmp_path)
        P.validate(params, source=str(path))


def _mutate(path, value):
    params = copy.deepcopy(BASE)
    *parents, last = path.split(".")
    node = params
    for part in parents:
        node = node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return params


_DELETE = object()
CASES = [
    # (key, bad value, words the message must contain)
    ("bogus", 1, ["unknown key 'bogus'", "allowed keys"]),
    ("train.bogus", 1, ["unknown key 'train.bogus'", "lr"]),
    ("train.lr", "fast", ["train.lr", "not of type 'number'"]),
    ("train.lr", -1.0, ["train.lr"]),
    ("experts", [], ["experts", "non-empty"]),
    ("experts", [2, -4], ["experts.1"]),
    ("experts", [2, 1024], ["experts", "hidden width", "784"]),
    ("seeds", [], ["seeds"]),
    ("evaluate.absolute_k", [600], ["evaluate.absolute_k", "k must be at most n"]),
    ("evaluate.fractions", [1.5], ["evaluate.fractions.0"]),
    ("evaluate.random_seeds", [0], ["evaluate.random_seeds"]),
    ("model.kind", "resnet", ["model.kind", "allowed values", "mnist", "vit"]),
    ("dataset", "cifar10", ["model.kind", "vit"]),
    ("dataset", "svhn", ["dataset", "svhn"]),
    ("datasets.mnist5k", _DELETE, ["dataset", "mnist5k", "no entry"]),
    ("datasets.mnist.root", "/etc/mnist", ["datasets.mnist.root", "relative path"]),
    ("datasets.mnist.root", "../outside", ["datasets.mnist.root", "relative path"]),
    ("datasets.mnist.root", "data/../src/softmoe", ["datasets.mnist.root", "data/"]),
    ("datasets.mnist.root", "src/softmoe", ["datasets.mnist.root", "data/"]),
    ("datasets.mnist.root", ".git/objects", ["datasets.mnist.root", "data/"]),
    ("synthetic.tokenizations", ["3x3"], ["synthetic.tokenizations", "10"]),
    ("synthetic.experts", [1, 50], ["synthetic.experts", "hidden width"]),
    ("synthetic.variances", [], ["synthetic.variances", "non-empty"]),
    ("synthetic.variances", [5, -25], ["synthetic.variances.1"]),
    ("synthetic.variance", 5, ["unknown key 'synthetic.variance'", "variances"]),
    ("calibration", _DELETE, ["calibration"]),
    ("calibration.epochs", 0, ["calibration.epochs"]),
    ("calibration.experts", [16, 16], ["calibration.experts"]),
    ("train.batch_size", 0, ["train.batch_size"]),
    ("threads", "two", ["threads"]),
]


@pytest.mark.parametrize("key,value,words", CASES, ids=[c[0] + "=" + repr(c[1])[:12] for c in CASES])
def test_invalid_params_name_the_key(key, value, words):
    with pytest.raises(P.ParamsError) as err:
        P.validate(_mutate(key, value))
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_imagenet_root_must_exist(tmp_path):
    params = copy.deepcopy(BASE)
    params.update(dataset="imagenet", model={"kind": "vit"})
    params["datasets"]["imagenet"]["root"] = str(tmp_path / "nowhere")
    with pytest.raises(P.ParamsError, match="datasets.imagenet.root.*does not exist"):
        P.validate(params)


def test_yaml_is_parsed_without_code_execution(tmp_path):
    evil = tmp_path / "params.yaml"
    evil.write_text("!!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(P.ParamsError, match="not valid YAML"):
        P.load(evil)
    assert not (tmp_path / "pwned").exists()


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(_mutate("train.lr", "fast")))
    assert main(["validate", "--params", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lr" in err and "Traceback" not in err
    assert main(["validate", "--params", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_default_study_has_three_seeds_and_both_variances():
    assert len(BASE["seeds"]) >= 3 and BASE["synthetic"]["variances"] == [5, 25]


def test_k_values():
    """Evaluate.k_values delegates to stats.k_values (equal to the old rule: tests/test_stats.py)."""
    ev = dict(BASE["evaluate"], every_k=False, absolute_k=[1, 5])
    assert P.Evaluate.of(ev).k_values(8) == [1, 2, 4, 5]
    assert P.Evaluate.of(ev).k_values(2) == [1]
    assert P.Evaluate.of(dict(ev, every_k=True)).k_values(4) == [1, 2, 3]


def _schema_node(path: str) -> dict:
    """The schema object of a dotted section path ('' is the whole file, '$dataset' an entry)."""
    node = yaml.safe_load(P.SCHEMA_PATH.read_text())
    if path == "$dataset":
        return node["$defs"]["dataset"]
    for part in filter(None, path.split(".")):
        node = node["properties"][part]
    return node


SECTION_PATHS = {P.Study: "", P.Dataset: "$dataset", P.Model: "model", P.Train: "train",
                 P.Evaluate: "evaluate", P.Calibration: "calibration", P.Synthetic: "synthetic",
                 P.Latency: "latency", P.Wide: "latency.wide", P.Report: "report"}


def test_section_fields_are_the_schema_keys():
    """Each dataclass holds exactly its schema object's keys; required ones have no default."""
    assert set(SECTION_PATHS) == set(P.Section.__subclasses__())
    for cls, path in SECTION_PATHS.items():
        node = _schema_node(path)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "raw"
                  and not (cls is P.Dataset and f.name == "name")}      # the entry's key
        assert set(fields) == set(node["properties"]), cls.__name__
        required = {name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        assert required == set(node["required"]), cls.__name__


def test_study_holds_the_file_typed_and_raw():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "config").glob("*.yaml"))]:
        raw = yaml.safe_load(path.read_text())
        raw = raw if path.name == "params.yaml" else P.merged(BASE, raw)   # config/*.yaml: overlays
        study = P.Study.of(raw)
        assert study.raw is raw and study.train.raw is raw["train"] and study.model.raw is raw["model"]
        assert study.experts == tuple(raw["experts"]) and study.dataset_entry.raw is raw["datasets"][raw["dataset"]]
        assert all(entry.name == name for name, entry in study.datasets.items())
        for name, cls in P.SECTIONS.items():
            section = getattr(study, name)
            assert isinstance(section, cls)
            for key, value in raw[name].items():
                if key != "wide":
                    assert getattr(section, key) == P._frozen(value), (path, name, key)
        assert study.latency.wide == P.Wide.of(raw["latency"]["wide"])
        defaults = P.KIND_DEFAULTS.get(raw["model"]["kind"], {})
        assert study.model.options() == {k: P._frozen(raw["model"].get(k, v)) for k, v in defaults.items()}


def test_absent_keys_take_their_defaults():
    model = P.Model.of({"kind": "vit", "depth": 2})
    assert model.depth == 2 and model.embed_dim == P.VIT_DEFAULTS["embed_dim"] and model.depths is None
    assert P.Model.of({"kind": "mnist"}).options() == {}
    train = P.Train.of({k: BASE["train"][k] for k in _schema_node("train")["required"]})
    assert (train.weight_decay, train.mixup, train.accelerator, train.devices, train.shuffle) == (0.0, 0.0, "auto", 1, True)


def test_replaced_changes_fields_and_raw_alike():
    train = P.Study.of(copy.deepcopy(BASE)).train
    paper = train.replaced(max_steps=None, epochs=15)
    assert (paper.max_steps, paper.epochs) == (None, 15) and train.max_steps == BASE["train"]["max_steps"]
    assert paper.raw == dict(BASE["train"], max_steps=None, epochs=15) and list(paper.raw) == list(BASE["train"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.lr = 1.0


def test_load_study_validates(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump(_mutate("train.lr", "fast")))
    with pytest.raises(P.ParamsError, match="train.lr"):
        P.load_study(bad)
    assert P.load_study(ROOT / "params.yaml").raw == BASE
