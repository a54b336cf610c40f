"""Data pipeline: loader-only images/s (decode, augmentation, batching; the job's own DataLoader
settings) vs the model's training images/s, for the quickstart and real CIFAR-10 jobs; then the
data paths side by side on one process: the DataLoader's per-image PIL augmentation with and
without RandAugment, and the on-device path (snp_service.devicedata, here on the CPU).

    python -m bench.loader [--quick]

The loader must not starve training: target loader >= 3x training images/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.common import REPO, images_per_s, stamp, table, verdict, write_section
from snp_service import devicedata
from snp_service.data import build_datasets
from snp_service.spec import load_spec
from snp_service.train import autocast_dtype, make_optimizer

TITLE = "5. Data pipeline: loader vs training"
JOBS = ["jobs/quickstart.yaml", "jobs/cifar10_real.yaml"]


def training_images_per_s(spec, num_classes: int, steps: int) -> float:
    torch.manual_seed(0)
    model = spec.model.build(num_classes, spec.dataset.image_size).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, spec.train)
    dtype = autocast_dtype(spec.train.precision, torch.device("cpu"))
    b, s = spec.train.batch_size, spec.dataset.image_size
    x = torch.randn(b, 3, s, s).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (b,))
    model.train()

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x).float(), y, label_smoothing=spec.train.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return b * steps / (time.perf_counter() - t0)


def run(quick: bool = False) -> None:
    rows = []
    for rel in JOBS:
        path = REPO / rel
        spec = load_spec(path)
        if not Path(spec.dataset.root).exists() and spec.dataset.synthetic is None:
            rows.append([rel, "dataset not on this machine", "", "", "", ""])
            continue
        data = build_datasets(spec.dataset, seed=spec.train.seed, augment=True)
        w = spec.dataset.num_workers
        loader = DataLoader(data.train, batch_size=spec.train.batch_size, shuffle=True, num_workers=w,
                            persistent_workers=w > 0, pin_memory=torch.cuda.is_available())
        max_batches = min(len(loader) - 1, 10 if quick else 30)
        lps = images_per_s(loader, max_batches)
        tps = training_images_per_s(spec, data.num_classes, 3 if quick else 6)
        rows.append([rel, f"{spec.model.name}, batch {spec.train.batch_size}, num_workers {w}",
                     f"{lps:.0f}", f"{tps:.0f}", f"{lps / tps:.1f}x", f">= 3x: {verdict(lps / tps, 3.0)}"])
        print(rows[-1], flush=True)
    body = stamp("python -m bench.loader" + (" --quick" if quick else ""))
    body += ("\nLoader-only: the job's training DataLoader (its dataset, augmentation, batch size and "
             "`dataset.num_workers`) iterated without a model. Training: the job's model step (forward, backward, "
             "AdamW; the service's default sdpa + channels_last, `precision: auto`) on random tensors, all cores.\n\n")
    body += table(["job", "setup", "loader img/s", "training img/s", "ratio", "target"], rows)
    body += paths(quick)
    write_section(TITLE, body)


def paths(quick: bool) -> str:
    """The three data paths on one process over the same training split, side by side."""
    rel = JOBS[1] if Path(load_spec(REPO / JOBS[1]).dataset.root).exists() else JOBS[0]
    spec = load_spec(REPO / rel)
    b, batches = spec.train.batch_size, 10 if quick else 30
    rows = []
    for label, ra in (("DataLoader: PIL crop + flip", False), ("DataLoader: PIL crop + flip + RandAugment", True)):
        ds = spec.dataset.model_copy(update={"augment": spec.dataset.augment.model_copy(update={"randaugment": ra})})
        data = build_datasets(ds, seed=spec.train.seed, augment=True)
        loader = DataLoader(data.train, batch_size=b, shuffle=True, num_workers=0)
        rows.append([label, images_per_s(loader, min(len(loader) - 1, batches))])
    plain = build_datasets(spec.dataset, seed=spec.train.seed, augment=False)
    t0 = time.perf_counter()
    key = {"bench": "loader", "root": plain.root, "n": len(plain.train), "spec": spec.dataset.model_dump(mode="json")}
    images, labels = devicedata.decode(plain.train, spec.dataset, key)
    decode_s = time.perf_counter() - t0
    dev = devicedata.for_dataset(images, labels, spec.dataset, b, torch.device("cpu"), train=True, drop_last=True)
    it = iter(dev)
    next(it)
    t0, seen = time.perf_counter(), 0
    for i, (x, _y) in enumerate(it):
        seen += len(x)
        if i + 1 >= min(len(dev) - 1, batches):
            break
    rows.append(["on-device path (here the CPU): uint8 tensor, batched crop + flip", seen / (time.perf_counter() - t0)])
    base = rows[0][1]
    out = (f"\nData paths side by side ({rel}'s training split, batch {b}, one process, `num_workers` 0, so each "
           "figure is one CPU core's worth of the DataLoader path). The on-device path had the split decoded "
           f"before it was timed ({len(labels):,} images; {decode_s:.1f} s to decode them, or to read them from the "
           "decode cache when an earlier run decoded them).\n\n")
    out += table(["path", "img/s", "vs PIL crop + flip"], [[r[0], f"{r[1]:.0f}", f"{r[1] / base:.2f}x"] for r in rows])
    ra = rows[1][1]
    out += (f"\nWhat RandAugment costs where it stays on the DataLoader path: one CPU worker gives {ra:.0f} img/s "
            f"with it ({base / ra:.1f}x fewer than without), so a GPU training at N img/s needs about N / {ra:.0f} "
            "DataLoader workers (`dataset.num_workers`) and as many CPU cores per training worker.\n")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    run(ap.parse_args().quick)
