"""Memory and disk: peak RSS and peak feature disk of the SNP stage's work (capture, readouts, SNP
accumulation, statistics, and the prune work on the same capture) for cct_7_3x1_32 (the paper's
network, 22 points) at every point, at two numbers of evaluation images, each in a fresh process,
everything else equal.

    python -m bench.memory                         # 2,000 and 20,000 evaluation images (the issue's sizes)
    python -m bench.memory --eval-images 200 2000  # the same 10x growth at a tenth of the forward passes

With `compute.feature_budget_gb` below one point's size every point is captured alone, processed and
released, so the peak disk should stay near one point's features (the largest, blocks.*.mlp.hidden),
not the network's 22, and the SNP matrices are streaming accumulators, so the peak RSS should not grow
with the number of evaluation images. Peak disk is the allocated size (st_blocks) of the feature
directory (SNP_FEATURES_DIR), polled every 50 ms by a thread of the measured process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import peak_rss_mb, stamp, table, verdict, write_section

TITLE = "3. Memory and disk of the SNP stage vs evaluation images"
MODEL = "cct_7_3x1_32"
CLASSES = 20
TRAIN_PER_CLASS = 10


def bench_spec(root: str, eval_images: int):
    from snp_service.spec import spec_from_dict

    return spec_from_dict({
        "name": "bench-memory",
        "dataset": {"name": "cifar100", "root": root, "num_workers": 0,
                    "synthetic": {"num_classes": CLASSES, "train_per_class": TRAIN_PER_CLASS,
                                  "test_per_class": eval_images // CLASSES}},
        "model": {"name": MODEL},
        "train": {"epochs": 1},
        "analysis": {"readout_epochs": 1, "bootstrap": 100},
        "pruning": {"enabled": True, "finetune_epochs": 1, "curve_thresholds": [0.5]},
        "measure": {"points": ["all"]},
        "compute": {"feature_budget_gb": 0.001},  # below every point: each point alone
    })


def disk_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass  # removed between the walk and the stat
    return total


def child(eval_images: int, root: str, generate: bool) -> None:
    import torch

    from snp_service.actors import feature_bytes, measure_points
    from snp_service.data import build_datasets

    spec = bench_spec(root, eval_images)
    data = build_datasets(spec.dataset, augment=False)
    if generate:  # a separate process writes the files, so their generation is not in the measured peak
        return
    images = len(data.train) + len(data.eval)
    torch.manual_seed(0)
    weights = spec.model.build(data.num_classes, 32).state_dict()
    del data
    features = Path(os.environ["SNP_FEATURES_DIR"])
    peak_disk, stop = [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak_disk[0] = max(peak_disk[0], disk_bytes(features))
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    before = peak_rss_mb()
    t0 = time.perf_counter()
    poller.start()
    points = spec.selected_points()
    measure_points(spec, weights, points, threads=2)
    stop.set()
    poller.join()
    info = spec.points()
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "before_mb": before, "seconds": time.perf_counter() - t0,
                      "peak_disk_mb": peak_disk[0] / 2**20, "points": len(points), "images": images,
                      "largest_point_mb": max(feature_bytes(info[p], images) for p in points) / 2**20,
                      "all_points_mb": sum(feature_bytes(info[p], images) for p in points) / 2**20}))


def measure(eval_images: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        env = {**os.environ, "SNP_FEATURES_DIR": str(Path(tmp) / "features")}
        (Path(tmp) / "features").mkdir()
        for mode in ("--generate", "--child"):
            r = subprocess.run([sys.executable, "-m", "bench.memory", mode, str(eval_images), tmp],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], env=env)
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(sizes: list[int]) -> None:
    small, large = (measure(n) for n in sizes)
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
    print(small, large, flush=True)
    cmd = "python -m bench.memory" + ("" if sizes == [2000, 20000] else f" --eval-images {sizes[0]} {sizes[1]}")
    body = stamp(cmd)
    body += (f"\n{MODEL} at all {small['points']} points, readouts on {CLASSES * TRAIN_PER_CLASS} training images "
             f"(1 readout epoch), ANDC with random and magnitude baselines on the same capture; synthetic 32x32 "
             f"images in the CIFAR-100 file layout ({CLASSES} classes); `compute.feature_budget_gb` below one point, "
             "so every point is captured alone; `snp_service.actors.measure_points` in a fresh process per size. "
             "Peak RSS from /proc/self/status VmHWM (includes the memory-mapped feature pages the process touched); "
             "peak disk: allocated bytes of the feature directory, polled every 50 ms.\n\n")
    rows = []
    for n, m in zip(sizes, (small, large)):
        rows.append([f"{n:,}", f"{m['peak_rss_mb']:.0f}", f"{m['before_mb']:.0f}", f"{m['peak_disk_mb']:.0f}",
                     f"{m['largest_point_mb']:.0f}", f"{m['all_points_mb']:.0f}",
                     f"{m['peak_disk_mb'] / m['largest_point_mb']:.2f}", f"{m['seconds']:.0f}"])
    body += table(["evaluation images", "peak RSS MB", "RSS before the stage MB", "peak disk MB",
                   "largest point's features MB", "all points' features MB", "disk / largest point", "seconds"], rows)
    disk_ratio = max(m["peak_disk_mb"] / m["largest_point_mb"] for m in (small, large))
    body += (f"\nGrowth of the peak RSS from {sizes[0]:,} to {sizes[1]:,} images: {100 * growth:.1f}% (target < 20%: "
             f"{verdict(growth, 0.20, higher_is_better=False)}). Peak disk at most {disk_ratio:.2f}x the "
             f"largest point's features (target < 1.5x: {verdict(disk_ratio, 1.5, higher_is_better=False)}).\n")
    if sizes != [2000, 20000]:
        body += (f"\nWhy {sizes[0]:,} and {sizes[1]:,} and not the issue's 2,000 and 20,000: with every point captured "
                 "alone, the stage runs the network's forward pass over all images once per point (22 times; a pass "
                 f"stops at its point), so the 20,000-image run takes about {20000 / sizes[1]:.0f}x the "
                 f"{sizes[1]:,}-image run's {large['seconds']:,.0f} s on this machine. The same {sizes[1] // sizes[0]}x "
                 "growth is measured here; `python -m bench.memory` runs the issue's sizes.\n")
    body += ("\nThe RSS the stage adds is the same at both sizes (the network, one point's readout and batches, the "
             "allocator's caches), not features: those are memory-mapped and their pages released after each read. "
             "The seconds are not a timing result (other work may share the machine).\n")
    write_section(TITLE, body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--generate"):
        child(int(sys.argv[2]), sys.argv[3], sys.argv[1] == "--generate")
    else:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--quick", action="store_true", help="200 and 2,000 evaluation images")
        ap.add_argument("--eval-images", type=int, nargs=2, default=[2000, 20000], metavar=("SMALL", "LARGE"))
        a = ap.parse_args()
        run([200, 2000] if a.quick else a.eval_images)
