"""Data paths for larger images (issue 26): real Flowers-102 (../shared/datasets/flowers-102.tar.gz,
JPEGs with a longer side of 256 px) at a training resolution above 64 px, side by side on one process:
the DataLoader path (every epoch decodes each JPEG and crops it with PIL) and the decoded-cache path
(snp_service.devicedata: each image decoded once at the job's resolution, cached as uint8, batches
cropped by RandomResizedCrop and flipped on the batch; here on the CPU, on a GPU the same code runs
there). Training and evaluation splits, and the one-off cost of decoding.

    python -m bench.images [--size 128] [--quick]

Without the real archive it falls back to synthetic Flowers-102-layout data (the figures then say so).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from bench.common import REPO, images_per_s, stamp, table, write_section
from snp_service import devicedata
from snp_service.data import build_datasets
from snp_service.spec import DatasetSpec

TITLE = "5b. Data paths for larger images: DataLoader vs decoded cache"
FLOWERS = REPO.parent / "shared" / "datasets" / "flowers-102.tar.gz"


def timed(fn, repeat: int) -> float:
    """Mean seconds of fn() over `repeat` calls."""
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


@contextmanager
def fresh_cache() -> Iterator[None]:
    """A throw-away SNP_CACHE, so that a decode is timed from the JPEGs, not read from an earlier run's cache."""
    old = os.environ.get("SNP_CACHE")
    with tempfile.TemporaryDirectory(prefix="snp-bench-cache-") as d:
        os.environ["SNP_CACHE"] = d
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("SNP_CACHE")
            else:
                os.environ["SNP_CACHE"] = old


def dataset(size: int, workdir: Path) -> tuple[DatasetSpec, str]:
    if FLOWERS.exists():
        return (DatasetSpec(name="flowers102", root=str(FLOWERS), image_size=size, train_split="trainval"),
                "Real Flowers-102 (train+val 2,040 / test 6,149 images, longer side 256 px)")
    spec = DatasetSpec(name="flowers102", root=str(workdir / "flowers"), image_size=size, train_split="trainval",
                       synthetic={"num_classes": 20, "train_per_class": 50, "test_per_class": 50, "image_size": 256})
    return spec, "Synthetic Flowers-102 layout (FLOWERS archive absent; 20 classes, 256 x 256 px)"


def run(quick: bool = False, size: int = 128, batch: int = 64) -> None:
    batches = 8 if quick else 24
    # one core each: torch's intra-op threads on per-image tensors only contend (a 10x slow-down on a
    # shared 2-core machine), and a DataLoader worker process runs with one thread anyway
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as work:
        ds, what = dataset(size, Path(work))
        data = build_datasets(ds, seed=0, augment=True)
        plain = build_datasets(ds, seed=0, augment=False)
        rows = []
        loader = DataLoader(data.train, batch_size=batch, shuffle=True, num_workers=0)
        rows.append(["training", "DataLoader: JPEG decode + PIL RandomResizedCrop + flip, per image",
                     images_per_s(loader, batches)])
        key = {"bench": "images", "data": plain.describe(), "dataset": ds.model_dump(mode="json")}
        decoded, decode_s = {}, {}
        with fresh_cache():
            for name, split in (("train", plain.train), ("eval", plain.eval)):
                t0 = time.perf_counter()
                decoded[name] = devicedata.decode(split, ds, {**key, "split": name})
                decode_s[name] = time.perf_counter() - t0
            t0 = time.perf_counter()
            devicedata.decode(plain.eval, ds, {**key, "split": "eval"})
            cached_s = time.perf_counter() - t0
        (train_images, train_labels), (eval_images, eval_labels) = decoded["train"], decoded["eval"]
        cpu = torch.device("cpu")
        dev = devicedata.for_dataset(train_images, train_labels, ds, batch, cpu, train=True, drop_last=True)
        rows.append(["training", "decoded cache: uint8 tensor, batched RandomResizedCrop + flip (on the CPU)",
                     images_per_s(dev, min(len(dev) - 1, batches))])
        evald = DataLoader(plain.eval, batch_size=256, shuffle=False, num_workers=0)
        rows.append(["evaluation", "DataLoader: JPEG decode + resize + centre crop, per image",
                     images_per_s(evald, min(len(evald) - 1, batches // 4 + 1))])
        dev_eval = devicedata.for_dataset(eval_images, eval_labels, ds, 256, cpu, train=False)
        rows.append(["evaluation", "decoded cache: uint8 tensor, normalised batches",
                     images_per_s(dev_eval, min(len(dev_eval) - 1, batches))])
        g = torch.Generator().manual_seed(0)
        boxes_ms = timed(lambda: devicedata.resized_crop_boxes(batch, size, g), 20) * 1e3
        rrc, probe = v2.RandomResizedCrop(size), torch.empty(0, size, size)
        one_by_one_ms = timed(lambda: [rrc.make_params([probe]) for _ in range(batch)], 20) * 1e3
    torch.set_num_threads(threads)
    base = {"training": rows[0][2], "evaluation": rows[2][2]}
    mb = (train_images.numel() + eval_images.numel()) / 2**20
    body = stamp(f"python -m bench.images --size {size}" + (" --quick" if quick else ""))
    body += (f"\n{what}, trained at {size} px, batch {batch} (evaluation 256); one process with one torch thread, "
             "`num_workers` 0, so each figure is one CPU core's worth (DataLoader workers scale theirs by the cores "
             "they get). The decoded cache is the `compute.data_on_device` path, timed here on the CPU; on a GPU the "
             "batches are cut, cropped and flipped there, crop boxes included. Load average "
             f"{load:.1f} when it started (other work shared the cores).\n\n")
    body += table(["split", "path", "img/s", "vs DataLoader"],
                  [[r[0], r[1], f"{r[2]:.0f}", f"{r[2] / base[r[0]]:.1f}x"] for r in rows])
    n_train, n_eval = len(train_labels), len(eval_labels)
    body += (f"\nOne-off cost of the cache: decoding the splits once at {size} px took {decode_s['train']:.1f} s "
             f"(training, {n_train:,} images, {n_train / decode_s['train']:.0f} img/s) and {decode_s['eval']:.1f} s "
             f"(evaluation, {n_eval:,}, {n_eval / decode_s['eval']:.0f} img/s); {mb:.0f} MB as uint8; the evaluation "
             f"split read back from the cache in {cached_s:.2f} s. A batch's {batch} crop boxes, drawn all at once "
             f"by RandomResizedCrop's rule: {boxes_ms:.1f} ms here (through torchvision's make_params, one box a "
             f"Python call: {one_by_one_ms:.1f} ms).\n")
    write_section(TITLE, body)
    print(body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128, help="training resolution (above 64 px: RandomResizedCrop)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    run(args.quick, args.size)
