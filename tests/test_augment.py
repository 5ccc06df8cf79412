"""train.augment: timm (docs/astroformer.md): timm's training transforms per image, drawn from
(run seed, epoch, image index) alone. The view is a function of those three numbers, changes
every epoch, does not depend on the data-loader workers and leaves the run's random stream alone;
the default study is not augmented; a width-reduced Astroformer trained with it through the real
pipeline (prepare from CIFAR's own files -> train -> evaluate) resumes bit for bit."""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch.utils.data import DistributedSampler

from softmoe.data import datamodule, datasets
from softmoe.steps import evaluate, train
from softmoe.study.params import ParamsError, Study, load, load_study, validate
from test_astroformer import cifar_params  # noqa: F401  (fixture)
from test_data import _datamodule, _FakeTrainer
from test_train import Crash, _crash_at, _metrics, _same_weights

ROOT = Path(__file__).resolve().parents[1]


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_view_is_a_function_of_seed_epoch_and_index():
    image, augment = _image(), datamodule.TimmAugment(48, seed=0)
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    view = augment(image, 2, 7)
    assert view.dtype == torch.uint8 and view.shape == (3, 48, 48)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    torch.manual_seed(123)                                 # the global generators play no part
    random.seed(123)
    assert torch.equal(datamodule.TimmAugment(48, seed=0)(image, 2, 7), view)
    others = [augment(image, 2, 8), datamodule.TimmAugment(48, seed=1)(image, 2, 7)]
    assert not any(torch.equal(view, other) for other in others)


def test_every_epoch_gives_another_view():
    image, augment = _image(1), datamodule.TimmAugment(48, seed=0)
    views = [augment(image, epoch, 3) for epoch in range(8)]
    assert all(not torch.equal(a, b) for i, a in enumerate(views) for b in views[i + 1:])


def _prepared(params: dict, tmp_path: Path) -> Path:
    out = tmp_path / "data" / "cifar10"
    datasets.prepare(Study.of(params).datasets, "cifar10", out)
    return out


def _epoch(params: dict, prepared: Path, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    dm = _datamodule(params, prepared)
    dm.trainer = _FakeTrainer(1, 0)
    dm.setup()
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return list(loader)


def test_augmented_batches_do_not_depend_on_workers_and_test_split_is_untouched(cifar_params, tmp_path):
    p = cifar_params
    assert p["train"]["augment"] == "timm"                 # config/cifar10.yaml
    prepared = _prepared(p, tmp_path)
    alone = _epoch(p, prepared, 1)
    assert [x.shape for x, _ in alone] == [(4, 3, 48, 48)] * 5          # views at the model's size
    p["train"]["num_workers"] = 2
    for (x, y), (xw, yw) in zip(alone, _epoch(p, prepared, 1), strict=True):
        assert torch.equal(x, xw) and torch.equal(y, yw)
    p["train"]["shuffle"] = False                          # the same images in both epochs
    first, second = _epoch(p, prepared, 1), _epoch(p, prepared, 2)
    assert all(torch.equal(a[1], b[1]) and not torch.equal(a[0], b[0]) for a, b in zip(first, second))
    dm = _datamodule(p, prepared)
    dm.setup()
    images, _ = datasets.load_split(prepared, "test")
    assert torch.equal(next(iter(dm.test_dataloader()))[0], images[:4])


def test_default_study_is_not_augmented_cifar_is_and_other_values_are_refused(mnist5k):
    params = load_study(ROOT / "params.yaml")
    assert "augment" not in params.train.raw and params.train.augment == "none"
    dm = datamodule.ImageDataModule(params.train, params.model, params.dataset_entry, mnist5k, 0)
    dm.setup()
    assert type(dm.train_set) is datamodule.InMemoryImages
    assert type(dm.train_dataloader().sampler) is DistributedSampler
    for name in ("cifar10", "cifar100"):
        assert load_study(ROOT / "params.yaml", [ROOT / f"config/{name}.yaml"]).train.augment == "timm"
    raw = load(ROOT / "params.yaml")
    raw["train"]["augment"] = "randaug"
    with pytest.raises(ParamsError, match=r"key 'train.augment': 'randaug'.*\['none', 'timm'\]"):
        validate(raw)


def test_tiny_astroformer_trains_on_views_and_resumes_bitwise(cifar_params, tmp_path, monkeypatch):
    cifar_params["train"]["max_steps"] = 10                # 2 epochs of 5 batches of 4
    p = Study.of(cifar_params)
    prepared = _prepared(cifar_params, tmp_path)
    args = (p.train, p.model, p.dataset_entry, prepared, 4, 0)
    sizes, epochs = [], []
    step, fetch = train.Classifier.training_step, datamodule.AugmentedImages.__getitems__

    def recording_step(self, batch, batch_idx):
        sizes.append(batch[0].shape[-1])
        return step(self, batch, batch_idx)

    def recording_fetch(self, keys):
        epochs.extend(epoch for epoch, _ in keys)
        return fetch(self, keys)
    monkeypatch.setattr(train.Classifier, "training_step", recording_step)
    monkeypatch.setattr(datamodule.AugmentedImages, "__getitems__", recording_fetch)
    straight = train.train_run(*args, tmp_path / "straight")
    assert straight["steps"] == 10 and sizes == [48] * 10   # trained on the 48-px views
    assert epochs == [0] * 20 + [1] * 20                    # of the epoch they were drawn in
    monkeypatch.undo()
    _crash_at(monkeypatch, 7)                              # mid-epoch 2: resumes from step 5
    with pytest.raises(Crash):
        train.train_run(*args, tmp_path / "killed")
    assert torch.load(tmp_path / "killed/checkpoints/last.ckpt", weights_only=True)["global_step"] == 5
    monkeypatch.undo()
    train.train_run(*args, tmp_path / "killed")
    assert _same_weights(tmp_path / "straight", tmp_path / "killed")
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "killed")
    assert (tmp_path / "straight/model.safetensors").read_bytes() == \
        (tmp_path / "killed/model.safetensors").read_bytes()
    evaluate.evaluate_run(p.evaluate, p.train, p.model, p.dataset_entry, prepared,
                          tmp_path / "straight", tmp_path / "selection.csv")
    table = pd.read_csv(tmp_path / "selection.csv")
    assert table[table.method == "all"].accuracy.iloc[0] == pytest.approx(straight["test_accuracy"])
