"""Deterministic synthetic datasets written in the official CIFAR-100 and Flowers-102 file layouts.

Tests and the quickstart use these so that the real torchvision loaders parse real files, with no
download. Each class has a prototype mixing three of a set of shared patterns (coloured gratings
and blobs), so classes overlap; an image is its class prototype shifted by a few pixels, rescaled
in brightness and noised, so a small network can learn the classes but not trivially.

A `SYNTHETIC.json` marker, written last, records the parameters and the SHA-256 of every file:
the loaders check it in place of torchvision's md5 check of the official files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

MARKER = "SYNTHETIC.json"
CIFAR_DIR = "cifar-100-python"
FLOWERS_DIR = "flowers-102"


def class_names(n: int) -> list[str]:
    return [f"synth_{i:03d}" for i in range(n)]


def _prototypes(num_classes: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Class prototypes as sparse mixtures of shared patterns: classes overlap in features, as
    real labels do, so recognising one label partly recognises others."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    n_basis = max(4, num_classes // 2)
    basis = np.zeros((n_basis, size, size, 3), np.float32)
    for b in range(n_basis):
        fy, fx = rng.uniform(0.5, 3.0, 2)
        grating = np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
        cy, cx = rng.uniform(0.2, 0.8, 2)
        r = rng.uniform(0.1, 0.25)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        basis[b] = grating[..., None] * rng.uniform(-1, 1, 3) + 1.5 * blob[..., None] * rng.uniform(-1, 1, 3)
    protos = np.zeros((num_classes, size, size, 3), np.float32)
    for c in range(num_classes):
        chosen = rng.choice(n_basis, size=3, replace=False)
        img = np.tensordot(rng.uniform(0.5, 1.0, 3) * rng.choice([-1, 1], 3), basis[chosen], axes=1)
        protos[c] = img / (np.abs(img).max() + 1e-6)
    return protos


def _images(protos: np.ndarray, labels: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 images (N, H, W, 3) from class prototypes with jitter, brightness and noise."""
    n, size = len(labels), protos.shape[1]
    out = np.empty((n, size, size, 3), np.uint8)
    shifts = rng.integers(-max(1, size // 10), max(1, size // 10) + 1, size=(n, 2))
    gains = rng.uniform(0.7, 1.3, n)
    for i, c in enumerate(labels):
        img = np.roll(protos[c], tuple(shifts[i]), axis=(0, 1)) * gains[i]
        img = img + noise * rng.standard_normal(img.shape).astype(np.float32)
        out[i] = np.clip(127.5 + 100.0 * img, 0, 255).astype(np.uint8)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _finish(base: Path, params: dict) -> None:
    files = sorted(p for p in base.rglob("*") if p.is_file() and p.name != MARKER)
    marker = {"params": params, "files": {str(p.relative_to(base)): sha256_file(p) for p in files}}
    (base / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))


def read_marker(base: Path) -> dict | None:
    try:
        return json.loads((base / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def verify(base: Path, deep: bool = False) -> bool:
    """True when the marker exists and every file it lists is present (and matches, if deep)."""
    marker = read_marker(base)
    if marker is None:
        return False
    for rel, digest in marker["files"].items():
        p = base / rel
        if not p.is_file() or (deep and sha256_file(p) != digest):
            return False
    return True


@contextmanager
def _building(root: Path, name: str, params: dict) -> Iterator[Path]:
    """A dataset folder written under a temporary name, then marked and renamed into place; an
    interrupt or error meanwhile removes the temporary folder (nothing half-written is left)."""
    tmp = Path(root) / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _finish(tmp, params)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    base = Path(root) / name
    shutil.rmtree(base, ignore_errors=True)
    tmp.rename(base)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_cifar100(root: Path, num_classes: int, train_per_class: int, test_per_class: int,
                   noise: float = 0.8, seed: int = 0) -> Path:
    """Write `root/cifar-100-python/{train,test,meta}` as the official pickles (fine labels 0..n-1)."""
    params = dict(layout="cifar100", num_classes=num_classes, train_per_class=train_per_class,
                  test_per_class=test_per_class, image_size=32, noise=noise, seed=seed)
    base = Path(root) / CIFAR_DIR
    if verify(base) and read_marker(base)["params"] == params:
        return base
    with _building(root, CIFAR_DIR, params) as tmp:
        _cifar100_files(tmp, num_classes, train_per_class, test_per_class, noise, seed)
    return base


def _cifar100_files(tmp: Path, num_classes: int, train_per_class: int, test_per_class: int, noise: float,
                    seed: int) -> None:
    rng = np.random.default_rng(seed)
    protos = _prototypes(num_classes, 32, rng)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        labels = _labels(num_classes, per_class, rng)
        imgs = _images(protos, labels, noise, rng)
        entry = {
            "batch_label": f"synthetic {split} batch",
            "filenames": [f"synth_{split}_{i:06d}.png" for i in range(len(labels))],
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": imgs.transpose(0, 3, 1, 2).reshape(len(labels), -1),  # official: R, G, B planes
        }
        with open(tmp / split, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    meta = {"fine_label_names": class_names(num_classes),
            "coarse_label_names": [f"synth_group_{i}" for i in range((num_classes + 4) // 5)]}
    with open(tmp / "meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)


def write_flowers102(root: Path, num_classes: int, train_per_class: int, test_per_class: int,
                     image_size: int = 64, noise: float = 0.8, seed: int = 0) -> Path:
    """Write `root/flowers-102/{jpg/image_NNNNN.jpg, imagelabels.mat, setid.mat}` (labels 1-based)."""
    params = dict(layout="flowers102", num_classes=num_classes, train_per_class=train_per_class,
                  test_per_class=test_per_class, image_size=image_size, noise=noise, seed=seed)
    base = Path(root) / FLOWERS_DIR
    if verify(base) and read_marker(base)["params"] == params:
        return base
    with _building(root, FLOWERS_DIR, params) as tmp:
        _flowers102_files(tmp, num_classes, train_per_class, test_per_class, image_size, noise, seed)
    return base


def _flowers102_files(tmp: Path, num_classes: int, train_per_class: int, test_per_class: int, image_size: int,
                      noise: float, seed: int) -> None:
    from scipy.io import savemat

    (tmp / "jpg").mkdir()
    rng = np.random.default_rng(seed)
    protos = _prototypes(num_classes, image_size, rng)
    # train, val (same size as test) and test, image ids numbered from 1 as in the official files
    per_split = {"trnid": train_per_class, "valid": test_per_class, "tstid": test_per_class}
    all_labels, setid, next_id = [], {}, 1
    for key, per_class in per_split.items():
        labels = _labels(num_classes, per_class, rng)
        imgs = _images(protos, labels, noise, rng)
        ids = np.arange(next_id, next_id + len(labels))
        for img_id, img in zip(ids, imgs):
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=95)
            (tmp / "jpg" / f"image_{img_id:05d}.jpg").write_bytes(buf.getvalue())
        setid[key] = ids.astype(np.uint16)[None, :]
        all_labels.append(labels + 1)
        next_id += len(labels)
    savemat(tmp / "imagelabels.mat", {"labels": np.concatenate(all_labels).astype(np.uint8)[None, :]})
    savemat(tmp / "setid.mat", setid)
