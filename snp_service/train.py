"""Stage 1: train the whole network with Ray Train (CCT recipe: AdamW, cosine with warm-up,
label smoothing, optional mixup/cutmix), one checkpoint per epoch, resumable.

`train_loop_per_worker` is what every Ray Train worker runs; `fit()` launches it with a
TorchTrainer whose checkpoints live in the job's results folder.
"""

from __future__ import annotations

import io
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from snp_service import devicedata
from snp_service.data import DataBundle, build_datasets
from snp_service.errors import SnpError
from snp_service.interrupts import call_in_helper
from snp_service.optim import optimiser_step
from snp_service.spec import JobSpec, TrainSpec

STATE_FILE = "state.pt"


def cpu_supports_bf16() -> bool:
    """AMX or AVX-512 bf16: where bf16 autocast is faster than fp32 on a CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting on a device (None: plain fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16" or device.type == "cuda" or cpu_supports_bf16():
        return torch.bfloat16
    return None


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to min_ratio, by optimizer step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, t: TrainSpec) -> torch.optim.Optimizer:
    # no weight decay on biases, norms and the positional embedding, as in the CCT recipe
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "positional_emb" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr)
    return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=True)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on the device: images channels_last (the conv tokenizer's faster layout), word ids as they are."""
    return x.to(device, memory_format=torch.channels_last) if x.ndim == 4 else x.to(device)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None,
             num_classes: int) -> dict:
    """Loss, accuracy and the confusion matrix (rows: true label, columns: prediction)."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, n = 0.0, 0
    for x, y in loader:
        x, y = to_device(x, device), y.to(device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        n += len(y)
        idx = y.cpu() * num_classes + logits.argmax(1).cpu()
        confusion += torch.bincount(idx, minlength=num_classes ** 2).view(num_classes, num_classes)
    return {"loss": loss_sum / max(1, n), "accuracy": confusion.diag().sum().item() / max(1, n),
            "confusion": confusion}


def batch_mixer(spec: JobSpec, num_classes: int):
    from torchvision.transforms import v2

    a = spec.dataset.augment
    ops = []
    if a.mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=a.mixup_alpha, num_classes=num_classes))
    if a.cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=a.cutmix_alpha, num_classes=num_classes))
    return v2.RandomChoice(ops) if ops else None


def say(line: str) -> None:
    """A worker's console line, once. Ray Train V2 replaces `print` in its workers with one that logs
    to the root logger's console handler and, when the stream is wrapped, also prints (the same line
    twice in the driver's console); a print to the process's own stdout is not redirected."""
    print(line, file=sys.__stdout__, flush=True)


def quiet_ray_train_reports() -> None:
    """Hide Ray Train's info lines in this worker (a `Reporting training result ...: TrainingReport(...)`
    line per epoch): the `ray.train` / `ray.tune` loggers, and the report logger Ray 2.60 names after its
    file's path, outside that hierarchy."""
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as report_context
    except ImportError:  # another Ray layout: its loggers above still apply
        return
    report_logger = getattr(report_context, "logger", None)
    if isinstance(report_logger, logging.Logger):
        report_logger.setLevel(logging.WARNING)


class WorkerHook:
    """Called by every training worker as it trains: fit's `worker_hooks`, handed to the workers in
    their train_loop_config (so picklable, and importable where the workers run). A production run
    passes none; the reliability tests inject faults through them (tests/faults.py)."""

    def before_step(self, epoch: int, step: int, steps_per_epoch: int) -> None:
        """Before the worker trains on batch `step` of `epoch` (both counted from 0)."""

    def after_epoch(self, epoch: int) -> None:
        """After the worker reported `epoch` (rank 0 with its checkpoint), when training goes on."""


@dataclass
class WorkerRun:
    """What a training worker's epochs read and step, set up by `start_worker`."""

    spec: JobSpec
    data: DataBundle
    device: torch.device
    rank: int
    world: int
    gen: torch.Generator  # the training loader's shuffle, seeded per epoch
    on_device: bool  # snp_service.devicedata: batches cut and augmented on the training device
    train_loader: Any
    eval_loader: Any
    model: nn.Module
    forward: Callable  # the model, compiled when train.compile
    dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: nn.Module
    mixer: Callable | None
    steps_per_epoch: int
    hooks: tuple[WorkerHook, ...] = ()


def train_loop_per_worker(config: dict) -> None:
    """Run by every Ray Train worker. Reports metrics and a checkpoint after every epoch."""
    run = start_worker(config)
    t = run.spec.train
    start_epoch, history = restore_checkpoint(run, config)
    for epoch in range(start_epoch, t.epochs):
        loss_sum, correct, seen, train_s = train_one_epoch(run, epoch)
        if (epoch + 1) % t.eval_every == 0 or epoch == t.epochs - 1:
            ev = evaluate(run.model, run.eval_loader, run.device, run.dtype, run.data.num_classes)
        else:  # train.eval_every: this epoch is not evaluated (the last one always is)
            ev = {"loss": float("nan"), "accuracy": float("nan"), "confusion": None}
        metrics = {
            "epoch": epoch, "train_loss": loss_sum / max(1, seen), "train_accuracy": correct / max(1, seen),
            "eval_loss": ev["loss"], "eval_accuracy": ev["accuracy"], "lr": run.scheduler.get_last_lr()[0],
            "train_seconds": train_s, "train_images_per_s": seen / train_s,
            "precision": str(run.dtype).removeprefix("torch.") if run.dtype else "float32",
            "device": run.device.type,
        }
        history.append(metrics)
        report_epoch(run, metrics, history, ev["confusion"])
        if not math.isfinite(metrics["train_loss"]):
            break
        for hook in run.hooks:
            hook.after_epoch(epoch)


def start_worker(config: dict) -> WorkerRun:
    """A worker's datasets, loaders, network, optimiser and schedule, from its train_loop_config."""
    import ray.train
    import ray.train.torch

    spec = JobSpec.model_validate(config["spec"])
    t = spec.train
    if not config.get("verbose"):  # Ray Train's per-report and checkpoint lines, unless --verbose
        quiet_ray_train_reports()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(t.seed)
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))

    data = build_datasets(spec.dataset, seed=t.seed, endpoint=spec.storage.endpoint)
    gen = torch.Generator()
    device = ray.train.torch.get_device()
    on_device, train_loader, eval_loader = worker_loaders(spec, data, device, gen, rank, world)
    # channels_last: the conv tokenizer / VGG convs run faster on it (cct_2_3x2_32 on CPU: 1.2x train
    # img/s, bench/RESULTS.md section 1); the same arithmetic up to float rounding
    model = spec.build_model(data.num_classes).to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model)
    # the forward pass runs compiled; checkpoints keep the plain module's keys (no _orig_mod. prefix)
    forward = torch.compile(model) if t.compile else model
    optimizer = make_optimizer(model, t)
    steps_per_epoch = len(train_loader)
    total_steps = t.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, t.warmup_epochs * steps_per_epoch, t.min_lr / t.lr))
    return WorkerRun(spec, data, device, rank, world, gen, on_device, train_loader, eval_loader, model, forward,
                     autocast_dtype(t.precision, device), optimizer, scheduler,
                     nn.CrossEntropyLoss(label_smoothing=t.label_smoothing), batch_mixer(spec, data.num_classes),
                     steps_per_epoch, tuple(config.get("hooks") or ()))


def worker_loaders(spec: JobSpec, data: DataBundle, device: torch.device, gen: torch.Generator, rank: int,
                   world: int) -> tuple[bool, Any, Any]:
    """(on the device?, training loader, evaluation loader) of one worker: images decoded once and kept
    on the device (snp_service.devicedata) where usable, else DataLoaders prepared by Ray Train."""
    import ray.train.torch

    t = spec.train
    if devicedata.usable(spec.dataset, spec.compute.data_on_device, device):
        # images decoded once at the job's resolution, kept on the device, augmented there in batches
        plain = build_datasets(spec.dataset, seed=t.seed, augment=False, endpoint=spec.storage.endpoint)
        key = {"data": data.describe(), "dataset": spec.dataset.model_dump(mode="json", exclude={"augment"}),
               "seed": t.seed}
        splits = [devicedata.decode(d, spec.dataset, {**key, "split": name}, spec.dataset.num_workers)
                  for name, d in (("train", plain.train), ("eval", plain.eval))]
        train_loader = devicedata.for_dataset(*splits[0], spec.dataset, t.batch_size, device, train=True,
                                              rank=rank, world=world, drop_last=len(data.train) > t.batch_size)
        eval_loader = devicedata.for_dataset(*splits[1], spec.dataset, max(t.batch_size, 256), device, train=False)
        if rank == 0:
            mb = sum(s[0].numel() for s in splits) / 2**20
            say(f"[snp-service] data on {device.type}: {len(splits[0][1])} training and {len(splits[1][1])} "
                f"evaluation images as uint8 ({mb:.0f} MB), augmented in batches there")
        return True, train_loader, eval_loader
    train_loader = DataLoader(data.train, batch_size=t.batch_size, shuffle=True,
                              drop_last=len(data.train) > t.batch_size, num_workers=spec.dataset.num_workers,
                              generator=gen, persistent_workers=spec.dataset.num_workers > 0,
                              pin_memory=torch.cuda.is_available())
    eval_loader = DataLoader(data.eval, batch_size=max(t.batch_size, 256), shuffle=False,
                             num_workers=spec.dataset.num_workers, pin_memory=torch.cuda.is_available())
    # every rank evaluates the whole evaluation split: the metrics are the 1-worker run's, exactly
    # (a distributed sampler would give rank 0 a 1/N shard, padded with repeats)
    return (False, ray.train.torch.prepare_data_loader(train_loader),
            ray.train.torch.prepare_data_loader(eval_loader, add_dist_sampler=False))


def restore_checkpoint(run: WorkerRun, config: dict) -> tuple[int, list[dict]]:
    """(first epoch to train, history so far): from the run's own latest checkpoint (restore after a
    failure), else from a given starting checkpoint (`resume_from`), else (0, [])."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and config.get("resume_from"):
        checkpoint = ray.train.Checkpoint(config["resume_from"], filesystem=config.get("resume_filesystem"))
    if not checkpoint:
        return 0, []
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location=run.device, weights_only=True)
    _unwrap(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.rank == 0:
        say(f"[snp-service] resumed from checkpoint after epoch {state['epoch'] + 1}")
    return state["epoch"] + 1, state["history"]


def train_one_epoch(run: WorkerRun, epoch: int) -> tuple[float, int, int, float]:
    """One epoch's steps: (loss sum, correct, images, seconds), summed over every rank's batches (not
    rank 0's alone); the loss sum is NaN when the loss diverged (the epoch stops there)."""
    t, device = run.spec.train, run.device
    # seed per epoch, so a resumed run sees the same shuffles and augmentations
    run.gen.manual_seed(t.seed * 100_003 + epoch)
    if run.on_device:
        run.train_loader.set_epoch_seed(t.seed * 100_003 + epoch)
    torch.manual_seed(t.seed * 100_003 + epoch + run.rank)
    if run.world > 1 and hasattr(run.train_loader, "sampler") and hasattr(run.train_loader.sampler, "set_epoch"):
        run.train_loader.sampler.set_epoch(epoch)
    run.model.train()
    t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
    for step, (x, y) in enumerate(run.train_loader):
        for hook in run.hooks:
            hook.before_step(epoch, step, run.steps_per_epoch)
        x, y = to_device(x, device), y.to(device)
        target = y
        if run.mixer is not None:
            x, target = run.mixer(x, y)
        with torch.autocast(device.type, dtype=run.dtype or torch.float32, enabled=run.dtype is not None):
            logits = run.forward(x)
        loss = run.criterion(logits.float(), target)
        if not torch.isfinite(loss):  # diverged: stop, report it; the driver fails the stage
            loss_sum = float("nan")
            break
        optimiser_step(loss, run.optimizer, run.scheduler)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    train_s = time.perf_counter() - t0
    if run.world > 1:  # training loss and accuracy over every rank's batches, not rank 0's alone
        totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        loss_sum, correct, seen = totals[0].item(), totals[1].item(), int(totals[2].item())
    return loss_sum, correct, seen, train_s


def report_epoch(run: WorkerRun, metrics: dict, history: list[dict], confusion: torch.Tensor | None) -> None:
    """Report an epoch's metrics to Ray Train; rank 0 prints its line and reports the checkpoint too."""
    import ray.train

    if run.rank != 0:
        ray.train.report(metrics)
        return
    t = run.spec.train
    say(f"[snp-service] epoch {metrics['epoch'] + 1}/{t.epochs}  loss {metrics['train_loss']:.3f}  "
        f"train acc {metrics['train_accuracy']:.3f}  eval acc "
        f"{'-' if math.isnan(metrics['eval_accuracy']) else format(metrics['eval_accuracy'], '.3f')}  "
        f"{metrics['train_images_per_s']:.0f} img/s")
    with tempfile.TemporaryDirectory() as d:
        torch.save({"model": _unwrap(run.model).state_dict(), "optimizer": run.optimizer.state_dict(),
                    "scheduler": run.scheduler.state_dict(), "epoch": metrics["epoch"], "history": history,
                    "classes": run.data.classes, "data": run.data.describe(),
                    "confusion": confusion}, Path(d) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


@dataclass
class TrainResult:
    state: dict  # the final checkpoint's state (model weights, history, classes, ...)
    checkpoint_path: str


def check_fits_cluster(spec: JobSpec, use_gpu: bool, nodes: list[dict]) -> None:
    """Refuse a training request no node of the cluster can hold (Ray Train would wait for it, then
    time out and retry): each worker needs compute.cpus_per_worker CPUs, and a GPU with use_gpu.
    compute.autoscaling: the cluster adds nodes on demand, so nothing is refused here."""
    if spec.compute.autoscaling:
        return
    c = spec.compute
    need = {"CPU": c.cpus_per_worker, **({"GPU": 1.0} if use_gpu else {})}
    holds = sum(int(min(n.get(k, 0.0) // v for k, v in need.items())) for n in nodes)
    if holds < c.num_workers:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        raise SnpError(f"train: {c.num_workers} worker(s) of {c.cpus_per_worker:g} CPU(s)"
                       f"{' and 1 GPU' if use_gpu else ''} do not fit this Ray cluster (it holds {holds}; its "
                       f"largest node has {biggest.get('CPU', 0):g} CPUs and {biggest.get('GPU', 0):g} GPUs); "
                       "lower compute.num_workers or cpus_per_worker, set use_gpu: false or auto, or set "
                       "compute.autoscaling: true on a cluster that adds nodes")


# Ray Train V2's variables, read from the driver's environment and passed on to its controller
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@contextmanager
def train_environment(start_timeout_s: float | None, watch_preemption: bool) -> Iterator[None]:
    """While a TorchTrainer runs: Ray Train's worker-group start timeout set to
    compute.start_timeout_s; and on a single fixed node, no preemption watcher (nothing of the run
    can be preempted apart from the whole of it, and its actor logs a core_worker error line in
    every run); a value the user set is kept."""
    env = {}
    if start_timeout_s is not None:
        env[START_TIMEOUT_ENV] = f"{start_timeout_s:g}"
    if not watch_preemption and PREEMPTION_WATCHER_ENV not in os.environ:
        env[PREEMPTION_WATCHER_ENV] = "0"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def warm_autoscaling_coordinator(timeout: float | None) -> None:
    """Start Ray's AutoscalingCoordinator actor (detached, one per cluster) before Ray Train's
    controller asks it for resources: the controller gives its first request 5 s, which the actor's
    start alone exceeds on a loaded machine, and then logs a warning with a traceback in the job's
    console (once the actor runs, its calls are quick). Ray-internal: skipped where it is not there."""
    import ray

    try:
        from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
            get_or_create_autoscaling_coordinator,
        )

        ray.get(get_or_create_autoscaling_coordinator().__ray_ready__.remote(), timeout=timeout)
    except Exception:  # another Ray, or it did not start in time: Ray Train starts it as it would
        pass


def _startup_timed_out(e: BaseException) -> bool:
    """Whether a TorchTrainer failure is its worker group not starting in time (Ray Train's
    ControllerError around a WorkerGroupStartupTimeoutError)."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WorkerGroupStartupTimeoutError):
            return True
        e = getattr(e, "controller_failure", None) or e.__cause__
    return False


def free_resources_text() -> str:
    """What the cluster has free now, for a message: `1.99 of 2 CPUs, 0 of 0 GPUs`."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return ", ".join(f"{free.get(k, 0.0):g} of {total.get(k, 0.0):g} {k}s" for k in ("CPU", "GPU"))


def _did_not_start(spec: JobSpec, use_gpu: bool, seconds: float) -> str:
    c = spec.compute
    return (f"train: {c.num_workers} training worker(s) of {c.cpus_per_worker:g} CPU(s){' and 1 GPU' if use_gpu else ''} "
            f"could not be placed within compute.start_timeout_s ({seconds:g} s); the cluster has "
            f"{free_resources_text()} free (other jobs or trials hold the rest). Free them, lower compute.num_workers "
            "or cpus_per_worker, or raise start_timeout_s (null: wait without limit)")


def checkpoint_bytes(model: nn.Module) -> int:
    """About one training checkpoint's size: the model's tensors plus AdamW's two moments of each
    parameter (STATE_FILE holds the model and the optimizer; the rest is small)."""
    return (sum(t.numel() * t.element_size() for t in model.state_dict().values())
            + 2 * sum(p.numel() * p.element_size() for p in model.parameters()))


def readable_checkpoint(state_file: bytes) -> bool:
    """Whether a checkpoint's STATE_FILE loads (one cut short by a full disk does not)."""
    try:
        torch.load(io.BytesIO(state_file), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def fit(spec: JobSpec, storage_path: str, storage_filesystem=None, resume_from: str | None = None,
        max_failures: int | None = None, callbacks=(), worker_hooks: Sequence[WorkerHook] = ()) -> TrainResult:
    """Run training on the connected Ray cluster. A run with the same name and storage resumes
    from its latest checkpoint (Ray Train V2); `resume_from` starts from a given checkpoint.
    `callbacks` are Ray Train callbacks (in the driver); `worker_hooks` are called in every worker
    (WorkerHook)."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = spec.compute.use_gpu
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    check_fits_cluster(spec, bool(use_gpu), nodes)
    threads = max(1, int(spec.compute.cpus_per_worker))
    deadline = spec.compute.start_timeout_s
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec.model_dump(mode="json"), "torch_threads": threads,
                           "hooks": list(worker_hooks),
                           "resume_from": resume_from, "verbose": os.environ.get("SNP_VERBOSE") == "1",
                           "resume_filesystem": storage_filesystem},
        scaling_config=ScalingConfig(num_workers=spec.compute.num_workers, use_gpu=bool(use_gpu),
                                     resources_per_worker={"CPU": spec.compute.cpus_per_worker}),
        run_config=RunConfig(
            name=spec.job_id(), storage_path=storage_path, storage_filesystem=storage_filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.checkpoint_keep),
            failure_config=FailureConfig(
                max_failures=spec.compute.max_failures if max_failures is None else max_failures,
                # a worker group that cannot start within the deadline ends the run (default: retried forever)
                **({"controller_failure_limit": 0} if deadline is not None else {})),
            callbacks=list(callbacks),
        ),
    )
    # Ray Train installs its own SIGINT handler (abort the run gracefully) and leaves it in place after
    # the run: an interrupt during a later stage would then be swallowed. The caller's are put back.
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        warm_autoscaling_coordinator(deadline)
        with train_environment(deadline, watch_preemption=len(nodes) > 1 or spec.compute.autoscaling):
            # off the main thread (a study member) the fit is waited for in slices, so the member can be
            # told to stop (interrupts.call_in_helper; the training then ends with the driver)
            result = trainer.fit() if main else call_in_helper(trainer.fit, f"fit {spec.job_id()}")
    except Exception as e:
        if deadline is not None and _startup_timed_out(e):
            raise SnpError(_did_not_start(spec, bool(use_gpu), deadline)) from None
        raise
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    return TrainResult(state=state, checkpoint_path=result.checkpoint.path)


def finetune_network(model: nn.Module, dataset, spec: JobSpec, epochs: int) -> nn.Module:
    """A short in-process fine-tune of a (pruned) network: AdamW at a tenth of train.lr, cosine
    decay, label smoothing, the job's batch size and seed; fp32 on the model's device. Modifies
    `model` in place."""
    torch.manual_seed(spec.train.seed)
    t = spec.train
    loader = DataLoader(dataset, batch_size=t.batch_size, shuffle=True, num_workers=spec.dataset.num_workers,
                        generator=torch.Generator().manual_seed(t.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr / 10, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
    return train_epochs(model, loader, opt, sched, epochs, t.label_smoothing)


def train_epochs(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer, sched, epochs: int,
                 label_smoothing: float) -> nn.Module:
    """A plain in-process training loop (fp32, on the model's device): cross-entropy, a scheduler
    step per batch. Returns the model in eval mode."""
    device = next(model.parameters()).device
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            optimiser_step(nn.functional.cross_entropy(model(x), y, label_smoothing=label_smoothing), opt, sched)
    return model.eval()
