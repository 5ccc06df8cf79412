"""Dataset sources, prepare + manifests, model inputs, the DataModule's sampling, synthetic batches.

The torchvision loaders are tested offline with small files written here in each dataset's own
on-disk format: MNIST/FashionMNIST idx-ubyte files, CIFAR pickled batches (the official CIFAR
format; torchvision unpickles it and checks fixed md5 sums, which we point at the files written
here by patching the classes' checksum lists — the integrity check itself still runs), and an
ImageFolder tree of PNGs for imagenet.
"""
from __future__ import annotations

import copy
import hashlib
import json
import pickle
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from softmoe.data import datamodule, datasets
from softmoe.base.errors import UserError
from softmoe.study.params import Study
from softmoe.base.vision import import_torchvision

ROOT = Path(__file__).resolve().parents[1]
TV = import_torchvision()


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def _inputs(images: torch.Tensor, params: dict) -> torch.Tensor:
    study = Study.of(params)
    return datasets.model_inputs(images, study.train, study.model)


def _datamodule(params: dict, data_dir: Path, seed: int = 0) -> datamodule.ImageDataModule:
    """The DataModule of one run on data_dir under params (a mapping, typed here)."""
    study = Study.of(params)
    return datamodule.ImageDataModule(study.train, study.model, study.dataset_entry, data_dir, seed)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- mnist5k: the seeded stratified split ---------------------------------------------------
def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(10), [500, 480, 520, 500, 500, 500, 500, 490, 510, 500])
    train, test = datasets.stratified_split(labels, 4000, 1000, seed=0)
    again = datasets.stratified_split(labels, 4000, 1000, seed=0)
    other = datasets.stratified_split(labels, 4000, 1000, seed=1)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    assert not np.array_equal(test, other[1])
    assert len(train) == 4000 and len(test) == 1000 and not set(train) & set(test)
    share = np.bincount(labels[test], minlength=10) / np.bincount(labels, minlength=10)
    assert np.all(np.abs(share - 0.2) <= 1 / 480)          # each class within one image of 20%


def test_stratified_split_refuses_more_than_exists():
    with pytest.raises(UserError, match="train_size"):
        datasets.stratified_split(np.zeros(10, dtype=int), 8, 3, seed=0)


def test_prepare_mnist5k_is_deterministic_and_balanced(mnist5k, params, tmp_path):
    manifest = json.loads((mnist5k / "manifest.json").read_text())
    assert manifest["splits"]["train"] == {"size": 4000, "class_counts": [400] * 10}
    assert manifest["splits"]["test"] == {"size": 1000, "class_counts": [100] * 10}
    assert manifest["image_shape"] == [1, 28, 28] and manifest["num_classes"] == 10
    assert manifest["params"] == params["datasets"]["mnist5k"]
    for name, digest in manifest["files"].items():
        assert _sha(mnist5k / name) == digest
    datasets.prepare(Study.of(params).datasets, "mnist5k", tmp_path)       # same params -> the same bytes
    assert json.loads((tmp_path / "manifest.json").read_text())["files"] == manifest["files"]
    images, labels = datasets.load_split(mnist5k, "train", Study.of(params).dataset_entry)
    assert images.dtype == torch.uint8 and images.shape == (4000, 1, 28, 28)
    assert labels.dtype == torch.int64 and 30 < images.float().mean() < 50   # real MNIST ink


def test_train_and_test_images_are_distinct(mnist5k):
    train, _ = datasets.load_split(mnist5k, "train")
    test, _ = datasets.load_split(mnist5k, "test")
    keys = {bytes(x.numpy()) for x in train}
    assert len(keys) == 4000 and not any(bytes(x.numpy()) in keys for x in test)


# ---- manifest checks -----------------------------------------------------------------------
def _copy_prepared(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupted_byte_is_refused(mnist5k, tmp_path):
    folder = _copy_prepared(mnist5k, tmp_path / "d")
    raw = bytearray((folder / "test.safetensors").read_bytes())
    raw[-100] ^= 0xFF
    (folder / "test.safetensors").write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"test\.safetensors: sha256 differs.*softmoe prepare"):
        datasets.load_split(folder, "test")
    datasets.load_split(folder, "train")                         # the intact file still loads


def test_missing_and_unreadable_manifest_are_refused(mnist5k, tmp_path):
    with pytest.raises(UserError, match=r"manifest\.json: not found.*softmoe prepare"):
        datasets.load_split(tmp_path, "train")
    folder = _copy_prepared(mnist5k, tmp_path / "d")
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted manifest"):
        datasets.load_split(folder, "train")


def test_manifest_that_lies_about_sizes_is_refused(mnist5k, tmp_path):
    folder = _copy_prepared(mnist5k, tmp_path / "d")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["train"]["size"] = 3999
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="4000 images and 4000 labels, manifest says 3999"):
        datasets.load_split(folder, "train")


def test_stale_data_is_refused(mnist5k, params):
    params["datasets"]["mnist5k"]["split_seed"] = 1
    with pytest.raises(UserError, match=r"stale data.*softmoe prepare"):
        datasets.load_split(mnist5k, "train", Study.of(params).dataset_entry)
    params["dataset"] = "mnist"
    with pytest.raises(UserError, match="prepared for dataset 'mnist5k'"):
        datasets.read_manifest(mnist5k, Study.of(params).dataset_entry)


# ---- torchvision sources, offline ----------------------------------------------------------
def _idx(path: Path, array: np.ndarray) -> None:
    """Write an idx-ubyte file (big-endian dims after a magic of dtype 0x08 and rank)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist_like(root: Path, folder: str, rng) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {"train": (rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 10, 12)),
              "t10k": (rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 10, 6))}
    for prefix, (images, labels) in arrays.items():
        _idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return {"train": arrays["train"], "test": arrays["t10k"]}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_cifar_like(root: Path, dataset: str, rng, monkeypatch) -> dict:
    """CIFAR's own format: pickled dicts of uint8 rows (3072 = R, G, B planes of 32x32)."""
    cls = TV.datasets.CIFAR10 if dataset == "cifar10" else TV.datasets.CIFAR100
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    key = "labels" if dataset == "cifar10" else "fine_labels"
    classes = 10 if dataset == "cifar10" else 100
    splits = {"train": [], "test": []}
    for (name, _), split in [(entry, "train") for entry in cls.train_list] + [(cls.test_list[0], "test")]:
        rows, labels = rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, classes, 4)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rows, key: labels.tolist()}, f)
        splits[split].append((rows.reshape(-1, 3, 32, 32), labels))
    with open(folder / cls.meta["filename"], "wb") as f:
        pickle.dump({cls.meta["key"]: [f"class{i}" for i in range(classes)]}, f)
    md5 = lambda name: _md5(folder / name)                  # noqa: E731
    monkeypatch.setattr(cls, "train_list", [[n, md5(n)] for n, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n, md5(n)] for n, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5(cls.meta["filename"])})
    return {s: (np.concatenate([r for r, _ in v]), np.concatenate([l for _, l in v]))
            for s, v in splits.items()}


def _torchvision_datasets(params: dict, dataset: str, root: Path, download: bool = False) -> dict:
    """params.datasets (typed) with `dataset` read through torchvision from root."""
    params["datasets"][dataset] = {"source": "torchvision", "root": str(root), "download": download}
    return Study.of(params).datasets


@pytest.mark.parametrize("dataset, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_like_loader_reads_idx_files(params, tmp_path, dataset, folder):
    written = _write_mnist_like(tmp_path / "raw", folder, np.random.default_rng(0))
    out = tmp_path / "prepared"
    datasets.prepare(_torchvision_datasets(params, dataset, tmp_path / "raw"), dataset, out)
    for split, (images, labels) in written.items():
        got_images, got_labels = datasets.load_split(out, split)
        assert torch.equal(got_images, torch.from_numpy(images.astype(np.uint8)).unsqueeze(1))
        assert torch.equal(got_labels, torch.from_numpy(labels.astype(np.int64)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["image_shape"] == [1, 28, 28] and manifest["splits"]["test"]["size"] == 6


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_loader_reads_pickled_batches(params, tmp_path, monkeypatch, dataset):
    written = _write_cifar_like(tmp_path / "raw", dataset, np.random.default_rng(1), monkeypatch)
    out = tmp_path / "prepared"
    datasets.prepare(_torchvision_datasets(params, dataset, tmp_path / "raw"), dataset, out)
    for split, (images, labels) in written.items():
        got_images, got_labels = datasets.load_split(out, split)
        assert torch.equal(got_images, torch.from_numpy(images))       # (N, 3, 32, 32), RGB planes
        assert torch.equal(got_labels, torch.from_numpy(labels.astype(np.int64)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_classes"] == (10 if dataset == "cifar10" else 100)
    assert manifest["splits"]["train"]["size"] == (20 if dataset == "cifar10" else 4)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_offline_without_local_copy_is_one_clear_error(params, tmp_path, dataset):
    root = tmp_path / "nothing-here"
    with pytest.raises(UserError) as err:
        datasets.prepare(_torchvision_datasets(params, dataset, root), dataset, tmp_path / "out")
    message = str(err.value)
    assert f"dataset {dataset!r}" in message and str(root) in message
    assert "put the files there" in message and "mnist5k" in message
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_failed_download_names_the_download(params, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "mnist"
    with pytest.raises(UserError, match=r"download failed and no usable copy in .*mnist.*mnist5k"):
        datasets.prepare(_torchvision_datasets(params, "mnist", root, download=True), "mnist", tmp_path / "o")


# ---- imagenet: ImageFolder, manifest only --------------------------------------------------
def _png_tree(root: Path, rng) -> None:
    from PIL import Image
    for split, count in (("train", 3), ("val", 2)):
        for cls in ("cat", "dog"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def _imagenet_params(params: dict, root: Path) -> dict:
    params["dataset"] = "imagenet"
    params["datasets"]["imagenet"] = {"source": "imagefolder", "root": str(root)}
    params["model"] = {"kind": "vit", "img_size": 16}
    params["train"].update(batch_size=4, normalize_mean=[0.5, 0.5, 0.5], normalize_std=[0.25] * 3)
    return params


def test_imagefolder_manifest_lists_files_and_datamodule_reads_them(params, tmp_path):
    root = tmp_path / "imagenet"
    _png_tree(root, np.random.default_rng(2))
    p = _imagenet_params(params, root)
    out = tmp_path / "prepared"
    datasets.prepare(Study.of(p).datasets, "imagenet", out)
    assert sorted(f.name for f in out.iterdir()) == ["manifest.json"]       # nothing copied
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["val/dog/1.png"] == {
        "size": (root / "val/dog/1.png").stat().st_size, "label": 1}
    assert manifest["splits"]["train"] == {"size": 6, "class_counts": [3, 3]}
    assert manifest["classes"] == ["cat", "dog"]
    dm = _datamodule(p, out)
    dm.setup()
    images, labels = next(iter(dm.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 16, 16)
    assert labels.tolist() == [0, 0, 1, 1]
    assert _inputs(images, p).shape == (4, 3, 16, 16)
    with pytest.raises(UserError, match="not held in memory"):
        datasets.load_split(out, "train")
    p["train"]["augment"] = "timm"
    with pytest.raises(UserError, match="train.augment.*held in memory.*augment: none"):
        _datamodule(p, out).setup()


def test_imagefolder_changes_after_prepare_are_refused(params, tmp_path):
    root = tmp_path / "imagenet"
    _png_tree(root, np.random.default_rng(3))
    p = _imagenet_params(params, root)
    datasets.prepare(Study.of(p).datasets, "imagenet", tmp_path / "prepared")
    with open(root / "train/cat/0.png", "ab") as f:
        f.write(b"extra")
    with pytest.raises(UserError, match=r"0\.png: not as listed in the manifest"):
        _datamodule(p, tmp_path / "prepared").setup()
    (root / "train/cat/0.png").unlink()
    with pytest.raises(UserError, match="1 files listed in the manifest are missing"):
        _datamodule(p, tmp_path / "prepared").setup()


def test_imagefolder_missing_is_one_clear_error(params, tmp_path):
    with pytest.raises(UserError, match=r"imagenet.*no ImageFolder tree.*mnist5k"):
        study = Study.of(_imagenet_params(params, tmp_path / "none"))
        datasets.prepare(study.datasets, "imagenet", tmp_path / "o")


# ---- model inputs, sampling, synthetic batches ---------------------------------------------
def test_model_inputs_normalize_with_params(params):
    images = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 1, 28, 28)
    x = _inputs(images, params)
    assert x.dtype == torch.float32
    assert torch.allclose(x[0], torch.full((1, 28, 28), -0.1307 / 0.3081))
    assert torch.allclose(x[1], torch.full((1, 28, 28), (1 - 0.1307) / 0.3081))
    params["train"]["normalize_mean"] = [0.5, 0.5]
    with pytest.raises(UserError, match="train.normalize_mean"):
        _inputs(images, params)


def test_model_inputs_resize_for_vit(params):
    params["model"] = {"kind": "vit", "img_size": 96}
    params["train"].update(normalize_mean=[0.5] * 3, normalize_std=[0.5] * 3)
    x = _inputs(torch.full((2, 3, 32, 32), 255, dtype=torch.uint8), params)
    assert x.shape == (2, 3, 96, 96) and torch.allclose(x, torch.ones_like(x))


class _FakeTrainer:
    def __init__(self, world_size, global_rank):
        self.world_size, self.global_rank = world_size, global_rank


def _batches(dm, world, rank, epoch):
    dm.trainer = _FakeTrainer(world, rank)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return [labels for _, labels in loader]


def test_shuffling_is_seeded_per_epoch_and_global_batch_is_split_across_ranks(mnist5k, params):
    dm = _datamodule(params, mnist5k)
    dm.setup()
    dm.train_set.labels = torch.arange(len(dm.train_set))       # identify every image
    single = _batches(dm, 1, 0, epoch=3)
    assert [len(b) for b in single] == [256] * 15 + [160]
    assert torch.equal(torch.cat(single).sort().values, torch.arange(4000))
    assert all(torch.equal(a, b) for a, b in zip(single, _batches(dm, 1, 0, epoch=3)))
    assert not torch.equal(single[0], _batches(dm, 1, 0, epoch=4)[0])
    ranks = [_batches(dm, 2, r, epoch=3) for r in (0, 1)]
    for i, batch in enumerate(single):                           # the same global batches
        both = torch.cat([ranks[0][i], ranks[1][i]])
        assert len(ranks[0][i]) == len(ranks[1][i])
        assert torch.equal(both.sort().values, batch.sort().values)
    params["train"]["batch_size"] = 255
    dm = _datamodule(params, mnist5k)
    dm.trainer = _FakeTrainer(2, 0)
    with pytest.raises(UserError, match="train.batch_size.*divisible by the 2 processes"):
        dm.per_device_batch()
    params["train"].update(batch_size=254, mixup=0.8)
    dm = _datamodule(params, mnist5k)
    dm.trainer = _FakeTrainer(2, 0)
    with pytest.raises(UserError, match="even batch per process, got 254 / 2 = 127"):
        dm.per_device_batch()


def test_synthetic_batch_distribution_and_labels():
    x, y = datasets.synthetic_batch(torch.Generator().manual_seed(0), 50_000, 5.0)
    assert x.shape == (50_000, 10) and y.shape == (50_000,)
    assert torch.allclose(y, x.norm(dim=1))
    assert abs(x.var().item() - 5.0) < 0.1 and abs(x.mean().item()) < 0.02
    x2, _ = datasets.synthetic_batch(torch.Generator().manual_seed(0), 50_000, 5.0)
    assert torch.equal(x, x2)


def test_unknown_dataset_entry_is_refused(params, tmp_path):
    params = copy.deepcopy(params)
    del params["datasets"]["cifar100"]
    with pytest.raises(UserError, match="datasets.cifar100"):
        datasets.prepare(Study.of(params).datasets, "cifar100", tmp_path)
