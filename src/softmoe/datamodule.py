"""The LightningDataModule of a prepared dataset and its two kinds of Dataset.

Prepared CIFAR/MNIST splits are held in memory (`InMemoryImages`: a batch is one indexing op);
an ImageNet ImageFolder is read file by file (`ImageFolderImages`). Only training imports this
module: data.py (prepare, manifests, splits, model inputs) stays free of Lightning.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from softmoe.data import _imagefolder_split, load_split, read_manifest, vit_img_size
from softmoe.errors import UserError
from softmoe.vision import import_torchvision

import_torchvision()  # before Lightning, which imports torchvision through torchmetrics
import lightning.pytorch as pl  # noqa: E402


class InMemoryImages(Dataset):
    """Images and labels held as tensors; a whole batch is one indexing op (`__getitems__`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.long)
        return self.images[idx], self.labels[idx]


def _whole_batch(batch):
    """collate_fn for InMemoryImages: `__getitems__` already returns the batch."""
    return batch


class ImageFolderImages(Dataset):
    """An ImageFolder split checked against the manifest, yielding uint8 (C, S, S) tensors with
    the standard transforms (train: random resized crop + flip; test: resize + center crop)."""

    def __init__(self, root: Path, split: str, manifest: dict, img_size: int, train: bool):
        tv = import_torchvision()
        t = tv.transforms
        crop = ([t.RandomResizedCrop(img_size), t.RandomHorizontalFlip()] if train else
                [t.Resize(math.floor(img_size / 0.875)), t.CenterCrop(img_size)])
        self.folder = _imagefolder_split(root, split)
        self.folder.transform = t.Compose([*crop, t.PILToTensor()])
        _check_folder(self.folder, root, manifest)

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        return self.folder[i]


def _check_folder(folder, root: Path, manifest: dict) -> None:
    """Refuse an ImageFolder whose files or sizes differ from the manifest written by prepare."""
    for path, label in folder.samples:
        rel = Path(path).relative_to(root).as_posix()
        entry = manifest["files"].get(rel)
        if entry is None or entry["label"] != label or entry["size"] != Path(path).stat().st_size:
            raise UserError(f"{path}: not as listed in the manifest (new, changed or relabelled "
                            f"file); rerun `softmoe prepare --dataset imagenet`")
    listed = sum(1 for rel in manifest["files"] if rel.startswith(Path(folder.root).name + "/"))
    if listed != len(folder.samples):
        raise UserError(f"{folder.root}: {listed - len(folder.samples)} files listed in the "
                        "manifest are missing; restore them or rerun `softmoe prepare --dataset imagenet`")


class ImageDataModule(pl.LightningDataModule):
    """Train and test splits of a prepared dataset for one (n, seed) run.

    params.train.batch_size is the GLOBAL batch: each of the world's processes loads
    batch_size / world_size, so the same params give the same optimization on 1 or k devices.
    Shuffling is a DistributedSampler seeded with the run's seed: epoch e uses the permutation
    of (seed + e), so a run resumed at an epoch boundary sees the same batches. With mixup or
    cutmix the last incomplete batch is dropped (timm's Mixup needs an even batch). The test
    split is read in order, whole, by every process (also as the per-epoch validation set)."""

    def __init__(self, params: dict, data_dir: Path, seed: int):
        super().__init__()
        self.params, self.data_dir, self.seed = params, Path(data_dir), seed
        self.manifest = read_manifest(self.data_dir, params)
        self.train_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def num_classes(self) -> int:
        return self.manifest["num_classes"]

    @property
    def in_chans(self) -> int:
        shape = self.manifest["image_shape"]
        return shape[0] if shape else 3

    @property
    def in_memory(self) -> bool:
        return self.manifest["source"] != "imagefolder"

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.in_memory:
            self.train_set = InMemoryImages(*load_split(self.data_dir, "train", self.params))
            self.test_set = InMemoryImages(*load_split(self.data_dir, "test", self.params))
            return
        root = Path(self.manifest["params"]["root"])
        size = vit_img_size(self.params)
        self.train_set = ImageFolderImages(root, "train", self.manifest, size, train=True)
        self.test_set = ImageFolderImages(root, "test", self.manifest, size, train=False)

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_device_batch(self) -> int:
        batch, (world, _) = self.params["train"]["batch_size"], self._world()
        if batch % world:
            raise UserError(f"key 'train.batch_size': {batch} is the global batch and must be "
                            f"divisible by the {world} processes (devices x num_nodes)")
        t = self.params["train"]
        if (t.get("mixup") or t.get("cutmix")) and (batch // world) % 2:
            raise UserError(f"key 'train.batch_size': mixup/cutmix needs an even batch per process, "
                            f"got {batch} / {world} = {batch // world}")
        return batch // world

    def _loader(self, dataset: Dataset, sampler=None, drop_last: bool = False) -> DataLoader:
        collate = _whole_batch if self.in_memory else None
        # Its own generator: creating an iterator then draws its worker base seed from there, not
        # from the global RNG that dropout and mixup use (Lightning creates iterators a different
        # number of times in a resumed run than in an uninterrupted one).
        return DataLoader(dataset, batch_size=self.per_device_batch(), sampler=sampler,
                          num_workers=self.params["train"].get("num_workers", 0), collate_fn=collate,
                          drop_last=drop_last, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        sampler = DistributedSampler(self.train_set, num_replicas=world, rank=rank, seed=self.seed,
                                     shuffle=self.params["train"].get("shuffle", True))
        t = self.params["train"]
        return self._loader(self.train_set, sampler, drop_last=bool(t.get("mixup") or t.get("cutmix")))

    def val_dataloader(self) -> DataLoader:
        """The test split: evaluated after every epoch for the curves, never to pick weights."""
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
