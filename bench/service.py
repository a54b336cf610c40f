"""Service overhead: a tiny job through `ray job submit` on a running local head (working directory
uploaded, runtime env, job driver) vs the same job run directly with `snp-service run`.

    python -m bench.service

Both are wall-clock times of the user's command, in the same run; the difference is the fixed cost
of going through the job API. (`snp-service run` starts a local Ray itself; a submitted job's driver
connects to the head's.)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

from bench.common import REPO, stamp, table, verdict, write_section
from snp_service.localdev import RAY_CLI

TITLE = "4. Service overhead of `ray job submit`"


def tiny_job(storage: str) -> dict:
    return {
        "name": "bench-tiny",
        "dataset": {"name": "cifar100", "root": "data", "num_workers": 0,
                    "synthetic": {"num_classes": 4, "train_per_class": 96, "test_per_class": 16, "noise": 0.3}},
        "model": {"name": "cct_2_3x2_32", "num_layers": 1, "embedding_dim": 32, "num_heads": 2},
        "train": {"epochs": 1, "batch_size": 32, "lr": 3e-3},
        "analysis": {"readout_epochs": 2, "bootstrap": 50},
        "heads": {"null_draws": 200},
        "storage": {"root": storage},
        "compute": {"num_workers": 1, "cpus_per_worker": 1},
    }


def workdir(tmp: Path, name: str) -> Path:
    """A working directory as a user has it: the package and the job file."""
    w = tmp / name
    w.mkdir()
    shutil.copytree(REPO / "snp_service", w / "snp_service", ignore=shutil.ignore_patterns("__pycache__"))
    (w / "job.yaml").write_text(yaml.safe_dump(tiny_job(str(tmp / f"results-{name}"))))
    return w


def run_direct(w: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "snp_service.cli", "run", "job.yaml"], cwd=w,
                       capture_output=True, text=True, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return time.perf_counter() - t0


def run_submitted(w: Path, address: str, *entrypoint: str, expect: str = "done:") -> float:
    """Wall time of `ray job submit --working-dir w -- ENTRYPOINT` to the head (the tiny job by default;
    `expect` must appear in its output)."""
    entrypoint = entrypoint or ("python", "-m", "snp_service.cli", "run", "job.yaml")
    t0 = time.perf_counter()
    r = subprocess.run(
        [RAY_CLI, "job", "submit", "--address", address, "--working-dir", str(w),
         "--submission-id", f"bench-{uuid.uuid4().hex[:8]}",
         "--runtime-env-json", '{"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}}', "--", *entrypoint],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "token"})
    if r.returncode != 0 or expect not in r.stdout:
        raise RuntimeError(r.stdout[-3000:] + r.stderr[-3000:])
    return time.perf_counter() - t0


def run_trivial(w: Path, address: str) -> float:
    """The job API's fixed cost alone: upload the same working directory, set up the runtime env,
    start a driver that imports the package and exits."""
    return run_submitted(w, address, "python", "-c", "import snp_service.pipeline", expect="")


def run(quick: bool = False) -> None:
    from snp_service.localdev import RayHead

    with tempfile.TemporaryDirectory(prefix="bench-service-") as t:
        tmp = Path(t)
        head = RayHead(num_cpus=2).start()
        try:
            direct, submitted = [], []
            for i in range(1):  # one each: a tiny job is ~70 s here
                direct.append(run_direct(workdir(tmp, f"direct{i}")))
                submitted.append(run_submitted(workdir(tmp, f"submitted{i}"), head.address))
                print(f"direct {direct[-1]:.1f} s, submitted {submitted[-1]:.1f} s", flush=True)
            trivial = run_trivial(workdir(tmp, "trivial"), head.address)
        finally:
            head.stop()
    d, s = min(direct), min(submitted)
    overhead = s - d
    body = stamp("python -m bench.service")
    body += ("\nA tiny job (1-layer CCT, 1 epoch on 384 synthetic images, every stage) run with "
             "`python -m snp_service.cli run job.yaml` vs submitted with `ray job submit --working-dir ... -- "
             "python -m snp_service.cli run job.yaml` to a running local head (`ray start --head`, 2 CPUs); "
             "one run each, in the same session.\n\n")
    body += table(["path", "wall s"], [["snp-service run (in-process, starts a local Ray)", f"{d:.1f}"],
                                       ["ray job submit (upload, runtime env, driver on the head)", f"{s:.1f}"],
                                       ["ray job submit of a driver that only imports snp_service.pipeline",
                                        f"{trivial:.1f}"]])
    body += (f"\nFixed overhead of the job API: {overhead:+.1f} s by difference (the submitted driver joins the "
             "running cluster instead of starting one, which can make it the faster of the two), and "
             f"{trivial:.1f} s for the whole round trip of a job that does nothing but import the package "
             f"(target < 15 s: {verdict(max(trivial, overhead, 0.01), 15.0, higher_is_better=False)}).\n")
    write_section(TITLE, body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one run of each instead of two")
    run(ap.parse_args().quick)
