"""Datasets load through the official loaders; bad datasets fail naming the path."""

import functools
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from snp_service.data import build_datasets, extract_archive, subset_per_class, targets
from pydantic import ValidationError

from snp_service.errors import DatasetError
from snp_service.spec import DatasetSpec
from snp_service.synthetic import verify, write_cifar100
from tests.conftest import SHARED_CIFAR10, SHARED_FLOWERS


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


def test_random_labels_keep_the_images_and_draw_labels_independent_of_them(tmp_path):
    """dataset.random_labels: the same images and class names; in both splits a seeded label drawn
    uniformly and independently of the image's real label."""
    from scipy.stats import chi2_contingency

    synth = {"num_classes": 5, "train_per_class": 40, "test_per_class": 40}
    real = build_datasets(DatasetSpec(name="cifar100", root=str(tmp_path), synthetic=synth), augment=False)
    blind = build_datasets(DatasetSpec(name="cifar100", root=str(tmp_path), synthetic=synth, random_labels=True),
                           augment=False)
    again = build_datasets(DatasetSpec(name="cifar100", root=str(tmp_path), synthetic=synth, random_labels=True))
    assert blind.classes == real.classes and (len(blind.train), len(blind.eval)) == (len(real.train), len(real.eval))
    for split in ("train", "eval"):
        a, b = getattr(real, split), getattr(blind, split)
        y, z = targets(a), targets(b)
        assert z.tolist() == targets(getattr(again, split)).tolist()  # seeded
        for i in (0, 7, len(a) - 1):
            assert torch.equal(a[i][0], b[i][0]) and b[i][1] == z[i]  # same image, the drawn label
        assert (y == z).mean() < 0.35  # 1/5 expected; real labels kept would give 1
        table = np.array([[np.sum((y == i) & (z == j)) for j in range(5)] for i in range(5)])
        assert table.sum(axis=0).min() > 0 and chi2_contingency(table).pvalue > 1e-3  # independent of the image's label
    assert targets(blind.train)[:len(blind.eval)].tolist() != targets(blind.eval).tolist()  # splits drawn apart


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


# Flowers-102 (issue 26): a local .tar.gz as well as an extracted root, the official split, the official
# class names, and one clear message for a bad or partial archive. The archive is generated here in the
# official layout, with the official split sizes (1,020 / 1,020 / 6,149 of 8,189 images, 102 classes) or
# smaller ones where only the damage matters, tiny 8x8 JPEGs whose colour encodes their label.
OFFICIAL_SPLITS = (1020, 1020, 6149)  # trnid, valid, tstid
SMALL_SPLITS = (102, 102, 102)


@functools.lru_cache(maxsize=2)
def _flowers_files(splits: tuple[int, int, int]) -> dict[str, bytes]:
    """What the archive is made of: imagelabels.mat, setid.mat (written once, so their MD5s stay put),
    one JPEG a class ("class-<c>") and every image's label ("labels", uint8 bytes, 1-based)."""
    from scipy.io import savemat

    total = sum(splits)
    ids = np.random.default_rng(0).permutation(np.arange(1, total + 1))  # the splits interleave, as the official do
    labels = np.zeros(total, np.uint8)
    setid, start = {}, 0
    for key, n in zip(("trnid", "valid", "tstid"), splits):
        split_ids = np.sort(ids[start:start + n])
        # 10 a class in train and val; the rest of the 6,149 test images spread over the classes
        labels[split_ids - 1] = np.arange(n) % 102 + 1
        setid[key], start = split_ids.astype(np.uint16)[None, :], start + n
    files = {}
    for name, content in (("imagelabels.mat", {"labels": labels[None, :]}), ("setid.mat", setid)):
        buf = io.BytesIO()
        savemat(buf, content)
        files[name] = buf.getvalue()
    for c in range(102):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), _flower_colour(c)).save(buf, format="JPEG", quality=95)
        files[f"class-{c}"] = buf.getvalue()
    files["labels"] = labels.tobytes()
    return files


def _flower_colour(c: int) -> tuple[int, int, int]:
    return 20 + 20 * (c % 11), 20 + 20 * (c // 11), 128


def _flowers_tar(path, splits=OFFICIAL_SPLITS, drop=(), replace=None):
    """The synthetic archive at `path` (members in `drop` left out, those in `replace` given other bytes)."""
    files, replace = _flowers_files(splits), replace or {}
    labels = np.frombuffer(files["labels"], np.uint8)
    members = {"flowers-102/imagelabels.mat": files["imagelabels.mat"], "flowers-102/setid.mat": files["setid.mat"]}
    members |= {f"flowers-102/jpg/image_{i:05d}.jpg": files[f"class-{labels[i - 1] - 1}"]
                for i in range(1, len(labels) + 1)}
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            if name in drop:
                continue
            data = replace.get(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def official_md5(monkeypatch):
    """stand_in(splits): the generated .mat files stand in for the official ones in torchvision's MD5 check."""
    import hashlib

    from torchvision.datasets import Flowers102

    def stand_in(splits=OFFICIAL_SPLITS):
        files = _flowers_files(splits)
        md5 = {k: hashlib.md5(files[f]).hexdigest() for k, f in (("label", "imagelabels.mat"), ("setid", "setid.mat"))}
        monkeypatch.setattr(Flowers102, "_file_dict", {**Flowers102._file_dict,
                                                       "label": ("imagelabels.mat", md5["label"]),
                                                       "setid": ("setid.mat", md5["setid"])})

    return stand_in


def _label_of(x) -> int:
    """The label an 8x8 test image's colour encodes (the evaluation transform undone)."""
    from snp_service.data import IMAGENET

    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET)
    r, g, _b = ((x * std + mean) * 255).mean((1, 2)).tolist()
    return round((r - 20) / 20) + 11 * round((g - 20) / 20)


def test_flowers102_from_a_local_archive_and_an_extracted_root_with_the_official_split(tmp_path, cache_env,
                                                                                         official_md5):
    from torchvision.datasets import Flowers102

    official_md5()
    archive = _flowers_tar(tmp_path / "flowers-102.tar.gz")
    spec = dict(name="flowers102", image_size=8)
    train = build_datasets(DatasetSpec(**spec, root=str(archive)), augment=False)
    assert (len(train.train), len(train.eval), train.train_split, train.eval_split) == (1020, 6149, "train", "test")
    assert np.bincount(targets(train.train)).tolist() == [10] * 102
    b = build_datasets(DatasetSpec(**spec, root=str(archive), train_split="trainval"), augment=False)
    assert (len(b.train), len(b.eval), b.train_split) == (2040, 6149, "train+val")
    assert np.bincount(targets(b.train)).tolist() == [20] * 102
    assert np.bincount(targets(b.eval), minlength=102).sum() == 6149
    val = Flowers102(b.root, split="val")
    assert len(val) == 1020 and np.bincount(val._labels).tolist() == [10] * 102
    for ds in (b.train, b.eval):  # every label is the one setid.mat / imagelabels.mat give its image
        for i in range(0, len(ds), 97):
            x, y = ds[i]
            assert _label_of(x) == y
    # the official class names, in label order, in the data bundle (and so in tables and figures)
    assert b.classes == list(Flowers102.classes) and len(b.classes) == 102
    assert (b.classes[0], b.classes[76], b.classes[101]) == ("pink primrose", "passion flower", "blackberry lily")
    # the same dataset from an extracted root
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "extracted", filter="data")
    e = build_datasets(DatasetSpec(**spec, root=str(tmp_path / "extracted"), train_split="trainval"), augment=False)
    assert (len(e.train), len(e.eval), e.classes) == (2040, 6149, b.classes)
    assert targets(e.train).tolist() == targets(b.train).tolist()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "corrupt or unreadable"),
    ("no setid", "flowers-102/setid.mat missing"),
    ("images missing", r"3 of the 306 images setid.mat lists are missing from flowers-102/jpg/ \(image_00002.jpg"),
    ("empty image", r"1 of 306 image\(s\) cannot be read \(jpg/image_00005.jpg: empty file\)"),
])
def test_flowers102_bad_or_partial_archive_is_one_message(tmp_path, cache_env, official_md5, damage, message):
    official_md5(SMALL_SPLITS)
    archive = tmp_path / f"flowers-{damage.replace(' ', '-')}.tar.gz"
    if damage == "truncated":
        _flowers_tar(archive, SMALL_SPLITS)
        archive.write_bytes(archive.read_bytes()[:5_000])
    elif damage == "no setid":
        _flowers_tar(archive, SMALL_SPLITS, drop={"flowers-102/setid.mat"})
    elif damage == "images missing":
        _flowers_tar(archive, SMALL_SPLITS, drop={f"flowers-102/jpg/image_{i:05d}.jpg" for i in (2, 3, 4)})
    else:
        _flowers_tar(archive, SMALL_SPLITS, replace={"flowers-102/jpg/image_00005.jpg": b""})
    with pytest.raises(DatasetError, match=message) as e:
        build_datasets(DatasetSpec(name="flowers102", root=str(archive), image_size=8))
    assert str(archive.name) in str(e.value)


def test_flowers102_mat_files_must_be_the_official_ones(tmp_path, cache_env):
    archive = _flowers_tar(tmp_path / "not-official.tar.gz", SMALL_SPLITS)  # no stand-in: the official MD5s
    with pytest.raises(DatasetError, match="imagelabels.mat is not the official file"):
        build_datasets(DatasetSpec(name="flowers102", root=str(archive), image_size=8))


def test_a_dataset_root_that_is_a_file_must_be_an_archive(tmp_path):
    (tmp_path / "labels.mat").write_bytes(b"x")
    with pytest.raises(ValidationError, match="is a file but not a .tar.gz"):
        DatasetSpec(name="flowers102", root=str(tmp_path / "labels.mat"))
    archive = _flowers_tar(tmp_path / "f.tar.gz", SMALL_SPLITS)
    with pytest.raises(ValidationError, match="download need a directory"):
        DatasetSpec(name="flowers102", root=str(archive), download=True)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_FLOWERS.exists(), reason=f"real Flowers-102 archive not at {SHARED_FLOWERS}")
def test_real_flowers102_archive(cache_env):
    from torchvision.datasets import Flowers102

    b = build_datasets(DatasetSpec(name="flowers102", root=str(SHARED_FLOWERS), image_size=64, train_split="trainval"))
    assert (len(b.train), len(b.eval), b.classes) == (2040, 6149, list(Flowers102.classes))
    assert np.bincount(targets(b.train)).tolist() == [20] * 102
    assert [len(Flowers102(b.root, split=s)) for s in ("train", "val", "test")] == [1020, 1020, 6149]
