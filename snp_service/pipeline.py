"""The pipeline: stages a job flows through, each a function from the spec (and earlier stages'
stored outputs) to stored outputs plus a summary: data -> train -> evaluate -> measure -> cluster ->
heads -> prune -> structure -> report. This module is the stage table and `run`; the science lives in the pure
modules (measure, heads, prune, structural), Ray in actors and train, storage in store, the stage keys
in spec.identity and the reuse of finished work in reuse.

Finished stages are recorded in the store, so re-running the same job id skips them. Each stage
also has a key: the hash of exactly the spec fields it (and the stages before it) reads
(`spec.STAGE_INPUTS`). When another job in the same store finished a stage with the same key, its
outputs are copied instead of recomputed: a job that only changes analysis.threshold (or the
normalisation, the candidate order or the cluster solver's time limit) copies the trained network and
the measure stage (capture, readouts, fields, per-label field sums, label-dependence tests and
statistics) and the structure stage (structural pruning reads no threshold) of an earlier job and runs
only the cluster, heads, prune and report stages; one that only changes the pruning settings copies
the cluster and heads stages too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import yaml

from snp_service.actors import (
    ensure_ray,
    evaluate_network,
    measure_on,
    on_worker,
    prune_on,
    prune_plan,
    ray_address,
    structural_network,
    workers_for,
)
from snp_service.checkpoints import MAX_WEIGHTS_BYTES, load_weights, sha256
from snp_service.data import DataBundle, build_datasets
from snp_service.errors import SnpError, StoreError
from snp_service.failures import clean_error, is_disk_full, s3_outage
from snp_service.heads import analyse_heads
from snp_service.measure import cluster_point
from snp_service.prune import ANDC_COLUMNS, CURVE_COLUMNS, Criterion, SNPCriterion, WeightMagnitude
from snp_service.provenance import hardware
from snp_service.report import build as build_report
from snp_service.reuse import NEVER_COPIED, STAGE_OUTPUTS, damaged_from, find_reusable
from snp_service.snp import interval_text, normalisation_flags, point_line
from snp_service.spec import CLUSTER_FIELDS, JobSpec, stage_keys
from snp_service.store import FILES, RETRY_SECONDS, JobStore, Store, read_weights
from snp_service.structural import plan
from snp_service.train import STATE_FILE, checkpoint_bytes, fit, readable_checkpoint

Progress = Callable[[str], None]
STRUCTURAL_CRITERIA: tuple[Criterion, ...] = (SNPCriterion(), WeightMagnitude())


def load_datasets(spec: JobSpec, augment: bool = True) -> DataBundle:
    """The job's training and evaluation datasets (augmented training split unless told otherwise)."""
    return build_datasets(spec.dataset, seed=spec.train.seed, augment=augment, endpoint=spec.storage.endpoint)


def stage_data(spec: JobSpec, job: JobStore, progress: Progress, data: DataBundle | None = None) -> dict:
    """Record the dataset (`data`: the bundle the run's preflight already built, if any)."""
    data = data or load_datasets(spec)
    job.write_json(FILES["class_names"], data.classes)
    if data.text is not None:  # the learnt tokenizer (its SHA-256 in the record below): the ids the network saw
        job.write_text(FILES["tokenizer"], data.text.tokenizer_json)
    progress(f"data: {spec.dataset.name} from {data.root}: {len(data.train)} train ({data.train_split}), "
             f"{len(data.eval)} eval ({data.eval_split}) {'texts' if data.text is not None else 'images'}, "
             f"{data.num_classes} classes")
    return data.describe()


def stage_train(spec: JobSpec, job: JobStore, progress: Progress, callbacks: Sequence = ()) -> dict:
    """Ray Train; `callbacks` are Ray Train callbacks (a Tune trial passes TuneReportCallback)."""
    needed = checkpoint_space(spec, job)
    storage_path, fs = job.ray_storage()
    free = job.store.free_bytes()
    if free is not None and free < needed:  # refused before any worker starts, not after each restart fails
        raise StoreError(f"train: the results disk at {storage_path} has {free / 1e6:.1f} MB free; training needs "
                         f"about {needed / 1e6:.1f} MB for its checkpoints (train.checkpoint_keep + 1 of them, and "
                         "the weights); free space there or set storage.root elsewhere")
    ensure_ray(spec)
    progress(f"train: {spec.model.name}, {spec.train.epochs} epochs on Ray Train "
             f"({spec.compute.num_workers} worker(s)); checkpoints in {storage_path}")
    try:
        result = fit(spec, storage_path, fs, callbacks=list(callbacks))
    except Exception as e:
        if not is_disk_full(e):
            raise
        removed = remove_partial_checkpoints(job)
        raise StoreError(f"train: the results disk at {storage_path} filled up while training wrote a checkpoint "
                         f"(training needs about {needed / 1e6:.1f} MB); {removed} partial checkpoint folder(s) "
                         "removed, complete ones kept to resume from; free space there or set storage.root "
                         "elsewhere, then run the job again") from None
    state = result.state
    bad = next((h for h in state["history"] if not math.isfinite(h["train_loss"])), None)
    if bad is not None:
        raise SnpError(f"train: training diverged (non-finite loss in epoch {bad['epoch'] + 1} at lr {bad['lr']:.3g}); "
                       "lower train.lr or train.warmup_epochs' peak, or use precision: fp32; nothing is recorded")
    job.write_torch(FILES["weights"], state["model"])
    job.put_table("train", state["history"])
    last = state["history"][-1]
    return {"epochs": len(state["history"]), "eval_accuracy": last["eval_accuracy"],
            "train_accuracy": last["train_accuracy"], "precision": last["precision"], "device": last["device"],
            "checkpoint": result.checkpoint_path}


def checkpoint_space(spec: JobSpec, job: JobStore) -> int:
    """Bytes training will add to the store at its peak: checkpoint_keep + 1 checkpoints (Ray Train
    writes the next before it deletes the oldest) less those already there (a resumed run), and the
    final weights."""
    model = spec.build_model(len(job.class_names()))
    one = checkpoint_bytes(model)
    present = sum(job.checkpoint_folders().values())
    return max(0, (spec.train.checkpoint_keep + 1) * one - present) + one // 3


def remove_partial_checkpoints(job: JobStore) -> int:
    """Remove the checkpoint folders whose state does not load (cut short by a full disk: one per
    restart); complete ones stay for resuming. Returns how many were removed."""
    removed = 0
    for folder in job.checkpoint_folders():
        try:
            complete = readable_checkpoint(job.read_bytes(f"{folder}/{STATE_FILE}"))
        except StoreError:
            complete = False
        if not complete:
            job.remove_folder(folder)
            removed += 1
    return removed


@dataclass
class Checkpoint:
    """model.weights, read once by the run's preflight: its bytes, SHA-256 and a name for messages."""

    data: bytes
    digest: str
    source: str
    finished_job: bool

    @classmethod
    def read(cls, spec: JobSpec) -> Checkpoint:
        data, source, finished = read_weights(spec.model.weights, spec.storage.endpoint, MAX_WEIGHTS_BYTES)
        return cls(data, sha256(data), source, finished)

    def fitted(self, spec: JobSpec, num_classes: int) -> dict:
        """The weights under the model's own keys, checked against the model and the dataset."""
        fmt = "state_dict" if self.finished_job else spec.model.weights_format
        model = spec.build_model(num_classes)
        return load_weights(model, self.data, self.source, fmt, num_classes, spec.dataset.image_size)


def stage_load(spec: JobSpec, job: JobStore, progress: Progress, checkpoint: Checkpoint, state: dict) -> dict:
    """Instead of training: the network from model.weights, mapped to the model's keys (`state`, as the
    run's preflight checked and loaded it) and stored as the job's weights (every later stage reads them
    as if the job had trained them)."""
    job.write_torch(FILES["weights"], state)
    progress(f"load: {spec.model.name} from {checkpoint.source} (sha256 {checkpoint.digest[:12]}, "
             f"{sum(v.numel() for v in state.values()):,} values)")
    return {"weights": spec.model.weights, "sha256": checkpoint.digest, "format": spec.model.weights_format,
            "finished_job": checkpoint.finished_job, "device": "cpu"}


def load_trained_model(spec: JobSpec, job: JobStore, num_classes: int) -> torch.nn.Module:
    model = spec.build_model(num_classes)
    model.load_state_dict(job.read_torch(FILES["weights"]))
    return model.eval()


def stage_evaluate(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    """The network on the evaluation split, on a worker with the analysis's device (actors.on_worker)."""
    ev = on_worker(spec, "evaluate", evaluate_network, job.read_torch(FILES["weights"]))
    conf, classes = ev["confusion"], ev["classes"]
    counts = conf.sum(1)
    job.put_table("classes", {"label": list(range(len(classes))), "name": classes, "count": counts.tolist(),
                              "accuracy": (conf.diag() / counts.clamp(min=1)).tolist()})
    job.put_table("confusion", pl.DataFrame(conf.numpy(), schema=classes))
    progress(f"evaluate: accuracy {ev['accuracy']:.4f} on {int(counts.sum())} {ev['eval_split']} images "
             f"(chance {1 / len(classes):.4f}; on {ev['device']})")
    return {"accuracy": ev["accuracy"], "loss": ev["loss"], "images": int(counts.sum()),
            "chance": 1 / len(classes), "device": ev["device"]}


def stage_measure(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    """Measure every selected point on Ray workers (snp_service.actors): readouts, fields, their
    per-label sums (the raw SNP matrices follow from them), the label-dependence tests and statistics;
    then store them. Reads no analysis.threshold, normalise, candidate_order or cluster_time_limit_s
    (the cluster stage's), so a job that changes only those copies this stage."""
    points = spec.selected_points()
    with workers_for(spec, points, "measure", progress) as workers:
        results = measure_on(workers, spec, job.read_torch(FILES["weights"]), points, progress)
        n_workers = len(workers)
    for p, r in results.items():
        job.write_point(p, "field_sums", r.field_sums.numpy())  # float64: the cluster stage's numbers are exact
        job.write_point(p, "label_counts", r.label_counts.numpy())
        job.write_point(p, "node_label_accuracy", r.node_label_accuracy.numpy())
        job.write_point(p, "dependence", r.dependence)
        job.write_point(p, "readout", r.readout.state_dict())
        job.write_point(p, "measured", r.row)
        if r.pruned is not None:  # the prune stage's work, done on this capture
            job.write_point(p, "staged_selection_raw", r.pruned["selection_raw"])
            if r.pruned["selection_eta2"] is not None:
                job.write_point(p, "staged_selection_eta2", r.pruned["selection_eta2"])
            job.write_point(p, "staged_prune", {"pruning": pruning_key(spec), "rows": r.pruned["rows"],
                                                "curve": r.pruned["curve"], "selection": r.pruned["selection"]})
        progress(f"measure: {p:22s} {measured_line(r.row)}")
    data = job.stage_result("data") or {}
    return {"points": len(results), "actors": n_workers, "readout": spec.analysis.readout,
            "readout_solver": spec.analysis.readout_solver, "eval_images": data.get("eval_size"),
            "train_images": data.get("train_size")}


def measured_line(row: dict) -> str:
    """One point's measured row for the console: readout (and the L-BFGS solve's record), label dependence."""
    solve = "" if row.get("readout_iterations") is None else \
        f" (L-BFGS {row['readout_iterations']} iterations, max |grad| {row['readout_grad_max']:.1e})"
    return (f"readout acc {row['readout_accuracy']:.3f}{solve}  label-specific {row['label_specific_fraction']:.2f}"
            f"{interval_text(row['label_specific_fraction_lo'], row['label_specific_fraction_hi'])} "
            f"(FDR {row['fdr']:g})  eta2 {row['effect_size']:.3f}"
            f"{interval_text(row['effect_size_lo'], row['effect_size_hi'], 3)}  {row['seconds']:.1f} s")


def stage_cluster(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    """From the measure stage's stored results: normalise, threshold, clusters, noise, SNR and their
    intervals, joined with the measured label-dependence statistics into the per-layer table
    (snp_service.measure.cluster_point), in the driver: seconds."""
    rows = []
    for p in spec.selected_points():
        r = cluster_point(job.read_point(p, "measured"), torch.from_numpy(job.read_point(p, "field_sums")),
                          torch.from_numpy(job.read_point(p, "label_counts")),
                          job.read_point(p, "dependence").to_dict(as_series=False), spec.analysis)
        job.write_point(p, "snp_matrices", r.snp_matrices.numpy().astype(np.float16))
        job.write_point(p, "snp_raw", r.raw_matrices.numpy().astype(np.float32))
        job.write_point(p, "nodes", r.nodes)
        rows.append(r.row)
        progress(f"cluster: {p:22s} {point_line(r.row)}")
    job.put_table("layers", rows)
    return {"points": len(rows), "threshold": spec.analysis.threshold, "normalise": spec.analysis.normalise,
            "candidate_order": spec.analysis.candidate_order}


def pruning_key(spec: JobSpec) -> str:
    """What the prune stage's work depends on beyond the measure stage's inputs: the pruning section
    and the analysis fields that choose its masks (CLUSTER_FIELDS). The measure stage tags the prune
    work it does on its capture with this; the prune stage takes it over only when its own is the same
    (a job that copied another's measure stage at another threshold prunes again). The threshold is the
    one the masks are chosen at: pruning.threshold when set (then analysis.threshold is not read, and a
    job that changes only it takes the work over), else analysis.threshold (the same key as before)."""
    analysis = {k: getattr(spec.analysis, k) for k in CLUSTER_FIELDS}
    analysis["threshold"] = spec.andc_threshold()
    picked = {"pruning": spec.pruning.model_dump(mode="json"), "analysis": analysis}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def stage_heads(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    """Single-head matrices and the heads' label split at each MHA point (snp_service.heads), from
    the cluster stage's raw matrices: no network pass is needed."""
    points = spec.head_points() if spec.heads.enabled else []
    if not points:
        reason = "heads.enabled is false" if not spec.heads.enabled else "no MHA point among the selected points"
        progress(f"heads: skipped ({reason})")
        return {"points": 0, "skipped": reason}
    info, rows = spec.points(), []
    for p in points:
        raw = torch.from_numpy(job.read_point(p, "snp_raw")).double()
        r = analyse_heads(p, raw, info[p].heads, spec.analysis.threshold, spec.heads.null_draws, spec.analysis.seed,
                          spec.heads.level, normalisation_flags(spec.analysis.normalise)[1],
                          spec.analysis.candidate_order, spec.analysis.cluster_time_limit_s)
        job.write_point(p, "heads_labels", r.heads_labels)
        job.write_point(p, "head_matrices", r.head_matrices.numpy().astype(np.float32))
        job.write_point(p, "head_stats", r.head_stats)
        if r.null is not None:
            job.write_point(p, "heads_null", r.null.astype(np.float32))
        if r.specialisation_null is not None:
            job.write_point(p, "heads_specialisation_null", r.specialisation_null.astype(np.float32))
        rows.append(r.summary)
        s = r.summary
        verdict = (f"avoidance: observed Jaccard {s['observed_jaccard']:.3f} vs null {s['null_mean']:.3f} +- "
                   f"{s['null_sd']:.3f} (p {s['p_value']:.4f}, smallest attainable {s['p_min']:.4f})"
                   if s["status"] == "ok" else f"avoidance test {s['status']}: {s['reason']}")
        special = (f"specialisation: within-minus-between profile correlation {s['specialisation']:.3f} vs null "
                   f"{s['specialisation_null_mean']:.3f} (p {s['specialisation_p']:.4f})"
                   if s["specialisation_status"] == "ok" else f"specialisation test undefined: "
                   f"{s['specialisation_reason']}")
        progress(f"heads: {p}: {s['mean_labels_per_head']:.1f} labels per head, "
                 f"{s['mean_heads_per_label']:.2f} heads per label; {verdict}; {special}")
    job.put_table("heads", rows)
    return {"points": len(rows), "undefined": sum(r["status"] == "undefined" for r in rows),
            "uninformative": sum(r["status"] == "uninformative" for r in rows)}


def structural_plans(spec: JobSpec, job: JobStore, model: torch.nn.Module) -> dict[str, tuple[dict, dict]]:
    """{criterion: (FF units kept per block, heads kept per block)} at pruning.structural_fraction,
    from the nodes' label dependence (eta2) on the selection images (pruning.selection_split: the
    prune stage's training subset, or the measure stage's per-node table of the evaluation split).
    Blocks whose FF / MHA point was not measured keep all their units, under every criterion."""
    measured, info = set(spec.selected_points()), spec.points()
    heldout = spec.pruning.selection_split == "heldout"

    def eta2(point: str) -> np.ndarray | None:
        if point not in measured:
            return None
        if heldout:
            return job.read_point(point, "selection_eta2").astype(np.float64)
        return job.read_point(point, "dependence")["eta2"].to_numpy().astype(np.float64)

    dependence = {m: (eta2(f"blocks.{m}.mlp.hidden"), eta2(f"blocks.{m}.attn.heads")) for m in range(len(model.blocks))}
    plans = {}
    for crit in STRUCTURAL_CRITERIA:
        ff, hs = {}, {}
        for m, block in enumerate(model.blocks):
            hp = f"blocks.{m}.attn.heads"
            f, h = crit.unit_scores(block, *dependence[m], info[hp].heads if hp in info else 0)
            if dependence[m][0] is not None:
                ff[m] = f
            if dependence[m][1] is not None:
                hs[m] = h
        plans[crit.structural_name] = plan(model, spec.pruning.structural_fraction, ff, hs)
    return plans


def structural_pruning(spec: JobSpec, job: JobStore, progress: Progress) -> list[dict]:
    """Each criterion's structural pruning of the whole CCT (snp_service.structural): cost and
    accuracy before and after, optionally after a fine-tune of the pruned network; the units are
    planned here from the stored SNP matrices, the networks pruned and measured on a worker with the
    analysis's device (actors.structural_network)."""
    model = load_trained_model(spec, job, len(job.class_names()))
    rows = on_worker(spec, "structural pruning", structural_network, model.state_dict(),
                     structural_plans(spec, job, model))
    base = rows[0]
    for row in rows[1:]:
        progress(f"structure: {row['method']}: {row['ff_units_removed']} FF units, {row['heads_removed']} "
                 f"heads removed; params {row['params'] / base['params']:.2f}x, MACs "
                 f"{row['macs_per_image'] / base['macs_per_image']:.2f}x, latency b128 on {row['latency_device']} "
                 f"{row['latency_ms_b128'] / base['latency_ms_b128']:.2f}x; accuracy {base['accuracy']:.4f} -> "
                 f"{row['accuracy']:.4f}")
    return rows


def stage_prune(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    """ANDC pruning of each point's readout with random and magnitude baselines at equal kept
    connections per node, an accuracy-vs-kept-fraction curve over thresholds, and optionally
    structural pruning of the network itself; masks and units are chosen on the selection images."""
    if not spec.pruning.enabled:
        progress("prune: skipped (pruning.enabled is false)")
        return {"points": 0, "skipped": "pruning.enabled is false"}
    points = spec.prune_points()
    plan = prune_plan(spec)
    task_points = list(plan)
    results, todo = {}, []
    for p in task_points:  # the measure stage's shared capture did this work already, for these settings?
        staged = job.read_point(p, "staged_prune") if job.has_point(p, "staged_prune") else None
        if staged is not None and staged["pruning"] == pruning_key(spec):
            results[p] = {**staged, "selection_raw": job.read_point(p, "staged_selection_raw"),
                          "selection_eta2": (job.read_point(p, "staged_selection_eta2")
                                             if job.has_point(p, "staged_selection_eta2") else None)}
        else:
            todo.append(p)
    if results:
        progress(f"prune: {len(results)} point(s) pruned on the measure stage's capture")
    if todo:
        inputs = {p: {"readout": job.read_point(p, "readout"), "raw": job.read_point(p, "snp_raw"), "andc": plan[p]}
                  for p in todo}
        with workers_for(spec, todo, "prune", progress) as workers:
            results.update(prune_on(workers, spec, job.read_torch(FILES["weights"]), todo, inputs, progress))
    for p in task_points:
        job.write_point(p, "selection_raw", results[p]["selection_raw"])
        if results[p]["selection_eta2"] is not None:
            job.write_point(p, "selection_eta2", results[p]["selection_eta2"])
    if task_points:
        progress(f"prune: masks and units chosen on {results[task_points[0]]['selection']}")
    rows = [r for p in points for r in results[p]["rows"]]
    curve = [c for p in points for c in results[p]["curve"]]
    for p in points:
        by = {r["method"]: r for r in results[p]["rows"]}
        progress(f"prune: {p:22s} kept {by['andc']['kept_fraction']:.3f}; accuracy full "
                 f"{by['andc']['accuracy_full']:.3f}, " + ", ".join(
                     f"{m} {r['accuracy_pruned']:.3f}/{r['accuracy_finetuned']:.3f}" for m, r in by.items())
                 + " (pruned/fine-tuned)")
    job.put_table("andc", pl.DataFrame(rows).select(ANDC_COLUMNS) if rows else rows)
    job.put_table("curve", pl.DataFrame(curve).select(CURVE_COLUMNS) if curve else curve)
    return {"points": len(points), "selection": spec.pruning.selection_split, "threshold": spec.andc_threshold()}


def stage_structure(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    """Structural pruning of the network itself (pruning.structural_fraction of every block's FF units
    and heads), by the nodes' eta2 and by weight magnitude. A stage of its own because it reads no
    threshold: a job changing only the threshold copies it (its network fine-tune and latency timing
    are not repeated)."""
    if not spec.pruning.enabled or spec.pruning.structural_fraction == 0:
        reason = "pruning.enabled is false" if not spec.pruning.enabled else "pruning.structural_fraction is 0"
        progress(f"structure: skipped ({reason})")
        return {"skipped": reason}
    structural = structural_pruning(spec, job, progress)
    job.put_table("structural", structural)
    return {"structural": {r["method"]: {k: r[k] for k in ("params", "macs_per_image", "latency_ms_b128", "accuracy")}
                           for r in structural}}


def stage_report(spec: JobSpec, job: JobStore, progress: Progress) -> dict:
    build_report(job, progress, running_hardware=hardware())
    return {"html": FILES["report"]}


Stage = Callable[[JobSpec, JobStore, Progress], dict]
STAGES: list[tuple[str, Stage]] = [
    ("data", stage_data),
    ("train", stage_train),
    ("evaluate", stage_evaluate),
    ("measure", stage_measure),
    ("cluster", stage_cluster),
    ("heads", stage_heads),
    ("prune", stage_prune),
    ("structure", stage_structure),
    ("report", stage_report),
]


@dataclass
class RunOutcome:
    job_id: str
    uri: str
    stages: dict[str, dict]
    manifest: dict


def run_stage(fn, spec: JobSpec, job, progress, name: str) -> dict:
    """Run one stage. A failure inside it (e.g. Ray Train's, whose checkpoints go to the store) is
    checked against the store: when the store has become unreachable, that is what the user is told,
    naming the endpoint, instead of a library traceback."""
    try:
        return fn(spec, job, progress)
    except (SnpError, KeyboardInterrupt):
        raise
    except Exception as e:
        try:
            job.store.check()
        except StoreError as down:
            raise StoreError(f"stage {name} failed because the results store became unreachable: {down} "
                             f"(the stage's own error: {clean_error(e, -1)[:300]})") from None
        outage = s3_outage(e)
        if outage:  # the store answers again, but an outage longer than the retries is what failed the stage
            where = f" at endpoint {job.store.endpoint}" if job.store.endpoint else ""
            raise StoreError(f"stage {name} failed because the results store {job.store.uri}{where} could not be "
                             f"reached for longer than its retries (at least {RETRY_SECONDS:g} s, "
                             f"SNP_STORE_RETRY_SECONDS): {outage[:300]}; it answers again now: run the job again to "
                             "resume from its finished stages and last checkpoint") from None
        raise


def run(spec: JobSpec, progress: Progress = print, train_callbacks: Sequence = ()) -> RunOutcome:
    """Run every stage not yet finished for this job id, then write the manifest (last).
    train_callbacks: Ray Train callbacks for the train stage (a Tune trial passes TuneReportCallback)."""
    store = Store.from_spec(spec.storage)
    store.check()  # unreachable store or bad credentials: fail before any compute or write
    ray_address(spec)  # an address no driver can join: likewise
    job = store.job(spec.job_id())
    checkpoint, state, prepared = preflight(spec, job)
    with job.lease():  # one run of a job id at a time, whichever host runs it (another run: refused, naming it)
        return run_stages(spec, job, progress, train_callbacks, checkpoint, state, prepared)


def preflight(spec: JobSpec, job: JobStore) -> tuple[Checkpoint | None, dict | None, DataBundle | None]:
    """What can refuse the job before anything is written: model.weights (read, checked, fitted to the
    model) and the dataset (missing, wrong layout, corrupt archive), built here when the data stage
    has not run; the data stage then records this bundle instead of building it again."""
    checkpoint = Checkpoint.read(spec) if spec.model.weights else None
    state = None  # the checkpoint fitted to the model: checked once here, stored by the load stage
    if checkpoint and spec.dataset.known_classes():  # a checkpoint that does not fit fails before any data
        state = checkpoint.fitted(spec, spec.dataset.known_classes())
    prepared = load_datasets(spec) if job.stage_result("data") is None else None
    if checkpoint and state is None:
        state = checkpoint.fitted(spec, prepared.num_classes if prepared else len(job.class_names()))
    return checkpoint, state, prepared


def run_stages(spec: JobSpec, job: JobStore, progress: Progress, train_callbacks: Sequence,
               checkpoint: Checkpoint | None, state: dict | None, prepared: DataBundle | None) -> RunOutcome:
    """`run` once the preflight passed and the job's lease is held: the stages, then the manifest."""
    progress(f"job {job.job_id} -> {job.uri}")
    first_damaged = damaged_from(job, spec.stage_names(), progress)
    job.invalidate_manifest()
    spec_json = spec.model_dump(mode="json")
    job.write_json(FILES["spec"], spec_json)
    job.write_text(FILES["spec_yaml"], yaml.safe_dump(spec_json, sort_keys=False))
    bound = {"data": functools.partial(stage_data, data=prepared),
             "train": functools.partial(stage_train, callbacks=train_callbacks),
             "load": functools.partial(stage_load, checkpoint=checkpoint, state=state)}
    summaries = {}
    for i, name in enumerate(spec.stage_names()):
        fn = bound.get(name) or dict(STAGES)[name]
        keys = stage_keys(spec_json, name, checkpoint.digest if checkpoint else None)
        key = keys[0]
        done = job.stage_result(name) if i < first_damaged else None
        if done is not None and done.get("key", key) in keys:
            progress(f"{name}: already finished ({done['finished']}), reusing")
            summaries[name] = done
            continue
        t0 = time.perf_counter()
        source = None if name in NEVER_COPIED else find_reusable(job.store, job, name, keys)
        if source is not None:
            n = job.copy_from(source, STAGE_OUTPUTS[name])
            summary = {**{k: v for k, v in source.stage_result(name).items()
                          if k not in ("stage", "seconds", "finished", "key", "reused_from")},
                       "reused_from": source.job_id}
            progress(f"{name}: same inputs as job {source.job_id}; copied its {n} result file(s)")
        else:
            summary = run_stage(fn, spec, job, progress, name)
        job.finish_stage(name, {**summary, "key": key}, time.perf_counter() - t0, STAGE_OUTPUTS.get(name, ()))
        summaries[name] = job.stage_result(name)
    manifest = job.write_manifest({"name": spec.name, "model": spec.model.name, "dataset": spec.dataset.name,
                                   "status": "complete", "stages": summaries, "hardware": hardware()})
    progress(f"done: {len(manifest['artefacts'])} artefacts, manifest at {job.uri}/manifest.json")
    return RunOutcome(job.job_id, job.uri, summaries, manifest)
