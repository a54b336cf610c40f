"""Analysis cost: (a) readout training on captured features vs re-running the frozen network every
readout epoch; (b) the whole analysis (capture, readouts, SNP, heads, ANDC) of cct_2_3x2_32 through
the real pipeline vs one training epoch of the same job.

    python -m bench.analysis [--quick]

(b) runs the stepped (`adam`, the default) and solved (`lbfgs`) readouts side by side and keeps the
target's proportions (readouts on 5x as many training images as SNP test images) at a size this
2-core machine runs in minutes; every part of the analysis is linear in both counts, as is
the epoch, so the ratio carries over to 50,000 / 10,000.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from bench.common import CIFAR10, stamp, table, timed, verdict, write_section
from snp_service.readout import Readout, as_nodes_positions, capture, train_readout

TITLE = "2. Analysis cost"
POINT = "blocks.1.out"


def rerun_readout(model, dataset, point: str, num_labels: int, kind: str, epochs: int, lr: float,
                  seed: int = 0, batch_size: int = 256) -> Readout:
    """The naive way: every readout epoch runs the frozen network over the images again and trains
    the readout on the activations it hooks (same optimiser, schedule and batch as train_readout)."""
    model.eval()
    got: dict[str, torch.Tensor] = {}
    hook = model.point_modules()[point].register_forward_hook(lambda _m, _i, out: got.__setitem__("a", out))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    readout = None
    try:
        for _ in range(epochs):
            for x, y in loader:
                with torch.no_grad():
                    model(x)
                a = as_nodes_positions(got["a"]).to(torch.float16).float()  # as stored by capture
                if readout is None:
                    torch.manual_seed(seed)
                    readout = Readout(a.shape[1], a.shape[2], num_labels, kind)
                    opt = torch.optim.Adam(readout.parameters(), lr=lr, weight_decay=1e-4)
                    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                        opt, T_max=epochs * math.ceil(len(dataset) / batch_size))
                loss = nn.functional.cross_entropy(readout(a), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        hook.remove()
    return readout


def features_vs_rerun(per_class: int, epochs: int) -> list:
    from snp_service.data import build_datasets
    from snp_service.spec import DatasetSpec, ModelSpec

    data = build_datasets(DatasetSpec(name="imagefolder", root=str(CIFAR10), max_per_class=per_class,
                                      eval_max_per_class=10), augment=False)
    torch.manual_seed(0)
    model = ModelSpec(name="cct_2_3x2_32").build(data.num_classes, 32)
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        def on_features():
            feats = capture(model, data.train, [POINT], Path(tmp))
            train_readout(feats.points[POINT], feats.labels, data.num_classes, "seqpool", epochs, 1e-2)

        fast = timed(on_features)
    slow = timed(lambda: rerun_readout(model, data.train, POINT, data.num_classes, "seqpool", epochs, 1e-2))
    return [f"{POINT} (seqpool), {len(data.train)} images, {epochs} readout epochs", f"{slow:.1f}",
            f"{fast:.1f}", f"{slow / fast:.1f}x", f">= 5x: {verdict(slow / fast, 5.0)}"]


ANALYSIS_STAGES = ("measure", "cluster", "heads", "prune", "structure")  # every stage after evaluate but the report


def cifar10_spec(train_per_class: int, eval_per_class: int, root: Path, solver: str) -> dict:
    """The real CIFAR-10 job's network (jobs/cifar10_real.yaml: cct_2_3x2_32 on the real archive) on a
    subset, 1 epoch."""
    return {"name": "bench-analysis",
            "dataset": {"name": "imagefolder", "root": str(CIFAR10), "max_per_class": train_per_class,
                        "eval_max_per_class": eval_per_class, "num_workers": 1},
            "model": {"name": "cct_2_3x2_32"},
            "train": {"epochs": 1, "batch_size": 128},
            "analysis": {"readout_solver": solver},
            "pruning": {"enabled": True},
            "storage": {"root": str(root)},
            "compute": {"num_workers": 1, "cpus_per_worker": 2}}


def quickstart_spec(root: Path, solver: str) -> dict:
    """jobs/quickstart.yaml as shipped (its synthetic data, network and pruning), 1 epoch."""
    import yaml

    from bench.common import REPO

    spec = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    spec["dataset"]["root"] = str(REPO / spec["dataset"]["root"])
    spec["train"]["epochs"] = 1
    spec["train"]["warmup_epochs"] = 0  # the shipped 1 warm-up epoch must be fewer than the epochs
    spec["analysis"] = {"readout_solver": solver}
    spec["storage"] = {"root": str(root)}
    return spec


def whole_analysis(spec_dict: dict, actors: bool = False) -> tuple[dict, float, dict]:
    """The real pipeline on a 1-epoch job: stage seconds and the epoch's seconds from the job's own
    records; with `actors`, then the measure stage's sharded work (actors.measure_on: capture,
    readouts, fields, tests and the prune work on that capture) timed again on the trained network
    with 1 actor of 2 CPUs and 2 actors of 1 CPU each."""
    import ray

    from snp_service import pipeline
    from snp_service.spec import spec_from_dict
    from snp_service.store import Store

    spec = spec_from_dict(spec_dict)
    scaling = {}
    with tempfile.TemporaryDirectory(prefix="ray-bench-", dir="/tmp") as rt:
        ray.init(num_cpus=2, _temp_dir=rt, include_dashboard=False, log_to_driver=False)
        try:
            pipeline.run(spec, progress=lambda m: print(f"  [analysis] {m}", flush=True))
            if actors:
                scaling = actor_scaling(spec)
        finally:
            ray.shutdown()
    job = Store.from_spec(spec.storage).job(spec.job_id())
    epoch = float(job.read_table("train/metrics.parquet")["train_seconds"][-1])
    seconds = {s: job.stage_result(s)["seconds"] for s in ANALYSIS_STAGES}
    return seconds, epoch, scaling


def actor_scaling(spec) -> dict[int, float]:
    """Seconds of the measure stage's sharded work on the finished job's network: {1: one actor of
    2 CPUs (2 torch threads), 2: two actors of 1 CPU each (the points split between them)}."""
    import time

    from snp_service.actors import measure_on, workers_for
    from snp_service.store import FILES
    from snp_service.store import Store

    weights = Store.from_spec(spec.storage).job(spec.job_id()).read_torch(FILES["weights"])
    points = spec.selected_points()
    out = {}
    for n, cpus in ((1, 2), (2, 1)):
        variant = spec.model_copy(update={"compute": spec.compute.model_copy(
            update={"snp_actors": n, "cpus_per_worker": cpus})})
        with workers_for(variant, points, "measure", lambda m: print(f"  [actors] {m}", flush=True)) as workers:
            t0 = time.perf_counter()
            measure_on(workers, variant, weights, points)
            out[n] = time.perf_counter() - t0
    return out


PROFILED = [("capture", "capture (frozen network over train + eval images, float16 memmaps)"),
            ("train_readout", "readout training (all points)"),
            ("solve_linear", "  of which: L-BFGS solves"),
            ("load_rows", "  of which: reading feature rows"),
            ("snp_accumulate", "SNP fields + matrices"),
            ("readout_accuracy", "readout accuracy"),
            ("masked_accuracies", "masked readouts scored in one pass (unpruned, each mask, the curve)"),
            ("finetune", "masked fine-tunes"),
            ("point_statistics", "node statistics + bootstrap")]


def profile_snp_stage(per_class: int, solver: str = "lbfgs") -> str:
    """cProfile of the measure stage's per-point work (snp_service.actors.measure_points) with the
    readout `solver` on real CIFAR-10, summarised by the service's own functions (cumulative seconds)."""
    import cProfile
    import pstats
    from snp_service.actors import measure_points
    from snp_service.spec import spec_from_dict

    spec = spec_from_dict({"name": "bench-profile", "model": {"name": "cct_2_3x2_32"}, "train": {"epochs": 1},
                           "dataset": {"name": "imagefolder", "root": str(CIFAR10), "max_per_class": per_class,
                                       "eval_max_per_class": max(10, per_class // 5), "num_workers": 0},
                           "analysis": {"readout_solver": solver}, "pruning": {"enabled": True}})
    torch.manual_seed(0)
    weights = spec.model.build(10, 32).state_dict()
    prof = cProfile.Profile()
    prof.enable()
    measure_points(spec, weights, spec.selected_points(), threads=2)
    prof.disable()
    stats = pstats.Stats(prof).stats
    total = max(v[3] for v in stats.values())
    rows = []
    for fn, label in PROFILED:
        cum = sum(v[3] for (file, _line, name), v in stats.items() if name == fn and "snp_service" in file)
        rows.append([label, f"{cum:.1f}", f"{100 * cum / total:.0f}%"])
    return (f"Profile of the measure stage's per-point work (cProfile of `measure_points`, {per_class * 10} "
            f"training / {max(10, per_class // 5) * 10} test images, 8 points, {solver} readouts, total {total:.1f} s):\n\n"
            + table(["part", "cumulative s", "share"], rows))


def readout_cpu_seconds(images: int = 2000, nodes: int = 128, tokens: int = 64, labels: int = 10) -> list[list[str]]:
    """CPU seconds (this process, all its threads: less sensitive to other processes' load than wall
    time) of fitting one seqpool and one flatten readout at a quickstart point's shape (cct_2_3x2_32 at
    32 px: 128 nodes, 64 tokens; 10 labels, 2,000 training images) on synthetic float16 features,
    stepped (adam, 20 epochs) vs solved (lbfgs)."""
    import time

    import numpy as np

    g = np.random.default_rng(0)
    y = np.arange(images) % labels
    feats = (np.random.default_rng(1).normal(size=(labels, nodes, tokens))[y] * 0.15
             + g.normal(size=(images, nodes, tokens))).astype(np.float16)
    rows = []
    for kind in ("seqpool", "flatten"):
        cpu = {}
        for solver in ("adam", "lbfgs"):
            t0 = time.process_time()
            r = train_readout(feats, y, labels, kind, 20, 1e-2, solver=solver)
            cpu[solver] = time.process_time() - t0
        solve = r.solve or {}
        rows.append([f"{kind}, {images} x {nodes} x {tokens}", f"{cpu['adam']:.1f}", f"{cpu['lbfgs']:.1f}",
                     f"{cpu['adam'] / cpu['lbfgs']:.1f}x", f"{solve.get('iterations')} it., max |grad| "
                     f"{solve.get('grad_max', float('nan')):.1e}"])
    return rows


def run_readouts_only() -> None:
    """`--readouts-only`: the readout solvers' CPU seconds alone (what a loaded shared machine can measure)."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    body = stamp("python -m bench.analysis --readouts-only")
    body += ("\n(c) One readout fitted on captured features, stepped (`readout_solver: adam`, 20 epochs) vs solved "
             "(`lbfgs`; a seqpool readout's pooling 2 stepped epochs, then W by L-BFGS), CPU seconds of this process "
             f"(torch threads: {torch.get_num_threads()}; load average {' '.join(load)}: the whole-analysis run (b) "
             "was not made at this load). The first L-BFGS in a process also imports torch._dynamo (seconds, once "
             "per worker); it is inside the first row's lbfgs figure.\n\n")
    body += table(["readout, images x nodes x tokens", "adam CPU s", "lbfgs CPU s", "ratio", "solve"],
                  readout_cpu_seconds())
    write_section(TITLE + " (readout solvers)", body)


def run(quick: bool = False, whole_only: bool = False, solvers: tuple[str, ...] = ("adam", "lbfgs")) -> None:
    if not whole_only:
        rows = [features_vs_rerun(100 if quick else 200, 10)]
        print(rows, flush=True)
        body = stamp("python -m bench.analysis" + (" --quick" if quick else ""))
        body += ("\n(a) Readout training on features captured once (float16 memmaps; capture time included) vs "
                 "re-running the frozen cct_2_3x2_32 over the images every readout epoch (same optimiser and "
                 "batches); real CIFAR-10 images, 1 process, all cores.\n\n")
        body += table(["readout", "re-run network s", "on captured features s", "ratio", "target"], rows)
        write_section(TITLE, body)
    tr, ev = (200, 40) if quick else (500, 100)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-analysis-") as tmp:
        for solver in solvers:  # the stepped readouts (before issue 27) and the solved ones, one run
            runs[f"CIFAR-10, {solver}"] = whole_analysis(cifar10_spec(tr, ev, Path(tmp) / solver, solver),
                                                          actors=solver == solvers[-1])
        runs[f"quickstart, {solvers[-1]}"] = whole_analysis(quickstart_spec(Path(tmp) / "quickstart", solvers[-1]),
                                                            actors=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    body = stamp("python -m bench.analysis --whole-only" + (" --quick" if quick else "")
                 + ("" if tuple(solvers) == ("adam", "lbfgs") else f" --solvers {' '.join(solvers)}"))
    body += (f"\n(b) The whole analysis through the pipeline (every stage after evaluate but the report: measure "
             f"(capture, readouts at every point, fields, label-dependence tests, and the prune work on the same "
             f"capture: ANDC + random + magnitude masks with their fine-tunes and the accuracy curve), cluster, heads, "
             f"prune (tables; its work came from the measure stage), structure (structural pruning, where the job "
             f"asks for it)), in training epochs of the same job (its one "
             f"epoch, Ray Train worker, 2 threads, `precision: auto`). Networks: the real CIFAR-10 job's "
             f"(cct_2_3x2_32 on the real archive, readouts on {tr * 10} training images, SNP on {ev * 10} test "
             f"images: the target's 5:1) with `analysis.readout_solver: adam` (20 stepped epochs per readout and "
             f"stepped fine-tunes, the default) and `lbfgs` (solved readouts and fine-tunes; METHOD.md 7.10) side "
             f"by side (those named by --solvers), and the quickstart's (jobs/quickstart.yaml as shipped, 1 epoch) "
             f"with the last of them. Load "
             f"average when written: {' '.join(load)}.\n\n")
    names = list(runs)
    rows = []
    for s in ANALYSIS_STAGES:
        rows.append([s] + [f"{runs[k][0][s]:.1f} s = {runs[k][0][s] / runs[k][1]:.2f}" for k in names])
    totals = {k: sum(r[0].values()) / r[1] for k, r in runs.items()}
    rows.append(["**whole analysis**"] + [f"{sum(runs[k][0].values()):.1f} s = **{totals[k]:.2f}**" for k in names])
    rows.append(["one training epoch"] + [f"{runs[k][1]:.1f} s = 1.00" for k in names])
    body += table(["stage"] + [f"{k}: seconds = epochs" for k in names], rows)
    body += "\nTarget: whole analysis <= 2 training epochs: " + "; ".join(
        f"{k} {verdict(2.0, totals[k])}" for k in names) + ".\n"
    scale_rows = []
    for k in names:
        sc = runs[k][2]
        if sc:
            scale_rows.append([k, f"{sc[1]:.1f}", f"{sc[2]:.1f}", f"{sc[1] / sc[2]:.2f}x",
                               f">= 1.6x: {verdict(sc[1] / sc[2], 1.6)}"])
    body += ("\n(d) The measure stage's sharded work (actors.measure_on: capture, readouts, fields, tests, the "
             "prune work on that capture) on the finished job's network, 1 SNP actor of 2 CPUs (2 torch threads) "
             "vs 2 actors of 1 CPU each (`compute.snp_actors: 2, cpus_per_worker: 1`), same Ray session, 2 CPUs "
             "in all.\n\n")
    body += table(["network", "1 actor s", "2 actors s", "ratio", "target"], scale_rows)
    if totals[f"CIFAR-10, {solvers[-1]}"] > 2.0:
        body += "\n" + profile_snp_stage(50 if quick else 100, solvers[-1])
    write_section(TITLE + " (whole analysis, solved and stepped)", body)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--readouts-only", action="store_true", help="only (c): the readout solvers' CPU seconds")
    ap.add_argument("--whole-only", action="store_true", help="only (b) and (d): the whole analysis, 2 actors vs 1")
    ap.add_argument("--solvers", nargs="+", default=["adam", "lbfgs"], choices=["adam", "lbfgs"],
                    help="readout solvers of the whole-analysis runs (the last also runs the quickstart and 2 actors vs 1)")
    args = ap.parse_args()
    if args.readouts_only:
        run_readouts_only()
    else:
        run(args.quick, args.whole_only, tuple(args.solvers))
