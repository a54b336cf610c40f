"""The SNP stage on Ray: actors split the selected measurement points among themselves.

Each actor loads the trained weights (shipped once through Ray's object store), builds the
evaluation data itself, captures only its own points and measures them (snp_service.analysis).
Points are assigned by a deterministic greedy balance of their size, and every actor uses the same
number of torch threads, so the result is the same whatever the number of actors. A lost actor is
restarted and its task retried by Ray itself (max_restarts / max_task_retries).

Trade-off, stated: each actor runs the frozen network over the data for its own points, so the
forward passes are repeated once per actor; they are cheap next to readout training.
Not done yet: splitting one large point across actors by data shard (the SNP sums merge exactly,
see SNPAccumulator.merge, but the readout training would have to be shared first).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import torch

from snp_service.analysis import PointResult, measure_point
from snp_service.spec import JobSpec

MAX_RESTARTS = 3


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def prune_readout(spec: JobSpec, info, inputs: dict, train, evaluation, num_labels: int) -> dict:
    """The prune task of one point: rebuild its stored readout, compute the SNP matrices of the
    selection images (pruning.selection_split), then run ANDC and the baselines when inputs["andc"]
    (a point measured only for structural pruning needs the selection matrices alone)."""
    from snp_service.analysis import readout_kind, snp_accumulate
    from snp_service.prune import prune_point, selection_rows
    from snp_service.readout import Readout
    from snp_service.snp import normalise

    pr = spec.pruning
    readout = Readout(info.nodes, info.positions, num_labels, readout_kind(info, spec.analysis))
    readout.load_state_dict(inputs["readout"])
    readout.eval()
    if pr.selection_split == "heldout":
        rows_idx = selection_rows(len(train.labels), pr.selection_fraction, pr.seed)
        acc, _ = snp_accumulate(readout, train.points[info.name], train.labels, num_labels, rows=rows_idx)
        raw = acc.snp_matrices(centred=spec.analysis.normalise == "centred")
        selection = f"heldout: {len(rows_idx)} training images"
    else:
        raw = torch.as_tensor(inputs["raw"], dtype=torch.float64)
        selection = "eval: the scoring images (paper protocol)"
    out = {"rows": [], "curve": [], "selection_raw": raw.numpy().astype("float32"), "selection": selection}
    if inputs.get("andc", True):
        threshold = spec.analysis.threshold if pr.threshold is None else pr.threshold
        out["rows"], out["curve"] = prune_point(
            info.name, readout, normalise(raw), train.points[info.name], train.labels, evaluation.points[info.name],
            evaluation.labels, threshold, pr.curve_thresholds, pr.baselines, pr.finetune_epochs, pr.finetune_lr,
            pr.seed, selection)
    return out


def measure_points(spec: JobSpec, weights: dict, points: list[str], threads: int = 1, task: str = "snp",
                   inputs: dict | None = None) -> dict:
    """Capture `points` of the trained model once (train and eval splits), then run `task` on each:
    `snp` measures the point (PointResult); `prune` prunes its readout (inputs[point] holds the
    stored readout state and raw SNP matrices)."""
    from snp_service.data import build_datasets
    from snp_service.models import create_model
    from snp_service.readout import capture

    info = spec.points()
    features_dir = os.environ.get("SNP_FEATURES_DIR")  # default: the system temp dir
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="snp-features-", dir=features_dir) as tmp:
        data = build_datasets(spec.dataset, seed=spec.train.seed, augment=False, endpoint=spec.storage.endpoint)
        model = create_model(spec.model, data.num_classes, spec.dataset.image_size)
        model.load_state_dict(weights)
        train = capture(model, data.train, points, Path(tmp) / "train")
        evaluation = capture(model, data.eval, points, Path(tmp) / "eval")
        out = {}
        for p in points:
            t0 = time.perf_counter()
            if task == "prune":
                out[p] = prune_readout(spec, info[p], inputs[p], train, evaluation, data.num_classes)
                continue
            out[p] = measure_point(info[p], train.points[p], train.labels, evaluation.points[p], evaluation.labels,
                                   data.num_classes, spec.analysis)
            out[p].row["seconds"] = time.perf_counter() - t0
        return out


def assign(spec: JobSpec, points: list[str], n_actors: int) -> list[list[str]]:
    """Largest point first to the least loaded actor (ties: lower index); cost = nodes x positions."""
    info = spec.points()
    groups: list[list[str]] = [[] for _ in range(min(n_actors, len(points)))]
    load = [0] * len(groups)
    for p in sorted(points, key=lambda p: (-info[p].nodes * info[p].positions, points.index(p))):
        i = min(range(len(groups)), key=lambda j: (load[j], j))
        groups[i].append(p)
        load[i] += info[p].nodes * info[p].positions
    return [[p for p in points if p in g] for g in groups]  # keep forward order inside a group


def _actor_class():
    import ray

    @ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
    class SNPShard:
        def __init__(self, spec_json: dict, threads: int):
            self.spec, self.threads = JobSpec.model_validate(spec_json), threads

        def measure(self, weights: dict, points: list[str], task: str = "snp", inputs: dict | None = None) -> dict:
            return measure_points(self.spec, weights, points, self.threads, task, inputs)

        def pid(self) -> int:
            import os

            return os.getpid()

        def peak_rss_mb(self) -> float:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    return SNPShard


def start_actors(spec: JobSpec, n_actors: int, threads: int, cpus: float) -> list:
    SNPShard = _actor_class()
    # DEFAULT: not inside the caller's placement group (a Tune trial reserves almost nothing itself)
    return [SNPShard.options(num_cpus=cpus, scheduling_strategy="DEFAULT").remote(spec.model_dump(mode="json"), threads)
            for _ in range(n_actors)]


def run_sharded(spec: JobSpec, weights: dict, points: list[str], actors: list,
                progress: Callable[[str], None] = lambda _m: None, task: str = "snp",
                inputs: dict | None = None) -> dict:
    """Run `task` on `points` over `actors` (one task each); results keyed by point, in `points` order."""
    import ray

    weights_ref = ray.put(weights)
    groups = assign(spec, points, len(actors))
    pending = {actor.measure.remote(weights_ref, g, task, {p: inputs[p] for p in g} if inputs else None): g
               for actor, g in zip(actors, groups)}
    results: dict[str, PointResult] = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        group = pending.pop(done[0])
        results.update(ray.get(done[0]))
        progress(f"{task}: shard finished {', '.join(group)} ({len(results)}/{len(points)} points)")
    return {p: results[p] for p in points}
