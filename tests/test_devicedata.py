"""The on-device data path (snp_service.devicedata), run here on CPU: decoded pixels are the
dataset's own, batches are the DataLoader recipe's (normalisation, reflect-padded crop or, above 64 px,
RandomResizedCrop; flip), ranks see disjoint images, and the decoded split is cached."""

import math

import numpy as np
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
    (True, 224, False, "cpu", True), (True, 224, True, "cuda", False),
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


# Larger images (issue 26): decoded once at the job's resolution, cropped by RandomResizedCrop on the batch.

@pytest.fixture
def large(tmp_path, cache_env):
    """An image-folder tree of non-square 120 x 90 noise images, trained at 72 px (above 64)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / "large" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
                    tmp_path / "large" / split / c / f"{i}.png")
    return DatasetSpec(name="imagefolder", root=str(tmp_path / "large"), image_size=72)


def test_larger_images_are_decoded_once_with_the_dataloaders_pixels(large, cache_env):
    before = set((cache_env / "decoded").glob("*.npz"))
    (images, labels), plain = _decoded(large)
    assert images.dtype == torch.uint8 and tuple(images.shape) == (8, 3, 72, 72)
    assert len(set((cache_env / "decoded").glob("*.npz")) - before) == 1
    assert torch.equal(_decoded(large)[0][0], images)  # read back from the cache
    # the DataLoader's transform of each image (resize the shorter side, centre square) is its decoded pixels
    batches = devicedata.for_dataset(images, labels, large, 3, torch.device("cpu"), train=False)
    x = torch.cat([b for b, _y in batches])
    torch.testing.assert_close(x, torch.stack([plain.train[i][0] for i in range(8)]), atol=1e-5, rtol=0)
    # training batches without crop and flip are the same pixels, in the epoch's order; with them, a box of
    # RandomResizedCrop resized back to 72 px
    still = large.model_copy(update={"augment": large.augment.model_copy(update={"crop": False, "flip": False})})
    train = devicedata.for_dataset(images, torch.arange(8), still, 4, torch.device("cpu"), train=True)
    for xb, rows in train:
        torch.testing.assert_close(xb, x[rows], atol=1e-5, rtol=0)
    cropped = devicedata.for_dataset(images, torch.arange(8), large, 4, torch.device("cpu"), train=True)
    assert cropped.resized_crop and not devicedata.for_dataset(images, labels, large.model_copy(
        update={"image_size": 64}), 4, torch.device("cpu"), train=True).resized_crop
    xb, rows = next(iter(cropped))
    assert xb.shape == (4, 3, 72, 72) and xb.is_contiguous(memory_format=torch.channels_last)
    assert not torch.allclose(xb, x[rows])


def test_resized_crop_is_torchvisions_resized_crop_of_each_image():
    from torchvision.transforms.v2 import functional as TF

    x = torch.rand(32, 3, 72, 72, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    out = devicedata.crop_flip(x, True, False, torch.Generator().manual_seed(7), resized=True)
    assert torch.equal(torch.get_rng_state(), state)  # the global random stream is untouched
    boxes = devicedata.resized_crop_boxes(32, 72, torch.Generator().manual_seed(7))
    sides = set()
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        w, h = x2 - x1, y2 - y1
        assert 0 <= x1 < x2 <= 72 and 0 <= y1 < y2 <= 72 and 0.07 <= w * h / 72**2 <= 1
        ref = TF.resized_crop(x[i], y1, x1, h, w, [72, 72], antialias=True)
        # equal but for the samples less than half a pixel outside the box (the rows and columns nearest
        # its edges), which weigh the image there where interpolate repeats the box's edge
        my, mx = (math.ceil(36 / side - 0.5) for side in (h, w))
        inner = (slice(None), slice(my, 72 - my), slice(mx, 72 - mx))
        torch.testing.assert_close(out[i][inner], ref[inner], atol=1e-4, rtol=0)
        torch.testing.assert_close(out[i], ref, atol=0.75, rtol=0)  # >= 1/4 of a sample's weight is in the box
        sides.add((w, h))
    assert len(sides) > 20  # boxes vary
    whole = torch.tensor([[0, 0.0, 0, 72, 72]])
    from torchvision.ops import roi_align
    assert torch.equal(roi_align(x[:1], whole, (72, 72), 1.0, 1, True), x[:1])  # the whole image: its own pixels
    again = devicedata.crop_flip(x, True, False, torch.Generator().manual_seed(7), resized=True)
    assert torch.equal(again, out)  # seeded


def test_crop_boxes_are_drawn_as_torchvisions_random_resized_crop_draws_them():
    from torchvision.transforms import v2

    n, size = 10_000, 72
    ours = devicedata.resized_crop_boxes(n, size, torch.Generator().manual_seed(0))
    rrc, probe = v2.RandomResizedCrop(size), torch.empty(0, size, size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        theirs = torch.tensor([[p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]]
                               for p in (rrc.make_params([probe]) for _ in range(n))], dtype=torch.float32)
    for boxes in (ours, theirs):
        assert boxes.min() >= 0 and boxes.max() <= size and bool(((boxes[:, 2:] - boxes[:, :2]) >= 1).all())

    def summary(boxes):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        whole = ((w == size) & (h == size)).float().mean()
        slack = torch.stack([boxes[:, 0] / (size - w + 1), boxes[:, 1] / (size - h + 1)])  # offset in its range
        return torch.stack([(w * h).mean() / size**2, torch.log(w / h).mean(), torch.log(w / h).std(), whole,
                            slack.mean()])

    torch.testing.assert_close(summary(ours), summary(theirs), atol=0.015, rtol=0)
