"""What every benchmark shares: the machine line, timing helpers and RESULTS.md sections.

A section is `## <title>` up to the next `## `; writing one replaces the section of the same title
(or appends it), so each benchmark can also be run on its own.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

RESULTS = Path(__file__).with_name("RESULTS.md")
REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
HEADER = ("# Benchmark results\n\nWritten by `python -m bench` (all benchmarks, about 15 minutes on the 2-core "
          "machine) or by each `python -m bench.<name>` for its own section. Every ratio compares a baseline and "
          "a candidate measured side by side in one run on one machine.\n")


def machine() -> str:
    import torch

    from snp_service.provenance import hardware

    hw = hardware()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = "AMX" if "amx_bf16" in flags else "AVX-512 bf16" if "avx512_bf16" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{hw['cpu']} ({isa}), {hw['cpu_count']} cores, {gpu}; torch {hw['torch']}, "
            f"Python {platform.python_version()}")


def stamp(command: str) -> str:
    return f"{date.today().isoformat()} · {machine()} · `{command}`\n"


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs) -> float:
    return statistics.median(xs)


def images_per_s(batches, max_batches: int) -> float:
    """Images per second over up to `max_batches` batches of (x, y), after the first (workers
    started, warm): the one throughput loop of the data benchmarks."""
    it = iter(batches)
    next(it)
    t0, seen = time.perf_counter(), 0
    for i, (x, _y) in enumerate(it):
        seen += len(x)
        if i + 1 >= max_batches:
            break
    return seen / (time.perf_counter() - t0)


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across
    fork + exec, so a child of a large parent would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "met"
    miss = target / value if higher_is_better else value / target
    return f"missed ({miss:.2f}x short)"


def sections(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    parts = text.split("\n## ")
    for part in parts[1:]:
        title = part.split("\n", 1)[0].strip()
        found[title] = "## " + part.rstrip() + "\n"
    return found


def write_section(title: str, body: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section `## title` of RESULTS.md."""
    text = path.read_text() if path.exists() else HEADER
    found = sections(text)
    found[title] = f"## {title}\n\n{body.rstrip()}\n"
    path.write_text(text.split("\n## ")[0].rstrip() + "\n\n" + "\n".join(found.values()))
    print(f"wrote section {title!r} of {path}", flush=True)
