"""Datasets: CIFAR-10, CIFAR-100 (fine labels) and Flowers-102 through torchvision in their
official layouts, image-folder trees and .tar.gz archives of them, and synthetic data in the
official layouts (snp_service.synthetic). Also the CCT recipe's transforms and subsetting.

`prepare()` makes the data loadable (generate, extract or download: idempotent, cached, safe to
call from every Ray worker); `build_datasets()` returns the train and evaluation splits.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T

from snp_service import synthetic
from snp_service.errors import DatasetError
from snp_service.spec import DatasetSpec, resolve_path

NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def cache_dir() -> Path:
    return Path(os.environ.get("SNP_CACHE", Path.home() / ".cache" / "snp-service"))


@dataclass
class DataBundle:
    train: Dataset
    eval: Dataset
    classes: list[str]
    root: str
    train_split: str
    eval_split: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict:
        return {"root": self.root, "train_split": self.train_split, "eval_split": self.eval_split,
                "train_size": len(self.train), "eval_size": len(self.eval), "num_classes": self.num_classes}


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def extract_archive(archive: Path) -> Path:
    """Extract a .tar(.gz) once into the cache (keyed by its SHA-256); returns the extracted dir."""
    digest = synthetic.sha256_file(archive)[:16]
    dest = cache_dir() / "archives" / digest
    done = dest / ".complete"
    with _lock(cache_dir() / "archives" / f"{digest}.lock"):
        if done.exists():
            return dest
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError, ValueError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DatasetError(f"dataset archive {archive} is corrupt or unreadable: {e}") from None
        shutil.rmtree(dest, ignore_errors=True)
        tmp.rename(dest)
        done.touch()
    return dest


def _split_root(base: Path, origin: Path) -> Path:
    """The directory holding train/ and test/ (base itself, or its only subdirectory)."""
    candidates = [base] + sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    for c in candidates:
        if (c / "train").is_dir() and (c / "test").is_dir():
            return c
    raise DatasetError(f"{origin}: not an image-folder dataset; expected train/<class>/ and test/<class>/ "
                       "directories at its top level or one level down")


def prepare(ds: DatasetSpec) -> Path:
    """Make the dataset loadable and return the local root the loaders read from."""
    root = resolve_path(ds.root)
    if ds.synthetic is not None:
        s = ds.synthetic
        with _lock(root / ".synthetic.lock"):
            if ds.name == "cifar100":
                synthetic.write_cifar100(root, s.num_classes, s.train_per_class, s.test_per_class, s.noise, s.seed)
            else:
                synthetic.write_flowers102(root, s.num_classes, s.train_per_class, s.test_per_class,
                                           s.image_size, s.noise, s.seed)
        return root
    if not root.exists() and not ds.download:
        raise DatasetError(f"dataset root {root} does not exist")
    if ds.name == "imagefolder":
        base = extract_archive(root) if root.is_file() else root
        return _split_root(base, root)
    if ds.download:
        root.mkdir(parents=True, exist_ok=True)
    return root


class _SyntheticCheck:
    """Mixin: accept files written by snp_service.synthetic (checked against its SHA-256 marker)
    in place of torchvision's md5 check of the official files. Parsing stays torchvision's."""

    _synthetic_dir: str

    def _check_integrity(self) -> bool:
        return synthetic.verify(Path(self.root) / self._synthetic_dir)


class SyntheticCIFAR100(_SyntheticCheck, tvd.CIFAR100):
    _synthetic_dir = synthetic.CIFAR_DIR
    meta = {**tvd.CIFAR100.meta, "md5": None}  # the marker already covers the meta file


class SyntheticFlowers102(_SyntheticCheck, tvd.Flowers102):
    _synthetic_dir = synthetic.FLOWERS_DIR


def _targets(ds: Dataset) -> list[int]:
    if isinstance(ds, Subset):
        inner = _targets(ds.dataset)
        return [inner[i] for i in ds.indices]
    if isinstance(ds, torch.utils.data.ConcatDataset):
        return [t for d in ds.datasets for t in _targets(d)]
    for attr in ("targets", "_labels"):
        if hasattr(ds, attr):
            return list(getattr(ds, attr))
    raise TypeError(f"cannot read labels of {type(ds).__name__}")


def targets(ds: Dataset) -> np.ndarray:
    return np.asarray(_targets(ds), dtype=np.int64)


def subset_per_class(ds: Dataset, max_per_class: int | None, seed: int) -> Dataset:
    """At most `max_per_class` images of each class, chosen by a seeded permutation (kept in order)."""
    if max_per_class is None:
        return ds
    y = targets(ds)
    order = np.random.default_rng(seed).permutation(len(y))
    keep, seen = [], {}
    for i in order:
        c = int(y[i])
        if seen.get(c, 0) < max_per_class:
            seen[c] = seen.get(c, 0) + 1
            keep.append(int(i))
    return Subset(ds, sorted(keep))


def transforms(ds: DatasetSpec, train: bool) -> T.Compose:
    mean, std = NORMALISATION.get(ds.name, IMAGENET)
    size, a = ds.image_size, ds.augment
    steps: list = []
    if train and a.crop:
        steps.append(T.RandomCrop(size, padding=4, padding_mode="reflect") if size <= 64
                     else T.RandomResizedCrop(size, antialias=True))
        if size <= 64:
            steps.insert(0, T.Resize((size, size), antialias=True))
    else:
        steps += [T.Resize(size, antialias=True), T.CenterCrop(size)]
    if train and a.flip:
        steps.append(T.RandomHorizontalFlip())
    if train and a.randaugment:
        steps.append(T.RandAugment())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def _check_classes(names: list[str], origin: Path) -> list[str]:
    if len(names) < 2:
        raise DatasetError(f"{origin}: found {len(names)} class(es); at least 2 are needed")
    return names


def build_datasets(ds: DatasetSpec, seed: int = 0, augment: bool = True) -> DataBundle:
    """Train and evaluation splits with the spec's transforms and subsets. Call prepare() first."""
    root = prepare(ds)
    tr, ev = transforms(ds, train=augment), transforms(ds, train=False)
    try:
        if ds.name in ("cifar10", "cifar100"):
            cls = {"cifar10": tvd.CIFAR10, "cifar100": SyntheticCIFAR100 if ds.synthetic else tvd.CIFAR100}[ds.name]
            train = cls(str(root), train=True, transform=tr, download=ds.download)
            evald = cls(str(root), train=False, transform=ev, download=False)
            classes, splits = list(train.classes), ("train", "test")
        elif ds.name == "flowers102":
            cls = SyntheticFlowers102 if ds.synthetic else tvd.Flowers102
            parts = ["train", "val"] if ds.train_split == "trainval" else ["train"]
            sets = [cls(str(root), split=p, transform=tr, download=ds.download) for p in parts]
            train = sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)
            evald = cls(str(root), split="test", transform=ev, download=False)
            n = ds.synthetic.num_classes if ds.synthetic else 102
            classes = synthetic.class_names(n) if ds.synthetic else list(getattr(tvd.Flowers102, "classes", [])) \
                or [f"flower_{i + 1:03d}" for i in range(n)]
            splits = ("+".join(parts), "test")
        else:
            train = tvd.ImageFolder(str(root / "train"), transform=tr)
            evald = tvd.ImageFolder(str(root / "test"), transform=ev)
            if train.classes != evald.classes:
                raise DatasetError(f"{root}: train/ and test/ have different class folders")
            classes, splits = list(train.classes), ("train", "test")
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(f"{ds.name} at {root}: {e} (expected the official layout under this root)") from None
    except (FileNotFoundError, OSError, ValueError) as e:
        raise DatasetError(f"{ds.name} at {root}: cannot load: {e}") from None
    _check_classes(classes, root)
    train = subset_per_class(train, ds.max_per_class, seed)
    evald = subset_per_class(evald, ds.eval_max_per_class, seed)
    return DataBundle(train, evald, classes, str(root), splits[0], splits[1])
