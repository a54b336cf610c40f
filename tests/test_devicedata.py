"""The on-device data path (snp_service.devicedata), run here on CPU: decoded pixels are the
dataset's own, batches are the DataLoader recipe's (normalisation, reflect-padded crop, flip), ranks
see disjoint images, and the decoded split is cached."""

import pytest
import torch
import torch.nn.functional as F

from snp_service import devicedata
from snp_service.data import build_datasets
from snp_service.spec import DatasetSpec


@pytest.fixture
def ds(tmp_path, cache_env):
    return DatasetSpec(name="cifar100", root=str(tmp_path / "data"),
                       synthetic={"num_classes": 4, "train_per_class": 10, "test_per_class": 5})


def _decoded(ds, split="train"):
    plain = build_datasets(ds, augment=False)
    return devicedata.decode(getattr(plain, split), ds, {"spec": ds.model_dump(mode="json"), "split": split}), plain


def test_decode_gives_the_datasets_own_pixels_and_is_cached(ds, cache_env):
    before = set((cache_env / "decoded").glob("*.npz"))
    (images, labels), plain = _decoded(ds)
    raw = plain.train.dataset.data[plain.train.indices] if hasattr(plain.train, "indices") else plain.train.data
    assert images.dtype == torch.uint8 and tuple(images.shape) == (40, 3, 32, 32)
    assert torch.equal(images, torch.from_numpy(raw).permute(0, 3, 1, 2))
    assert labels.tolist() == [int(y) for _x, y in plain.train]
    cached = set((cache_env / "decoded").glob("*.npz")) - before
    assert len(cached) == 1
    again, _ = _decoded(ds)
    assert torch.equal(again[0], images) and set((cache_env / "decoded").glob("*.npz")) - before == cached


def test_evaluation_batches_equal_the_dataloader_transform(ds):
    (images, labels), plain = _decoded(ds, "eval")
    batches = devicedata.for_dataset(images, labels, ds, 8, torch.device("cpu"), train=False)
    xs, ys = zip(*batches)
    assert len(batches) == 3 and [len(y) for y in ys] == [8, 8, 4]
    x, y = torch.cat(xs), torch.cat(ys)
    expect = torch.stack([plain.eval[i][0] for i in range(len(plain.eval))])
    torch.testing.assert_close(x, expect, atol=1e-5, rtol=0)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.tolist() == labels.tolist()


def test_crop_is_a_window_of_the_reflect_padded_image_and_flip_mirrors_half():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 32, 32)
    assert torch.equal(devicedata.crop_flip(x, False, False, g), x)
    out = devicedata.crop_flip(x, True, False, g)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(9) for dx in range(9)
                if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert hits, f"image {i} is no window of its padded self"
        offsets.add(hits[0])
    assert len(offsets) > 20  # the offsets vary over the 81 possible
    flipped = devicedata.crop_flip(x, False, True, torch.Generator().manual_seed(1))
    mirrored = [torch.equal(flipped[i], x[i].flip(2)) for i in range(len(x))]
    assert all(m or torch.equal(flipped[i], x[i]) for i, m in enumerate(mirrored))
    assert 16 < sum(mirrored) < 48
    a = devicedata.crop_flip(x, True, True, torch.Generator().manual_seed(5))
    assert torch.equal(a, devicedata.crop_flip(x, True, True, torch.Generator().manual_seed(5)))  # seeded


def test_training_epochs_are_seeded_permutations_split_disjointly_between_ranks(ds):
    (images, labels), _ = _decoded(ds)
    ranks = [devicedata.for_dataset(images, torch.arange(40), ds, 6, torch.device("cpu"), train=True,
                                    rank=r, world=2, drop_last=True) for r in range(2)]
    seen = []
    for b in ranks:
        b.set_epoch_seed(3)
        assert len(b) == 3  # 20 images per rank, 3 full batches of 6
        seen.append(torch.cat([y for _x, y in b]).tolist())
    assert not set(seen[0]) & set(seen[1]) and all(len(s) == 18 for s in seen)
    ranks[0].set_epoch_seed(4)
    assert torch.cat([y for _x, y in ranks[0]]).tolist() != seen[0]  # another epoch, another order
    ranks[0].set_epoch_seed(3)
    assert torch.cat([y for _x, y in ranks[0]]).tolist() == seen[0]


@pytest.mark.parametrize("setting, size, randaugment, device, expect", [
    ("auto", 32, False, "cuda", True), ("auto", 32, False, "cpu", False), (True, 32, False, "cpu", True),
    (False, 32, False, "cuda", False), ("auto", 224, False, "cuda", False), ("auto", 32, True, "cuda", False),
])
def test_path_is_taken_for_small_images_on_a_gpu(tmp_path, setting, size, randaugment, device, expect):
    spec = DatasetSpec(name="cifar100", root=str(tmp_path), image_size=size, augment={"randaugment": randaugment},
                       synthetic={"num_classes": 2, "train_per_class": 1, "test_per_class": 1})
    assert devicedata.usable(spec, setting, torch.device(device)) is expect


def test_batches_run_without_pydantic():
    """bench/paper_gpu.py trains through DeviceBatches on a GPU machine that has no pydantic."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['pydantic'] = None\n"
            "import torch\n"
            "from snp_service.devicedata import DeviceBatches\n"
            "b = DeviceBatches(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4), 2, torch.device('cpu'),\n"
            "                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), train=True)\n"
            "x, y = next(iter(b)); assert x.shape == (2, 3, 8, 8) and float(x.max()) == -2.0\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
