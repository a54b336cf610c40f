"""Ray set-up and the point workers: actors that split a stage's measurement points among
themselves (the snp stage measures them, the prune stage prunes their readouts).

Each worker loads the trained weights (shipped once through Ray's object store), builds the
evaluation data itself, captures only its own points and runs the pure per-point work on them
(snp_service.measure, snp_service.prune). Points are assigned by a deterministic greedy balance of
their size, and every worker uses the same number of torch threads, so the result is the same
whatever the number of workers. A lost worker is restarted and its task retried by Ray itself
(max_restarts / max_task_retries).

Trade-off, stated: each worker runs the frozen network over the data for its own points, so the
forward passes are repeated once per worker; they are cheap next to readout training.
Not done yet: splitting one large point across workers by data shard (the SNP sums merge exactly,
see SNPAccumulator.merge, but the readout training would have to be shared first).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import torch

from snp_service.data import build_datasets
from snp_service.measure import PointResult, measure_point, readout_kind, snp_accumulate
from snp_service.prune import prune_point, selection_rows
from snp_service.readout import Features, Readout, capture
from snp_service.snp import normalise
from snp_service.spec import JobSpec

MAX_RESTARTS = 3
Progress = Callable[[str], None]


def ensure_ray(spec: JobSpec) -> None:
    """Connect to the job's Ray cluster (compute.address, or RAY_ADDRESS), or start a local one."""
    if ray.is_initialized():
        return
    address = spec.compute.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:  # a single-node Ray for this job alone: nothing else joins it, so it listens on loopback only
        ray.init(log_to_driver=True, _node_ip_address="127.0.0.1")


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def captured(spec: JobSpec, weights: dict, points: list[str], threads: int) -> Iterator[tuple[Features, Features, int]]:
    """Capture `points` of the trained network once on the training and evaluation splits (float16
    files in a temporary folder, removed afterwards): (train, evaluation, number of labels)."""
    features_dir = os.environ.get("SNP_FEATURES_DIR")  # default: the system temp dir
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="snp-features-", dir=features_dir) as tmp:
        data = build_datasets(spec.dataset, seed=spec.train.seed, augment=False, endpoint=spec.storage.endpoint)
        model = spec.model.build(data.num_classes, spec.dataset.image_size)
        model.load_state_dict(weights)
        yield capture(model, data.train, points, Path(tmp) / "train"), \
            capture(model, data.eval, points, Path(tmp) / "eval"), data.num_classes


def measure_points(spec: JobSpec, weights: dict, points: list[str], threads: int = 1) -> dict[str, PointResult]:
    """The snp stage's work on `points`, in this process: readout, fields, SNP matrices, statistics."""
    out = {}
    with captured(spec, weights, points, threads) as (train, evaluation, num_labels):
        for p in points:
            t0 = time.perf_counter()
            out[p] = measure_point(spec.points()[p], train.points[p], train.labels, evaluation.points[p],
                                   evaluation.labels, num_labels, spec.analysis)
            out[p].row["seconds"] = time.perf_counter() - t0
    return out


def prune_points(spec: JobSpec, weights: dict, points: list[str], inputs: dict, threads: int = 1) -> dict[str, dict]:
    """The prune stage's work on `points`, in this process. inputs[point]: the stored readout state
    ("readout"), the raw SNP matrices of the evaluation split ("raw") and whether to prune it
    ("andc"; a point measured only for structural pruning needs its selection matrices alone).
    Returns per point: ANDC rows and curve, and the raw SNP matrices of the selection images."""
    pr, info = spec.pruning, spec.points()
    out = {}
    with captured(spec, weights, points, threads) as (train, evaluation, num_labels):
        for p in points:
            readout = Readout(info[p].nodes, info[p].positions, num_labels, readout_kind(info[p], spec.analysis))
            readout.load_state_dict(inputs[p]["readout"])
            readout.eval()
            if pr.selection_split == "heldout":
                rows = selection_rows(len(train.labels), pr.selection_fraction, pr.seed)
                acc, _ = snp_accumulate(readout, train.points[p], train.labels, num_labels, rows=rows)
                raw = acc.snp_matrices(centred=spec.analysis.normalise == "centred")
                selection = f"heldout: {len(rows)} training images"
            else:
                raw = torch.as_tensor(inputs[p]["raw"], dtype=torch.float64)
                selection = "eval: the scoring images (paper protocol)"
            out[p] = {"rows": [], "curve": [], "selection_raw": raw.numpy().astype("float32"), "selection": selection}
            if inputs[p].get("andc", True):
                threshold = spec.analysis.threshold if pr.threshold is None else pr.threshold
                out[p]["rows"], out[p]["curve"] = prune_point(
                    p, readout, normalise(raw), train.points[p], train.labels, evaluation.points[p],
                    evaluation.labels, threshold, pr.curve_thresholds, pr.baselines, pr.finetune_epochs,
                    pr.finetune_lr, pr.seed, selection)
    return out


def assign(spec: JobSpec, points: list[str], n_workers: int) -> list[list[str]]:
    """Largest point first to the least loaded worker (ties: lower index); cost = nodes x positions."""
    info = spec.points()
    groups: list[list[str]] = [[] for _ in range(min(n_workers, len(points)))]
    load = [0] * len(groups)
    for p in sorted(points, key=lambda p: (-info[p].nodes * info[p].positions, points.index(p))):
        i = min(range(len(groups)), key=lambda j: (load[j], j))
        groups[i].append(p)
        load[i] += info[p].nodes * info[p].positions
    return [[p for p in points if p in g] for g in groups]  # keep forward order inside a group


@ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
class PointWorker:
    """One Ray actor of a stage: measures or prunes the points it is given."""

    def __init__(self, spec_json: dict, threads: int):
        self.spec, self.threads = JobSpec.model_validate(spec_json), threads

    def measure(self, weights: dict, points: list[str]) -> dict:
        return measure_points(self.spec, weights, points, self.threads)

    def prune(self, weights: dict, points: list[str], inputs: dict) -> dict:
        return prune_points(self.spec, weights, points, inputs, self.threads)

    def pid(self) -> int:
        return os.getpid()

    def peak_rss_mb(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def start_workers(spec: JobSpec, n_workers: int, threads: int, cpus: float) -> list:
    # DEFAULT: not inside the caller's placement group (a Tune trial reserves almost nothing itself)
    return [PointWorker.options(num_cpus=cpus, scheduling_strategy="DEFAULT").remote(spec.model_dump(mode="json"),
                                                                                      threads)
            for _ in range(n_workers)]


def _scatter(spec: JobSpec, points: list[str], workers: list, call: Callable, what: str, progress: Progress) -> dict:
    """Give each worker its group of points (`call(worker, group)` starts the task); results keyed
    by point, in `points` order."""
    groups = assign(spec, points, len(workers))
    pending = {call(w, g): g for w, g in zip(workers, groups)}
    results: dict = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        group = pending.pop(done[0])
        results.update(ray.get(done[0]))
        progress(f"{what}: worker finished {', '.join(group)} ({len(results)}/{len(points)} points)")
    return {p: results[p] for p in points}


def measure_on(workers: list, spec: JobSpec, weights: dict, points: list[str],
               progress: Progress = lambda _m: None) -> dict[str, PointResult]:
    ref = ray.put(weights)
    return _scatter(spec, points, workers, lambda w, g: w.measure.remote(ref, g), "snp", progress)


def prune_on(workers: list, spec: JobSpec, weights: dict, points: list[str], inputs: dict,
             progress: Progress = lambda _m: None) -> dict[str, dict]:
    ref = ray.put(weights)
    return _scatter(spec, points, workers, lambda w, g: w.prune.remote(ref, g, {p: inputs[p] for p in g}), "prune",
                    progress)


@contextmanager
def workers_for(spec: JobSpec, points: list[str], what: str, progress: Progress) -> Iterator[list]:
    """compute.snp_actors workers (no more than the points, nor than the cluster's CPUs hold),
    killed when the block ends."""
    ensure_ray(spec)
    c = spec.compute
    n = min(c.snp_actors, len(points))
    fit = max(1, int(ray.cluster_resources().get("CPU", 0) // c.cpus_per_worker))
    if n > fit:  # more would wait forever for CPUs on a fixed-size cluster
        progress(f"{what}: the cluster holds {fit} worker(s) of {c.cpus_per_worker} CPU(s), not {n}; using {fit}")
        n = fit
    workers = start_workers(spec, n, max(1, int(c.cpus_per_worker)), c.cpus_per_worker)
    progress(f"{what}: {len(points)} points on {len(workers)} Ray worker(s)")
    try:
        yield workers
    finally:
        for w in workers:
            ray.kill(w)
