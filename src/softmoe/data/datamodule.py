"""The LightningDataModule of a prepared dataset, its Datasets and the training augmentation.

Prepared CIFAR/MNIST splits are held in memory (`InMemoryImages`: a batch is one indexing op);
an ImageNet ImageFolder is read file by file (`ImageFolderImages`). Only training imports this
module: datasets.py (prepare, manifests, splits, model inputs) stays free of Lightning.

`train.augment: timm` gives every training image of an in-memory split timm's training
transforms, drawn from (run seed, epoch, image index) alone (`TimmAugment`): the sampler hands
the dataset (epoch, index) keys (`EpochKeySampler`), so the views do not depend on the number
of data-loader workers, and a run resumed at an epoch boundary sees the same views as an
uninterrupted one. The test split is never augmented.
"""
from __future__ import annotations

import math
import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from softmoe.data.datasets import imagefolder_split, load_split, read_manifest, train_order
from softmoe.base.errors import UserError
from softmoe.study.params import Dataset as Entry, Model, Train
from softmoe.base.vision import import_torchvision

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


# ---- per-image training augmentation (train.augment) ----------------------------------------
class TimmAugment:
    """timm's training transforms of one uint8 (C, H, W) image, as timm's train.py builds them
    with its defaults (the paper's CIFAR command sets none): `timm.data.create_transform(size,
    is_training=True, interpolation="random")` = random resized crop to size x size (scale
    0.08-1, ratio 3/4-4/3, bilinear or bicubic), horizontal flip (p 0.5), colour jitter 0.4
    (brightness, contrast, saturation), applied to the tensor (no PIL round trip).

    timm's transforms draw from Python's `random` and torch's CPU generator; both are seeded
    from (seed, epoch, index) for the one image and restored afterwards, so the view is a
    function of those three numbers and the run's own random stream (dropout, mixup) is
    untouched."""

    def __init__(self, size: int, seed: int):
        import_torchvision()
        from timm.data import create_transform

        # use_prefetcher: no ToTensor/Normalize at the end (model_inputs normalizes).
        self.transform = create_transform(size, is_training=True, interpolation="random",
                                          use_prefetcher=True)
        self.seed = seed

    def __call__(self, image: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        with _seeded(image_seed(self.seed, epoch, index)):
            return self.transform(image)


def image_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for one image's view, mixed from (run seed, epoch, index) by numpy's
    SeedSequence (distinct keys give unrelated streams)."""
    low, high = np.random.SeedSequence((seed, epoch, index)).generate_state(2)
    return int(low) | int(high) << 32


@contextmanager
def _seeded(seed: int):
    """Python's `random` and torch's CPU generator seeded with `seed` inside, restored after."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


class AugmentedImages(InMemoryImages):
    """A training split held in memory whose items are keyed by (epoch, index): each image is
    augmented by `augment(image, epoch, index)` (the sampler is an EpochKeySampler)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: TimmAugment):
        super().__init__(images, labels)
        self.augment = augment

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        return self.augment(self.images[i], epoch, i), self.labels[i]

    def __getitems__(self, keys: list[tuple[int, int]]):
        idx = torch.as_tensor([i for _, i in keys], dtype=torch.long)
        views = [self.augment(self.images[i], epoch, i) for epoch, i in keys]
        return torch.stack(views), self.labels[idx]


class EpochKeySampler(DistributedSampler):
    """DistributedSampler yielding (epoch, index) keys: the epoch set by Lightning travels with
    every index to the dataset, also into data-loader worker processes."""

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, i) for i in super().__iter__())


class ImageFolderImages(Dataset):
    """An ImageFolder split checked against the manifest, yielding uint8 (C, S, S) tensors with
    the standard transforms (train: random resized crop + flip; test: resize + center crop)."""

    def __init__(self, root: Path, split: str, manifest: dict, img_size: int, train: bool):
        tv = import_torchvision()
        t = tv.transforms
        crop = ([t.RandomResizedCrop(img_size), t.RandomHorizontalFlip()] if train else
                [t.Resize(math.floor(img_size / 0.875)), t.CenterCrop(img_size)])
        self.folder = imagefolder_split(root, split)
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

    train.batch_size is the GLOBAL batch: each of the world's processes loads
    batch_size / world_size, so the same params give the same optimization on 1 or k devices.
    Shuffling is a DistributedSampler seeded with the run's seed: epoch e uses the permutation
    of (seed + e), so a run resumed at an epoch boundary sees the same batches. With mixup or
    cutmix the last incomplete batch is dropped (timm's Mixup needs an even batch). With
    train.augment other than none, the training images are augmented per image (see the
    module doc). The test split is read in order, whole, by every process (also as the per-epoch
    validation set)."""

    def __init__(self, train: Train, model: Model, entry: Entry, data_dir: Path, seed: int,
                 order: dict | None = None):
        super().__init__()
        self.train, self.model, self.entry = train, model, entry
        self.data_dir, self.seed = Path(data_dir), seed
        self.order = order    # {order_seed, train_subset}: a fixed order / nested subset (data.train_order)
        self.manifest = read_manifest(self.data_dir, entry)
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
            images, labels = load_split(self.data_dir, "train", self.entry)
            if self.order:
                idx = torch.from_numpy(train_order(len(labels), self.order.get("order_seed", 0),
                                                   self.order.get("train_subset")))
                images, labels = images[idx], labels[idx]
            self.train_set = self._train_images(images, labels)
            self.test_set = InMemoryImages(*load_split(self.data_dir, "test", self.entry))
            return
        if self.order:
            raise UserError(f"key 'data' of a hypothesis: a fixed order or subset applies to datasets "
                            f"held in memory, not to the ImageFolder tree of {self.entry.name}")
        if self.train.augment != "none":
            raise UserError(f"key 'train.augment'': {self.train.augment!r} applies to datasets held "
                            f"in memory; the ImageFolder train split of {self.entry.name} already "
                            "gets a random resized crop and flip: set `augment: none`")
        root = Path(self.manifest["params"]["root"])
        size = self.model.img_size
        self.train_set = ImageFolderImages(root, "train", self.manifest, size, train=True)
        self.test_set = ImageFolderImages(root, "test", self.manifest, size, train=False)

    def _train_images(self, images: torch.Tensor, labels: torch.Tensor) -> InMemoryImages:
        """The in-memory training split, augmented per image unless train.augment is none; the
        views have the model's input size (the image's own size for the MNIST model)."""
        if self.train.augment == "none":
            return InMemoryImages(images, labels)
        size = self.model.img_size or images.shape[-1]
        return AugmentedImages(images, labels, TimmAugment(size, self.seed))

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def per_device_batch(self) -> int:
        t, (world, _) = self.train, self._world()
        batch = t.batch_size
        if batch % world:
            raise UserError(f"key 'train.batch_size': {batch} is the global batch and must be "
                            f"divisible by the {world} processes (devices x num_nodes)")
        if (t.mixup or t.cutmix) and (batch // world) % 2:
            raise UserError(f"key 'train.batch_size': mixup/cutmix needs an even batch per process, "
                            f"got {batch} / {world} = {batch // world}")
        return batch // world

    def _loader(self, dataset: Dataset, sampler=None, drop_last: bool = False) -> DataLoader:
        collate = _whole_batch if self.in_memory else None
        # Its own generator: creating an iterator then draws its worker base seed from there, not
        # from the global RNG that dropout and mixup use (Lightning creates iterators a different
        # number of times in a resumed run than in an uninterrupted one).
        return DataLoader(dataset, batch_size=self.per_device_batch(), sampler=sampler,
                          num_workers=self.train.num_workers, collate_fn=collate,
                          drop_last=drop_last, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        augmented = isinstance(self.train_set, AugmentedImages)
        sampler = (EpochKeySampler if augmented else DistributedSampler)(
            self.train_set, num_replicas=world, rank=rank, seed=self.seed, shuffle=self.train.shuffle)
        return self._loader(self.train_set, sampler,
                            drop_last=bool(self.train.mixup or self.train.cutmix))

    def val_dataloader(self) -> DataLoader:
        """The test split: evaluated after every epoch for the curves, never to pick weights."""
        return self.test_dataloader()

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
