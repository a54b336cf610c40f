"""Datasets load through the official loaders; bad datasets fail naming the path."""

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from snp_service.data import build_datasets, extract_archive, subset_per_class, targets
from pydantic import ValidationError

from snp_service.errors import DatasetError
from snp_service.spec import DatasetSpec
from snp_service.synthetic import verify, write_cifar100
from tests.conftest import SHARED_CIFAR10


def test_synthetic_cifar100_through_torchvision_loader(tmp_path):
    ds = DatasetSpec(name="cifar100", root=str(tmp_path),
                     synthetic={"num_classes": 5, "train_per_class": 6, "test_per_class": 3})
    b = build_datasets(ds)
    assert (tmp_path / "cifar-100-python" / "meta").exists()
    assert b.classes == [f"synth_{i:03d}" for i in range(5)]
    assert (len(b.train), len(b.eval)) == (30, 15)
    assert np.bincount(targets(b.train)).tolist() == [6] * 5
    x, y = b.train[0]
    assert tuple(x.shape) == (3, 32, 32) and 0 <= y < 5


def test_synthetic_is_deterministic_and_class_dependent(tmp_path):
    a = write_cifar100(tmp_path / "a", 3, 20, 2, seed=1)
    b = write_cifar100(tmp_path / "b", 3, 20, 2, seed=1)
    assert (a / "train").read_bytes() == (b / "train").read_bytes()
    import pickle
    entry = pickle.load(open(a / "train", "rb"), encoding="latin1")
    x, y = entry["data"].astype(float), np.array(entry["fine_labels"])
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    within = np.mean([np.linalg.norm(x[y == c] - means[c], axis=1).mean() for c in range(3)])
    between = np.linalg.norm(means[:, None] - means[None], axis=2)[np.triu_indices(3, 1)].mean()
    assert between > 0.3 * within  # class means differ by a sizeable part of the spread


def test_tampered_synthetic_data_is_rejected(tmp_path):
    base = write_cifar100(tmp_path, 3, 4, 2)
    (base / "test").unlink()
    assert not verify(base)


def test_synthetic_flowers102_official_layout(tmp_path):
    ds = DatasetSpec(name="flowers102", root=str(tmp_path), image_size=48, train_split="trainval",
                     synthetic={"num_classes": 4, "train_per_class": 3, "test_per_class": 2, "image_size": 64})
    b = build_datasets(ds)
    for f in ("imagelabels.mat", "setid.mat", "jpg/image_00001.jpg"):
        assert (tmp_path / "flowers-102" / f).exists()
    assert (len(b.train), len(b.eval), b.train_split) == (4 * 3 + 4 * 2, 8, "train+val")
    assert tuple(b.train[0][0].shape) == (3, 48, 48)


def _tiny_imagefolder_tar(path, classes=("ant", "bee"), nested="tiny"):
    with tarfile.open(path, "w:gz") as tf:
        for split in ("train", "test"):
            for ci, c in enumerate(classes):
                for i in range(3):
                    buf = io.BytesIO()
                    Image.fromarray(np.full((32, 32, 3), 40 + 80 * ci, np.uint8)).save(buf, format="PNG")
                    info = tarfile.TarInfo(f"{nested}/{split}/{c}/{i}.png")
                    info.size = len(buf.getvalue())
                    buf.seek(0)
                    tf.addfile(info, buf)


def test_imagefolder_archive(tmp_path, cache_env):
    archive = tmp_path / "tiny.tar.gz"
    _tiny_imagefolder_tar(archive)
    b = build_datasets(DatasetSpec(name="imagefolder", root=str(archive)))
    assert b.classes == ["ant", "bee"] and (len(b.train), len(b.eval)) == (6, 6)
    assert extract_archive(archive) == extract_archive(archive)  # extracted once, cached


def test_corrupt_archive_names_path(tmp_path, cache_env):
    archive = tmp_path / "broken.tar.gz"
    _tiny_imagefolder_tar(archive)
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DatasetError, match="broken.tar.gz"):
        build_datasets(DatasetSpec(name="imagefolder", root=str(archive)))


def test_wrong_layout_names_path(tmp_path):
    (tmp_path / "pics").mkdir()
    with pytest.raises(DatasetError, match="train/<class>/"):
        build_datasets(DatasetSpec(name="imagefolder", root=str(tmp_path / "pics")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=str(tmp_path / "empty")):
        build_datasets(DatasetSpec(name="cifar100", root=str(tmp_path / "empty")))


def test_missing_root_rejected_at_validation(tmp_path):
    with pytest.raises(ValidationError, match="does not exist"):
        DatasetSpec(name="cifar10", root=str(tmp_path / "absent"))


def test_subset_per_class_is_seeded(tmp_path):
    b = build_datasets(DatasetSpec(name="cifar100", root=str(tmp_path),
                                   synthetic={"num_classes": 3, "train_per_class": 10, "test_per_class": 2}))
    s1, s2 = subset_per_class(b.train, 4, seed=0), subset_per_class(b.train, 4, seed=0)
    assert s1.indices == s2.indices and np.bincount(targets(s1)).tolist() == [4, 4, 4]
    assert subset_per_class(b.train, 4, seed=1).indices != s1.indices


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR10.exists(), reason=f"real CIFAR-10 archive not at {SHARED_CIFAR10}")
def test_real_cifar10_archive(cache_env):
    b = build_datasets(DatasetSpec(name="imagefolder", root=str(SHARED_CIFAR10)))
    assert b.classes == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert (len(b.train), len(b.eval)) == (50_000, 10_000)
    assert np.bincount(targets(b.eval)).tolist() == [1000] * 10
