"""Run every benchmark of issue 7 (and the fields benchmark) and rewrite bench/RESULTS.md.

    python -m bench            # about 15 minutes on the 2-core machine
    python -m bench --quick    # fewer rounds, smaller runs (a few minutes): a smoke test of the benchmarks
    python -m bench --only train loader

Sections of benchmarks not run in this invocation (e.g. `python bench/bench_snp_stage.py`,
`python bench/bench_prune.py`, which need a real dataset run or a finished job) are kept as they are,
each with the date and command that wrote it.
"""

from __future__ import annotations

import argparse
import importlib
import time

from bench.common import HEADER, RESULTS, sections

ORDER = ["train", "analysis", "memory", "service", "loader", "fields"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=ORDER, default=ORDER)
    args = ap.parse_args()
    old = sections(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.write_text(HEADER)  # rewritten: each benchmark adds its section in order
    t_all = time.perf_counter()
    done = []
    for name in ORDER:
        if name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"=== bench {name}", flush=True)
        if name == "fields":
            importlib.import_module("bench.bench_fields").main([])
        else:
            importlib.import_module(f"bench.{name}").run(args.quick)
        done.append(name)
        print(f"=== bench {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    new = sections(RESULTS.read_text())
    kept = [body for title, body in old.items() if title not in new]
    if kept:
        RESULTS.write_text(RESULTS.read_text().rstrip() + "\n\n" + "\n".join(kept))
    print(f"all benchmarks ({', '.join(done)}) in {time.perf_counter() - t_all:.0f} s; kept {len(kept)} older "
          f"section(s); wrote {RESULTS}")


if __name__ == "__main__":
    main()
