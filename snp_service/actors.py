"""Ray set-up and the point workers: actors that split a stage's measurement points among
themselves (the measure stage measures them, the prune stage prunes their readouts).

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

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import ray
import torch
from ray._common.network_utils import parse_address  # ray.init's own host:port split

from snp_service.console import bars_enabled, token_auth_quietly
from snp_service.data import build_datasets
from snp_service.errors import SnpError
from snp_service.interrupts import POLL_SECONDS, call_in_helper, stop_point
from snp_service.measure import PointResult, measure_point, readout_kind, snp_accumulate
from snp_service.prune import prune_point, selection_rows
from snp_service.readout import Features, Readout, capture
from snp_service.snp import normalisation_flags, normalise
from snp_service.spec import JobSpec
from snp_service.structural import cost, prune_cct
from snp_service.train import autocast_dtype, evaluate, finetune_network, free_resources_text

MAX_RESTARTS = 3
CONNECT_SECONDS = 5.0  # a cluster address that does not answer a TCP connection in this time is refused
Progress = Callable[[str], None]


def ray_address(spec: JobSpec) -> str | None:
    """The Ray cluster a driver running here joins: compute.address, else RAY_ADDRESS, else None (a
    local Ray for the job). Checked before anything is written (pipeline.run)."""
    address = spec.compute.address or os.environ.get("RAY_ADDRESS")
    if address and address.startswith(("http://", "https://")):
        raise SnpError(f"Ray address {address!r} (compute.address or RAY_ADDRESS) is a dashboard's job API: "
                       "`snp-service submit` uses it; a driver running here needs the cluster's address (host:6379, "
                       "`auto` on a cluster node, or ray://host:10001), or no address for a local Ray")
    if address and address not in ("auto", "local"):
        if host_port(address) is None:
            raise SnpError(f"Ray address {address!r} (compute.address or RAY_ADDRESS) is not an address: expected "
                           "host:port (the cluster's GCS, e.g. head:6379), ray://host:10001, or auto")
        check_reachable(address)
    return address


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a host:port or ray://host:port address, split by Ray's own parser (the one
    ray.init's canonicalize_bootstrap_address uses: at the last colon, an IPv6 host in brackets), or
    None. The port must be a number from 1 to 65535 as well: Ray's parser takes whatever follows
    the colon, so `head:notaport` would fail only when ray.init connects, after the data stage."""
    parts = parse_address(address.removeprefix("ray://"))
    if parts is None or not parts[0] or not (parts[1].isascii() and parts[1].isdigit()) \
            or not 0 < int(parts[1]) < 65536:
        return None
    return parts[0], int(parts[1])


def check_reachable(address: str) -> None:
    """A host:port (or ray://host:port) Ray address must accept a TCP connection within
    CONNECT_SECONDS; else one message now, before anything is written (ray.init would retry for
    minutes, and only at the train stage, after the data stage was recorded)."""
    try:
        socket.create_connection(host_port(address), timeout=CONNECT_SECONDS).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise SnpError(f"Ray address {address!r} (compute.address or RAY_ADDRESS): nothing answers there ({why}, "
                       f"waited {CONNECT_SECONDS:g} s); start the cluster (`ray start --head`) or correct the "
                       "address; nothing was written") from None


def ensure_ray(spec: JobSpec) -> None:
    """Connect to the job's Ray cluster (ray_address), or start a local one."""
    if ray.is_initialized():
        return
    address = ray_address(spec)
    kwargs = {"address": address} if address else {"_node_ip_address": "127.0.0.1"}  # a local Ray: loopback only
    if not address:
        token_auth_quietly(new_cluster=True)  # what Ray decides for a new local cluster, without its warning
    try:
        start_ray(**kwargs, log_to_driver=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise SnpError(f"cannot connect to the Ray cluster at {address!r}: {str(e).splitlines()[0][:200]}") from None


RAY_START_GRACE_SECONDS = 60.0  # an interrupted driver lets Ray finish starting, so its shutdown stops it all


def start_ray(**kwargs) -> None:
    """`ray.init(**kwargs)` in a helper thread that lives as long as the driver
    (interrupts.call_in_helper, park). In the main thread, ray.init puts its own SIGTERM handler in
    place while it starts the cluster (seconds): a SIGTERM then ended the driver with exit 15 and no
    message, or, handled inside a fork hook of the processes it starts, was dropped and the job ran
    on to the end. From a helper thread Ray leaves the handlers alone (it logs that it does; that
    line is dropped here) and the calling thread waits in Python, where an interrupt is taken at
    once. The helper is never a heads study's member thread either: Ray's processes are killed when
    the thread that started them ends (PR_SET_PDEATHSIG), which took the cluster from the members
    still running when the member that had started it finished."""
    quiet = _DropLine("SIGTERM handler is not set")
    log = logging.getLogger("ray._private.worker")
    log.addFilter(quiet)
    try:
        call_in_helper(lambda: ray.init(**kwargs), "ray.init", grace_on_interrupt=RAY_START_GRACE_SECONDS, park=True)
    finally:
        log.removeFilter(quiet)


class _DropLine(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def wait_get(refs, poll: float = POLL_SECONDS, timeout: float | None = None):
    """`ray.get(refs)`, waited for in slices of `poll` seconds with a stop point between them
    (interrupts.stop_point): a heads study's member told to stop on an interrupt
    (studies.stop_members) stops at once, not when the task ends. Past `timeout` seconds (None: no
    limit) with some not ready: ray.exceptions.GetTimeoutError, as ray.get(timeout=) raises."""
    pending = list(refs) if isinstance(refs, list) else [refs]
    deadline = None if timeout is None else time.monotonic() + timeout
    while pending:
        wait = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=wait)
        stop_point()
        if pending and deadline is not None and time.monotonic() >= deadline:
            raise ray.exceptions.GetTimeoutError(f"{len(pending)} of the objects not ready within {timeout:g} s")
    return ray.get(refs)


@contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def progress_bar(desc: str, total: int) -> Iterator:
    """A progress bar that shows in the driver's console also from a Ray actor (Ray's tqdm
    integration), only when the CLI's output is a terminal (console.bars_enabled; --quiet: never).
    Written to a file (no bars, not --quiet), each piece of work is one plain line when it ends
    (`[snp-service] measure blocks.0.out: done in 42 s`), so a log of a long stage still shows it moving."""
    if not bars_enabled() or not ray.is_initialized():
        class _Silent:
            def update(self, _n: int) -> None:
                pass

        start = time.monotonic()
        yield _Silent()
        if ray.is_initialized() and os.environ.get("SNP_QUIET") != "1":
            print(f"[snp-service] {desc}: done in {time.monotonic() - start:.0f} s", flush=True)
        return
    from ray.experimental.tqdm_ray import tqdm

    bar = tqdm(total=total, desc=desc)
    try:
        yield bar
    finally:
        bar.close()


def feature_bytes(info, images: int) -> int:
    """Bytes of one point's captured features: images x nodes x positions in float16."""
    return images * info.nodes * info.positions * 2


def point_groups(spec: JobSpec, points: list[str], images: int) -> list[list[str]]:
    """Points in forward order, grouped so that each group's features fit compute.feature_budget_gb
    (a point larger than the budget goes alone): an actor never holds more than one group."""
    budget, info = spec.compute.feature_budget_gb * 2**30, spec.points()
    groups: list[list[str]] = []
    size = 0
    for p in points:
        b = feature_bytes(info[p], images)
        if not groups or size + b > budget:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += b
    return groups


def features_root() -> str:
    """Where captured features go: SNP_FEATURES_DIR, default the system temp dir."""
    return os.environ.get("SNP_FEATURES_DIR") or tempfile.gettempdir()


def remove_stale_features(root: str, pids: set[int] | None = None) -> int:
    """Remove feature folders (`snp-features-<pid>-*`) of processes that are gone (a worker killed by
    an interrupt leaves its folder behind), or of the given pids; returns how many were removed."""
    removed = 0
    for d in Path(root).glob("snp-features-*-*"):
        try:
            pid = int(d.name.split("-")[2])
        except (IndexError, ValueError):
            continue
        alive = (pid not in (pids or set())) and _alive(pid)
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def compute_device() -> torch.device:
    """The device this process was given: a GPU when Ray assigned one (or CUDA is visible), else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def network_on_device(spec: JobSpec, weights: dict):
    """(data, the trained network on this process's device, that device, an evaluation loader)."""
    data = build_datasets(spec.dataset, seed=spec.train.seed, augment=False, endpoint=spec.storage.endpoint)
    device = compute_device()
    model = spec.build_model(data.num_classes)
    model.load_state_dict(weights)
    loader = torch.utils.data.DataLoader(data.eval, batch_size=256, num_workers=spec.dataset.num_workers)
    return data, model.to(device).eval(), device, loader


@contextmanager
def captured_groups(spec: JobSpec, weights: dict, points: list[str],
                    threads: int) -> Iterator[Iterator[tuple[list[str], Features, Features, int]]]:
    """Capture the points group by group (point_groups) on the training and evaluation splits, each
    group's float16 files removed before the next is captured: peak disk is one group's features, not
    the network's. Yields an iterator of (group, train features, evaluation features, labels)."""
    features_dir = features_root()
    remove_stale_features(features_dir)
    with torch_threads(threads):
        data, model, device, _ = network_on_device(spec, weights)

        def groups():
            images = len(data.train) + len(data.eval)
            for group in point_groups(spec, points, images):
                # on a GPU a group that fits in half its free memory stays there; else float16 files
                in_memory = device.type == "cuda" and \
                    sum(feature_bytes(spec.points()[p], images) for p in group) < torch.cuda.mem_get_info()[0] / 2
                with tempfile.TemporaryDirectory(prefix=f"snp-features-{os.getpid()}-", dir=features_dir) as tmp:
                    with progress_bar(f"capture {group[0]}{' +' if len(group) > 1 else ''}", images) as bar:
                        seen = [0]

                        def advance(done: int, _total: int, offset: int = 0) -> None:
                            bar.update(offset + done - seen[0])
                            seen[0] = offset + done

                        train = capture(model, data.train, group, Path(tmp) / "train", device=device,
                                        in_memory=in_memory, progress=advance)
                        evaluation = capture(model, data.eval, group, Path(tmp) / "eval", device=device,
                                             in_memory=in_memory,
                                             progress=lambda d, t: advance(d, t, offset=len(data.train)))
                    yield group, train, evaluation, data.num_classes  # the bar (or its line) ends with the capture

        yield groups()


def prune_point_work(spec: JobSpec, p: str, readout: Readout, raw_eval: torch.Tensor, train: Features,
                     evaluation: Features, num_labels: int, andc: bool) -> dict:
    """The prune stage's work on one captured point: SNP matrices of the selection images
    (pruning.selection_split), then ANDC and its baselines when `andc` (a point measured only for
    structural pruning needs the selection matrices alone)."""
    pr, an = spec.pruning, spec.analysis
    eta2 = None
    if pr.selection_split == "heldout":
        rows = selection_rows(len(train.labels), pr.selection_fraction, pr.seed)
        acc = snp_accumulate(readout, train.points[p], train.labels, num_labels, rows=rows)
        raw = acc.snp_matrices(centred=normalisation_flags(an.normalise)[0])
        eta2 = acc.label_dependence().eta2.astype("float32")
        selection = f"heldout: a subset of {len(rows)} training images, disjoint from the scoring split"
    else:
        raw = raw_eval.to(torch.float64)
        selection = "eval: the scoring images (paper protocol)"
    out = {"rows": [], "curve": [], "selection_raw": raw.numpy().astype("float32"), "selection_eta2": eta2,
           "selection": selection}
    if andc:
        out["rows"], out["curve"] = prune_point(
            p, readout, normalise(raw, afcc=normalisation_flags(an.normalise)[1]), train.points[p], train.labels,
            evaluation.points[p], evaluation.labels, spec.andc_threshold(), pr.curve_thresholds, pr.baselines,
            pr.finetune_epochs, pr.finetune_lr, pr.seed, selection, an.candidate_order, an.cluster_time_limit_s,
            solver=an.readout_solver)
    return out


def prune_plan(spec: JobSpec) -> dict[str, bool]:
    """Points the prune stage works on -> whether their readout is ANDC-pruned (False: measured only
    for structural pruning's unit scores). Empty when pruning is off."""
    if not spec.pruning.enabled:
        return {}
    plan = {p: True for p in spec.prune_points()}
    if spec.pruning.structural_fraction > 0:  # units are chosen on the selection images too
        plan.update({p: False for p in spec.selected_points()
                     if p not in plan and spec.points()[p].kind in ("ff", "mha")})
    return plan


def measure_points(spec: JobSpec, weights: dict, points: list[str], threads: int = 1) -> dict[str, PointResult]:
    """The measure stage's work on `points`, in this process: readout, fields, their per-label sums,
    label-dependence tests and statistics. With pruning enabled, the prune stage's work on the same captured features
    follows each point (`PointResult.pruned`, tagged by pipeline.pruning_key), so the two share one capture."""
    out, plan = {}, prune_plan(spec)
    with captured_groups(spec, weights, points, threads) as groups:
        for group, train, evaluation, num_labels in groups:
            for p in group:
                t0 = time.perf_counter()
                with progress_bar(f"measure {p}", 1) as bar:
                    out[p] = measure_point(spec.points()[p], train.points[p], train.labels, evaluation.points[p],
                                           evaluation.labels, num_labels, spec.analysis)
                    bar.update(1)
                out[p].row["seconds"] = time.perf_counter() - t0
                if p in plan:
                    out[p].pruned = prune_point_work(spec, p, out[p].readout,
                                                     out[p].raw_matrices(spec.analysis.normalise), train,
                                                     evaluation, num_labels, plan[p])
    return out


def prune_points(spec: JobSpec, weights: dict, points: list[str], inputs: dict, threads: int = 1) -> dict[str, dict]:
    """The prune stage's work on `points` when the measure stage's shared capture cannot serve it (e.g. a
    job that changed only its pruning settings reuses another job's measure stage). inputs[point]: the
    stored readout state ("readout"), the raw SNP matrices of the evaluation split ("raw"), and
    whether to prune it ("andc")."""
    info, out = spec.points(), {}
    with captured_groups(spec, weights, points, threads) as groups:
        for group, train, evaluation, num_labels in groups:
            for p in group:
                readout = Readout(info[p].nodes, info[p].positions, num_labels, readout_kind(info[p], spec.analysis))
                readout.load_state_dict(inputs[p]["readout"])
                out[p] = prune_point_work(spec, p, readout.eval(), torch.as_tensor(inputs[p]["raw"]), train,
                                          evaluation, num_labels, inputs[p].get("andc", True))
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


def gpus_per_worker(spec: JobSpec) -> float:
    """compute.snp_gpus_per_actor, with `auto` decided now (when the stage starts, so an autoscaling
    cluster that has gained GPUs uses them): 1 when the cluster has GPUs, else 0."""
    g = spec.compute.snp_gpus_per_actor
    if g == "auto":
        return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    return float(g)


def start_workers(spec: JobSpec, n_workers: int, threads: int, cpus: float, gpus: float = 0.0) -> list:
    # DEFAULT: not inside the caller's placement group (a Tune trial reserves almost nothing itself)
    return [PointWorker.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy="DEFAULT").remote(
        spec.model_dump(mode="json"), threads) for _ in range(n_workers)]


def _scatter(spec: JobSpec, points: list[str], workers: list, call: Callable, what: str, progress: Progress) -> dict:
    """Give each worker its group of points (`call(worker, group)` starts the task); results keyed
    by point, in `points` order.

    Not ray.util.ActorPool: a pool queues values for whichever actor is idle, but here each worker
    gets exactly one group, chosen in advance (assign: balanced by size, one capture set-up per
    worker), so there is no queue to run; what is left is waiting in slices with a stop point, which
    ActorPool.get_next_unordered(timeout=) would signal with the builtin TimeoutError, the same
    class a task's own TimeoutError reaches the driver as."""
    groups = assign(spec, points, len(workers))
    pending = {call(w, g): g for w, g in zip(workers, groups)}
    results: dict = {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)  # in slices: see wait_get
        stop_point()
        if not done:
            continue
        group = pending.pop(done[0])
        results.update(ray.get(done[0]))
        progress(f"{what}: worker finished {', '.join(group)} ({len(results)}/{len(points)} points)")
    return {p: results[p] for p in points}


def measure_on(workers: list, spec: JobSpec, weights: dict, points: list[str],
               progress: Progress = lambda _m: None) -> dict[str, PointResult]:
    ref = ray.put(weights)
    return _scatter(spec, points, workers, lambda w, g: w.measure.remote(ref, g), "measure", progress)


def prune_on(workers: list, spec: JobSpec, weights: dict, points: list[str], inputs: dict,
             progress: Progress = lambda _m: None) -> dict[str, dict]:
    ref = ray.put(weights)
    return _scatter(spec, points, workers, lambda w, g: w.prune.remote(ref, g, {p: inputs[p] for p in g}), "prune",
                    progress)


def check_worker_fits(spec: JobSpec, gpus: float, what: str) -> None:
    """A worker of compute.cpus_per_worker CPUs and `gpus` GPUs must fit some node now, unless the
    cluster autoscales (then the request waits for a node)."""
    c = spec.compute
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if not c.autoscaling and not any(r.get("CPU", 0) >= c.cpus_per_worker and r.get("GPU", 0) >= gpus for r in nodes):
        raise SnpError(f"{what}: a worker of {c.cpus_per_worker:g} CPU(s){f' and {gpus:g} GPU' if gpus else ''} fits no "
                       "node of this Ray cluster; lower compute.cpus_per_worker or snp_gpus_per_actor, or set "
                       "compute.autoscaling: true on a cluster that adds nodes")


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
    gpus = gpus_per_worker(spec)
    check_worker_fits(spec, gpus, what)
    workers = start_workers(spec, n, max(1, int(c.cpus_per_worker)), c.cpus_per_worker, gpus)
    progress(f"{what}: {len(points)} points on {len(workers)} Ray worker(s)" + (f", {gpus:g} GPU each" if gpus else ""))
    try:  # placed within compute.start_timeout_s, or one message (an actor waits for its CPUs without limit)
        pids = set(wait_get([w.pid.remote() for w in workers], timeout=c.start_timeout_s))
    except BaseException as e:  # not placed, or interrupted while waiting: the workers go
        for w in workers:
            ray.kill(w)
        if isinstance(e, ray.exceptions.GetTimeoutError):
            raise SnpError(f"{what}: {len(workers)} worker(s) of {c.cpus_per_worker:g} CPU(s)"
                           f"{f' and {gpus:g} GPU' if gpus else ''} could not be placed within compute.start_timeout_s "
                           f"({c.start_timeout_s:g} s); the cluster has {free_resources_text()} free (other jobs or "
                           "trials hold the rest). Free them, lower compute.snp_actors or cpus_per_worker, or raise "
                           "start_timeout_s (null: wait without limit)") from None
        raise
    try:
        yield workers
    finally:
        for w in workers:
            ray.kill(w)
        # a killed worker (an interrupt, a failure) cannot remove its features; on this node we can
        remove_stale_features(features_root(), pids)


# ---------------------------------------------------------------- the whole network on a worker


def on_worker(spec: JobSpec, what: str, fn: Callable, *args):
    """`fn(spec_json, *args, threads)` as one Ray task with a point worker's resources
    (compute.cpus_per_worker, and the GPUs gpus_per_worker decides when the stage starts): the
    evaluation and the structural pruning of the network run on the device the analysis is given,
    not on the driver. A lost task is retried by Ray."""
    ensure_ray(spec)
    gpus = gpus_per_worker(spec)
    check_worker_fits(spec, gpus, what)
    c = spec.compute
    task = ray.remote(fn).options(num_cpus=c.cpus_per_worker, num_gpus=gpus, max_retries=MAX_RESTARTS,
                                  scheduling_strategy="DEFAULT")
    return wait_get(task.remote(spec.model_dump(mode="json"), *args, max(1, int(c.cpus_per_worker))))


def evaluate_network(spec_json: dict, weights: dict, threads: int) -> dict:
    """Loss, accuracy and confusion matrix of the trained network on the evaluation split, on this
    process's device at the job's precision (the evaluate stage's work)."""
    spec = JobSpec.model_validate(spec_json)
    with torch_threads(threads):
        data, model, device, loader = network_on_device(spec, weights)
        ev = evaluate(model, loader, device, autocast_dtype(spec.train.precision, device), data.num_classes)
    return {**ev, "classes": data.classes, "eval_split": data.eval_split, "device": device.type}


def structural_network(spec_json: dict, weights: dict, plans: dict, threads: int) -> list[dict]:
    """The structural pruning stage's work on this process's device: the network's cost (parameters,
    MACs, latency on the device) and accuracy, then for each criterion's plan {method: (FF units kept
    per block, heads kept per block)} the pruned network's, optionally after a fine-tune."""
    spec = JobSpec.model_validate(spec_json)
    with torch_threads(threads):
        data, model, device, loader = network_on_device(spec, weights)

        def accuracy(net) -> float:
            return evaluate(net, loader, device, None, data.num_classes)["accuracy"]

        size, frac = spec.dataset.input_size(), spec.pruning.structural_fraction
        rows = [{"method": "none", "fraction": 0.0, **cost(model, size), "accuracy": accuracy(model),
                 "accuracy_finetuned": float("nan"), "ff_units_removed": 0, "heads_removed": 0}]
        for method, (keep_ff, keep_heads) in plans.items():
            pruned = prune_cct(model, keep_ff, keep_heads)
            row = {"method": method, "fraction": frac, **cost(pruned, size), "accuracy": accuracy(pruned),
                   "accuracy_finetuned": float("nan")}
            if spec.pruning.structural_finetune_epochs:
                finetune_network(pruned, data.train, spec, spec.pruning.structural_finetune_epochs)
                row["accuracy_finetuned"] = accuracy(pruned)
            row["ff_units_removed"] = sum(b.mlp.linear1.out_features for b in model.blocks) - \
                sum(b.mlp.linear1.out_features for b in pruned.blocks)
            row["heads_removed"] = sum(b.attn.num_heads for b in model.blocks) - \
                sum(b.attn.num_heads for b in pruned.blocks)
            rows.append(row)
    return rows
