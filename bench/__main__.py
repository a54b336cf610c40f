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

ORDER = ["train", "analysis", "memory", "service", "loader", "images", "fields"]


def _module(name: str):
    return importlib.import_module(f"bench.{'bench_fields' if name == 'fields' else name}")


def _titles() -> list[str]:
    titles = []
    for name in ORDER:
        titles.append(_module(name).TITLE)
        if name == "train":
            titles.append("1b. Training throughput on a GPU")
    return titles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="+", choices=ORDER, default=ORDER)
    args = ap.parse_args()
    old = sections(RESULTS.read_text()) if RESULTS.exists() else {}
    # each benchmark replaces its own section as it finishes (an interrupted run loses nothing);
    # at the end the file is rewritten in a fixed order
    t_all = time.perf_counter()
    done, done_titles = [], []
    for name in ORDER:
        if name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"=== bench {name}", flush=True)
        if name == "fields":
            _module(name).main([])
        else:
            _module(name).run(args.quick)
        done.append(name)
        done_titles.append(_module(name).TITLE)
        print(f"=== bench {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    merged = sections(RESULTS.read_text())
    kept = [t for t in merged if t in old and t not in done_titles]
    # the order of ORDER, then the GPU section after the CPU training one, then the rest as they were
    rank = {t: i for i, t in enumerate(_titles())}
    ordered = sorted(merged, key=lambda t: (rank.get(t, len(rank)), list(merged).index(t)))
    RESULTS.write_text(HEADER.rstrip() + "\n\n" + "\n".join(merged[t] for t in ordered))
    print(f"all benchmarks ({', '.join(done)}) in {time.perf_counter() - t_all:.0f} s; kept {len(kept)} older "
          f"section(s); wrote {RESULTS}")


if __name__ == "__main__":
    main()
