"""Benchmark: the SNP stage of cct_2_3x2_32 on real CIFAR-10 vs one training epoch of the same
model on the same images, and the stage on 2 Ray actors vs 1 (each actor one torch thread),
with each actor's peak RSS. All measured side by side in one run on one machine.

    python bench/bench_snp_stage.py [--train-per-class 5000 --eval-per-class 1000]

The network is freshly initialised (seed 0): the stage's cost does not depend on the weights.
Appends a dated section to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from snp_service.data import build_datasets  # noqa: E402
from snp_service.provenance import hardware  # noqa: E402
from snp_service.actors import measure_on, start_workers  # noqa: E402
from snp_service.spec import spec_from_dict  # noqa: E402
from snp_service.train import autocast_dtype, make_optimizer  # noqa: E402

ARCHIVE = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def train_epoch_seconds(spec, data) -> tuple[float, int]:
    """One epoch of the training loop's work (forward, backward, AdamW) with torch on all cores."""
    model = spec.model.build(data.num_classes, spec.dataset.image_size)
    opt = make_optimizer(model, spec.train)
    dtype = autocast_dtype(spec.train.precision, torch.device("cpu"))
    loader = DataLoader(data.train, batch_size=spec.train.batch_size, shuffle=True, num_workers=1)
    model.train()
    t0, seen = time.perf_counter(), 0
    for x, y in loader:
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y, label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return time.perf_counter() - t0, seen


def stage_seconds(spec, weights, points, n_actors) -> tuple[float, list[float]]:
    actors = start_workers(spec, n_actors, threads=1, cpus=1)
    ray.get([a.pid.remote() for a in actors])  # started
    t0 = time.perf_counter()
    measure_on(actors, spec, weights, points)
    seconds = time.perf_counter() - t0
    rss = ray.get([a.peak_rss_mb.remote() for a in actors])
    for a in actors:
        ray.kill(a)
    return seconds, rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-per-class", type=int, default=5000)
    ap.add_argument("--eval-per-class", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    spec = spec_from_dict({
        "name": "bench-snp",
        "dataset": {"name": "imagefolder", "root": str(ARCHIVE), "max_per_class": args.train_per_class,
                    "eval_max_per_class": args.eval_per_class, "num_workers": 1},
        "model": {"name": "cct_2_3x2_32"},
        "train": {"epochs": 1, "batch_size": 128},
    })
    data = build_datasets(spec.dataset, augment=True)
    epoch_s, seen = train_epoch_seconds(spec, data)
    print(f"train epoch: {epoch_s:.1f} s for {seen} images ({seen / epoch_s:.0f} img/s)", flush=True)
    torch.manual_seed(0)
    weights = spec.model.build(data.num_classes, 32).state_dict()
    points = spec.selected_points()
    with tempfile.TemporaryDirectory(prefix="ray-bench-", dir="/tmp") as tmp:
        ray.init(num_cpus=2, _temp_dir=tmp, include_dashboard=False, log_to_driver=False)
        one, rss1 = stage_seconds(spec, weights, points, 1)
        print(f"SNP stage, 1 actor: {one:.1f} s, peak RSS {max(rss1):.0f} MB", flush=True)
        two, rss2 = stage_seconds(spec, weights, points, 2)
        print(f"SNP stage, 2 actors: {two:.1f} s, peak RSS {max(rss2):.0f} MB per actor", flush=True)
        ray.shutdown()
    hw = hardware()
    n_train, n_eval = len(data.train), len(data.eval)
    lines = [
        f"\n## SNP stage vs a training epoch; 2 actors vs 1 ({date.today().isoformat()})\n",
        f"Machine: {hw['cpu']}, {hw['cpu_count']} cores, torch {hw['torch']}. Command: `python bench/bench_snp_stage.py "
        f"--train-per-class {args.train_per_class} --eval-per-class {args.eval_per_class}`. Real CIFAR-10 (JPEG "
        f"archive), cct_2_3x2_32 freshly initialised, {len(points)} points, readouts on {n_train} training images "
        f"({spec.analysis.readout_epochs} epochs), SNP on {n_eval} test images; training epoch on the same "
        f"{n_train} images, batch 128, {hw['cpu_count']} torch threads, precision "
        f"{autocast_dtype(spec.train.precision, torch.device('cpu')) or 'float32'}.\n",
        "| measurement | value | target |", "|---|---|---|",
        f"| one training epoch | {epoch_s:.1f} s ({seen / epoch_s:.0f} img/s) | |",
        f"| SNP stage, 1 actor (1 thread) | {one:.1f} s = {one / epoch_s:.2f} epochs | <= 2 epochs |",
        f"| SNP stage, 2 actors (1 thread each) | {two:.1f} s = {two / epoch_s:.2f} epochs | |",
        f"| 2 actors vs 1 | {one / two:.2f}x | >= 1.6x |",
        f"| peak RSS of an actor (1 / 2 actors) | {max(rss1):.0f} / {max(rss2):.0f} MB | <= 3 GB |",
    ]
    with open(args.out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
