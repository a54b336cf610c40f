"""Benchmark: one-pass fields (one einsum for all nodes) vs the literal silencing loop
(METHOD.md 2.4), at points of the sizes cct_2_3x2_32 has, on the same inputs in one run.

    python -m bench.bench_fields            # rewrites its section of bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import time

import torch

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


TITLE = "Fields: one pass vs literal silencing loop"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
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
    from bench.common import stamp, table, write_section

    body = stamp(f"python -m bench.bench_fields --repeat {args.repeat}")
    body += f"\nfloat64, best of {args.repeat}. Target: >= 50x at a point with 128 or more nodes.\n\n"
    body += table(["point", "inputs", "one-pass ms", "literal ms", "ratio", "max rel. error"],
                  [[r[0], r[1], f"{r[2] * 1e3:.2f}", f"{r[3] * 1e3:.1f}", f"{r[4]:.0f}x", f"{r[5]:.1e}"] for r in rows])
    write_section(TITLE, body)


if __name__ == "__main__":
    main()
