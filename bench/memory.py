"""Memory: peak RSS of the SNP stage's work (capture, readouts, SNP accumulation, statistics) at
2,000 and 20,000 evaluation images, each in a fresh process, everything else equal.

    python -m bench.memory [--quick]

The SNP matrices are streaming accumulators (SNPAccumulator: sums over images, never a per-image
table), so the peak should not grow with the number of evaluation images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import peak_rss_mb, stamp, table, verdict, write_section

TITLE = "3. Memory of the SNP stage vs evaluation images"
POINTS = ["tokenizer.1", "blocks.0.attn.heads", "blocks.1.out"]


def child(test_per_class: int, root: str, generate: bool) -> None:
    import torch

    from snp_service.data import build_datasets
    from snp_service.actors import measure_points
    from snp_service.spec import spec_from_dict

    spec = spec_from_dict({
        "name": "bench-memory",
        "dataset": {"name": "cifar100", "root": root, "num_workers": 0,
                    "synthetic": {"num_classes": 20, "train_per_class": 50, "test_per_class": test_per_class}},
        "model": {"name": "cct_2_3x2_32"},
        "train": {"epochs": 1},
        "analysis": {"readout_epochs": 2, "bootstrap": 100},
        "measure": {"points": POINTS},
    })
    data = build_datasets(spec.dataset, augment=False)
    if generate:  # a separate process writes the files, so their generation is not in the measured peak
        return
    torch.manual_seed(0)
    weights = spec.model.build(data.num_classes, 32).state_dict()
    del data
    before = peak_rss_mb()
    t0 = time.perf_counter()
    measure_points(spec, weights, POINTS, threads=2)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "before_mb": before, "seconds": time.perf_counter() - t0}))


def measure(test_per_class: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for mode in ("--generate", "--child"):
            r = subprocess.run([sys.executable, "-m", "bench.memory", mode, str(test_per_class), tmp],
                               capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            if r.returncode != 0:
                raise RuntimeError(r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> None:
    small, large = measure(100), measure(1000)  # 20 classes: 2,000 and 20,000 evaluation images
    growth = large["peak_rss_mb"] / small["peak_rss_mb"] - 1
    print(small, large, flush=True)
    body = stamp("python -m bench.memory")
    body += (f"\ncct_2_3x2_32, points {', '.join(POINTS)}, readouts on 1,000 training images (2 epochs), "
             "synthetic 32x32 images in the CIFAR-100 file layout (20 classes); `snp_service.actors.measure_points` "
             "in a fresh process per size, peak RSS from /proc/self/status VmHWM (includes the memory-mapped feature pages "
             "the process touched).\n\n")
    body += table(["evaluation images", "peak RSS MB", "RSS before the stage MB", "seconds"],
                  [[f"{n:,}", f"{m['peak_rss_mb']:.0f}", f"{m['before_mb']:.0f}", f"{m['seconds']:.1f}"]
                   for n, m in ((2000, small), (20000, large))])
    body += f"\nGrowth of the peak from 2,000 to 20,000 images: {100 * growth:.1f}% (target < 20%: " \
            f"{verdict(0.20, max(growth, 1e-9))}).\n"
    write_section(TITLE, body)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("--child", "--generate"):
        child(int(sys.argv[2]), sys.argv[3], sys.argv[1] == "--generate")
    else:
        ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--quick", action="store_true", help="(same sizes: the measurement is the point)")
        run(ap.parse_args().quick)
