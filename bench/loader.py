"""Data pipeline: loader-only images/s (decode, augmentation, batching; the job's own DataLoader
settings) vs the model's training images/s, for the quickstart and real CIFAR-10 jobs.

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

from bench.common import REPO, stamp, table, verdict, write_section
from snp_service.data import build_datasets
from snp_service.spec import load_spec
from snp_service.train import autocast_dtype, make_optimizer

TITLE = "5. Data pipeline: loader vs training"
JOBS = ["jobs/quickstart.yaml", "jobs/cifar10_real.yaml"]


def loader_images_per_s(loader: DataLoader, max_batches: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first batch out
    t0, seen = time.perf_counter(), 0
    for i, (x, _y) in enumerate(it):
        seen += len(x)
        if i + 1 >= max_batches:
            break
    return seen / (time.perf_counter() - t0)


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
        lps = loader_images_per_s(loader, max_batches)
        tps = training_images_per_s(spec, data.num_classes, 3 if quick else 6)
        rows.append([rel, f"{spec.model.name}, batch {spec.train.batch_size}, num_workers {w}",
                     f"{lps:.0f}", f"{tps:.0f}", f"{lps / tps:.1f}x", f">= 3x: {verdict(lps / tps, 3.0)}"])
        print(rows[-1], flush=True)
    body = stamp("python -m bench.loader" + (" --quick" if quick else ""))
    body += ("\nLoader-only: the job's training DataLoader (its dataset, augmentation, batch size and "
             "`dataset.num_workers`) iterated without a model. Training: the job's model step (forward, backward, "
             "AdamW; the service's default sdpa + channels_last, `precision: auto`) on random tensors, all cores.\n\n")
    body += table(["job", "setup", "loader img/s", "training img/s", "ratio", "target"], rows)
    write_section(TITLE, body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    run(ap.parse_args().quick)
