"""Benchmark: one-pass fields (one einsum for all nodes) vs the literal silencing loop
(METHOD.md 2.4), at points of the sizes cct_2_3x2_32 has, on the same inputs in one run.

    python bench/bench_fields.py            # appends a dated section to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import torch

from snp_service.pipeline import hardware
from snp_service.snp import fields, fields_literal

# (label, inputs, nodes, positions, labels)
CASES = [
    ("seqpool readout, 128 nodes (blocks.m.out)", 512, 128, 1, 10),
    ("flatten readout, 128 nodes x 64 tokens (blocks.m.out)", 256, 128, 64, 10),
    ("conv map, 128 filters x 8x8 (tokenizer.1)", 256, 128, 64, 10),
]


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    for label, X, N, P, L in CASES:
        acts, w = torch.randn(X, N, P, dtype=torch.float64), torch.randn(L, N, P, dtype=torch.float64)
        fast = best_of(lambda: fields(acts, w), args.repeat)
        slow = best_of(lambda: fields_literal(acts, w), args.repeat)
        err = ((fields(acts, w) - fields_literal(acts, w)).abs().max() / fields_literal(acts, w).abs().max()).item()
        rows.append((label, X, fast, slow, slow / fast, err))
        print(f"{label}: one-pass {fast * 1e3:.2f} ms, literal {slow * 1e3:.1f} ms, ratio {slow / fast:.0f}x, "
              f"rel. err {err:.1e}")
    hw = hardware()
    lines = [f"\n## Fields: one pass vs literal silencing loop ({date.today().isoformat()})\n",
             f"Machine: {hw['cpu']}, {hw['cpu_count']} cores, torch {hw['torch']}, {platform.python_version()}; "
             f"float64, best of {args.repeat}. Command: `python bench/bench_fields.py`. Target: >= 50x at a point "
             "with 128 or more nodes.\n",
             "| point | inputs | one-pass ms | literal ms | ratio | max rel. error |", "|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2] * 1e3:.2f} | {r[3] * 1e3:.1f} | {r[4]:.0f}x | {r[5]:.1e} |" for r in rows]
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Benchmark results\n\nEach section is written by the command it names; "
                       "ratios compare two implementations measured side by side in one run.\n")
    with open(out, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
