"""Studies: several jobs run as one and compared. Three kinds, each written the same way into
`<store>/_studies/<name>-<kind>-<digest>/` (`study_folder`; the digest covers the member job ids,
so the same members give the same folder):

- compare: a job's `compare:` section (the unified study, CNN and CCT side by side), or
  `snp-service compare JOB_ID ...` on finished jobs; tables from snp_service.compare, page and
  summary from snp_service.report.
- heads: the same job at several head counts with the width fixed (`snp-service heads-study`);
  Ray Tune's sweep over `model.num_heads` is the parallel form of the same study.
- sweep: the table of a Ray Tune sweep (snp_service.sweep writes it through `study_folder`).

Member jobs are ordinary jobs with their own content-derived ids (JobSpec.compare_jobs,
derive_job), so finished members are reused. They run at once, as many as the cluster holds
(`run_members`, compute.max_concurrent_jobs): each member is a pipeline run in a thread of this
driver, and Ray schedules their training workers and point actors side by side. This module reads stored results and writes the
study; the arithmetic is in compare, the drawing in report.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from snp_service import figures, pipeline
from snp_service.actors import ensure_ray
from snp_service.compare import Run, check_comparable, comparison_tables, dataset_label, depth_table
from snp_service.errors import SnpError, StoreError
from snp_service.interrupts import stop_point, stop_threads
from snp_service.models.registry import measurement_points
from snp_service.report import comparison_page, comparison_summary, store_figure
from snp_service.spec import JobSpec, ModelSpec, input_size
from snp_service.store import FILES, JobStore, Store

STUDIES = "_studies"  # job names start with a letter or digit, so this never collides with a job
Progress = Callable[[str], None]


def study_folder(store: Store, name: str, kind: str, member_ids: list[str]) -> JobStore:
    """The one way a study's folder is named: `_studies/<name>-<kind>-<sha256 of the member ids>`."""
    digest = hashlib.sha256(",".join(member_ids).encode()).hexdigest()[:12]
    return store.job(f"{STUDIES}/{name}-{kind}-{digest}")


# ---------------------------------------------------------------- members


def member_concurrency(spec: JobSpec, members: int, resources: dict | None = None) -> int:
    """How many member jobs run at once: compute.max_concurrent_jobs, or with `auto` as many as the
    cluster's resources (`ray.cluster_resources()` now) hold one member's training workers, all of
    them on an autoscaling cluster (the autoscaler adds the nodes); never more than there are members."""
    c = spec.compute
    if c.max_concurrent_jobs != "auto":
        return max(1, min(c.max_concurrent_jobs, members))
    if c.autoscaling:
        return max(1, members)
    if resources is None:
        import ray

        ensure_ray(spec)
        resources = ray.cluster_resources()
    fits = math.floor(resources.get("CPU", 0) / (c.num_workers * c.cpus_per_worker) + 1e-9)
    if c.use_gpu is True or (c.use_gpu == "auto" and resources.get("GPU", 0) >= 1):
        fits = min(fits, math.floor(resources.get("GPU", 0) / c.num_workers + 1e-9))
    return max(1, min(fits, members))


def run_members(spec: JobSpec, members: list[tuple[str, JobSpec]],
                progress: Progress = print) -> list[pipeline.RunOutcome]:
    """Run the (tag, job) members, `member_concurrency` at a time, each a whole pipeline run (finished
    stages reused); outcomes in the members' order. A failing member does not stop the others: every
    member that can finish does, then the first failure is raised, naming its member. An interrupt
    of the driver (SIGINT, SIGTERM: raised in the main thread) stops every member the same way
    (stop_members) and waits for them to unwind, so each releases its lease and removes its workers'
    captured features before the driver exits; finished stages are kept."""
    n = member_concurrency(spec, len(members))
    progress(f"{len(members)} member job(s), {n} at a time")
    if n == 1:
        return [pipeline.run(v, progress) for _tag, v in members]
    outcomes: list = [None] * len(members)
    errors: list[tuple[int, BaseException]] = []
    slots = threading.Semaphore(n)
    stopping = threading.Event()
    finished = [threading.Event() for _ in members]

    def one(i: int, tag: str, v: JobSpec) -> None:
        try:
            # once stopping, a member's progress line is where it stops (and is not printed)
            outcomes[i] = pipeline.run(v, lambda m: stop_point() if stopping.is_set() else progress(f"[{tag}] {m}"))
        except BaseException as e:  # noqa: BLE001 - reported and raised by the driver thread
            if not stopping.is_set():  # a member told to stop is not a failure to report
                errors.append((i, e))
                progress(f"[{tag}] failed: {e}")
        finally:
            slots.release()
            finished[i].set()

    started: list[tuple[threading.Thread, threading.Event]] = []
    try:
        for i, (tag, v) in enumerate(members):
            slots.acquire()
            t = threading.Thread(target=one, args=(i, tag, v), name=f"member-{tag}", daemon=True)
            t.start()
            started.append((t, finished[i]))
        for done in finished:  # waits in slices, so an interrupt reaches this thread (never an
            while not done.wait(0.5):  # interrupted Thread.join: see interrupts.stop_threads)
                pass
    except BaseException:
        stopping.set()
        stop_members(started)
        raise
    if errors:
        i, e = min(errors, key=lambda x: x[0])
        tag = members[i][0]
        others = f" ({len(errors) - 1} other member(s) failed too)" if len(errors) > 1 else ""
        if isinstance(e, SnpError):
            raise type(e)(f"member {tag}: {e}{others}") from None
        raise e
    return outcomes


class MemberStopped(KeyboardInterrupt):
    """Raised in a member's thread when the study's driver was interrupted: the member unwinds as the
    main thread does on SIGINT (every `finally` and context manager runs: lease released, Ray workers
    killed, captured features removed)."""


STOP_GRACE_SECONDS = 60.0  # how long an interrupted study waits for its members to unwind


def stop_members(started: list[tuple[threading.Thread, threading.Event]],
                 grace: float = STOP_GRACE_SECONDS) -> list[threading.Thread]:
    """Tell the running members (thread, finished event) to stop: each raises MemberStopped at its
    next wait on Ray or progress line (interrupts.stop_threads); wait for them to unwind, at most
    `grace` seconds; the threads still running after. Before this the interpreter's exit froze the
    members mid-run: a member's lease stayed held (on S3 it blocks the job's next run from another
    host until it lapses), a member's failure was printed after the interrupt's line, and, as Ray
    shut down, a member's next Ray call started a new local Ray cluster."""
    return stop_threads(started, MemberStopped, grace)


# ---------------------------------------------------------------- compare


@dataclass
class StudyOutcome:
    uri: str
    tables: dict[str, pl.DataFrame]
    runs: list[Run]


def read_comparison(store: Store, runs: list[Run]) -> dict[str, pl.DataFrame]:
    """All comparison tables from the runs' stored results."""
    check_comparable(runs)
    layers, andc, heads, acc = [], [], [], []
    for r in runs:
        job = store.job(r.job_id)
        ev = job.stage_result("evaluate")
        if ev is None or not job.has("layers"):
            raise StoreError(f"job {r.job_id} has not finished its evaluate and cluster stages; run it first")
        m = r.spec["model"]
        cfg = ModelSpec.model_validate(m).config()
        family = cfg.family_label
        all_points = list(measurement_points(cfg, input_size(r.spec["dataset"])))
        layers.append(depth_table(r.label, r.seed, job.layers(), all_points, family))
        train = job.stage_result("train") or {}
        acc.append({"model": r.label, "family": family, "network": m["name"], "dataset": dataset_label(r.spec),
                    "seed": r.seed,
                    "job_id": r.job_id, "epochs": r.spec["train"]["epochs"], "accuracy": ev["accuracy"],
                    "eval_images": ev.get("images"), "train_seconds": train.get("seconds")})
        if job.has("andc"):
            andc.append(job.andc().select(
                pl.lit(r.label).alias("model"), pl.lit(r.seed).alias("seed"), "point", "method", "selection",
                "kept_fraction", "accuracy_full", "accuracy_pruned", "accuracy_finetuned"))
        if job.has("heads"):
            heads.append(job.heads().select(
                pl.lit(r.label).alias("model"), pl.lit(r.seed).alias("seed"), "point", "mean_labels_per_head",
                "mean_heads_per_label", "observed_jaccard", "null_mean", "overlap_deficit", "p_value", "p_min",
                "level", "status"))
    return comparison_tables(layers, acc, andc, heads)


def runs_from_store(store: Store, job_ids: list[str]) -> list[Run]:
    """Runs for `snp-service compare JOB_ID ...`: the label is the model name, extended with a number
    where one model was trained with different settings (other than the seed)."""
    known = set(store.job_ids())
    found, settings = [], {}  # settings: model name -> its distinct settings, in order of appearance
    for jid in job_ids:
        if jid not in known:
            raise StoreError(f"no job {jid!r} in {store.uri}; `snp-service results --store {store.uri}` lists them")
        job = store.job(jid)
        spec = job.spec_json()
        setting = {k: v for k, v in spec.items() if k not in ("name", "description", "storage", "compute", "compare")}
        setting["train"] = {k: v for k, v in setting["train"].items() if k != "seed"}
        key = json.dumps(setting, sort_keys=True)
        seen_keys = settings.setdefault(spec["model"]["name"], [])
        if key not in seen_keys:
            seen_keys.append(key)
        found.append((jid, job, spec, key))
    out = []
    for jid, job, spec, key in found:
        name = spec["model"]["name"]
        label = name if len(settings[name]) == 1 else f"{name}#{settings[name].index(key) + 1}"
        out.append(Run(label, spec["train"]["seed"], jid, job.uri, spec))
    seen = {}
    for r in out:
        if (r.label, r.seed) in seen:
            raise StoreError(f"jobs {seen[(r.label, r.seed)]} and {r.job_id} are the same model, settings and seed")
        seen[(r.label, r.seed)] = r.job_id
    return out


def run_comparison(spec: JobSpec, progress: Progress = print) -> StudyOutcome:
    """Run every (model, seed) job of the compare section (finished ones are reused), then compare."""
    store = Store.from_spec(spec.storage)
    store.check()
    plan = spec.compare_jobs()
    progress(f"compare: {len(plan)} runs ({len(spec.compare.models)} model(s) x {len(spec.compare.seeds)} seed(s))")
    for i, (label, seed, v) in enumerate(plan, 1):
        progress(f"compare: run {i}/{len(plan)}: {label} seed {seed} -> job {v.job_id()}")
    outcomes = run_members(spec, [(f"{label} s{seed}", v) for label, seed, v in plan], progress)
    runs = [Run(label, seed, o.job_id, o.uri, v.model_dump(mode="json")) for (label, seed, v), o in zip(plan, outcomes)]
    return write_comparison(store, spec.name, runs, progress, spec.model_dump(mode="json"))


def write_comparison(store: Store, name: str, runs: list[Run], progress: Progress = print,
                     spec_json: dict | None = None) -> StudyOutcome:
    tables = read_comparison(store, runs)
    study = study_folder(store, name, "compare", [r.job_id for r in runs])
    for k, t in tables.items():
        study.write_table(f"compare/{k}.parquet", t)
    study.write_json("compare/runs.json", [{"model": r.label, "seed": r.seed, "job_id": r.job_id} for r in runs])
    if spec_json is not None:
        study.write_json(FILES["spec"], spec_json)
    report_path = comparison_page(study, tables, runs, spec_json)
    study.write_text(FILES["summary"], comparison_summary(tables, runs, study.uri))
    progress(f"compare: tables, figure and report in {study.uri}/ ({report_path})")
    return StudyOutcome(study.uri, tables, runs)


# ---------------------------------------------------------------- heads


def run_heads_study(spec: JobSpec, heads: list[int] | None = None, progress: Progress = print) -> pl.DataFrame:
    """Run every head count (reusing finished jobs; default the file's heads_study.num_heads), then
    tabulate: one row per (num_heads, MHA point)."""
    jobs = spec.heads_jobs(heads)
    heads = [v.model.num_heads for v in jobs]
    store = Store.from_spec(spec.storage)
    store.check()
    for h, v in zip(heads, jobs):
        progress(f"study: {h} head(s) -> job {v.job_id()}")
    outcomes = run_members(spec, [(f"h{h}", v) for h, v in zip(heads, jobs)], progress)
    rows = []
    for h, v, outcome in zip(heads, jobs, outcomes):
        job = store.job(outcome.job_id)
        layers = job.layers()
        summary = job.heads() if job.has("heads") else None
        for p in v.head_points():
            layer = layers.filter(pl.col("point") == p).row(0, named=True)
            head = summary.filter(pl.col("point") == p).row(0, named=True) if summary is not None else {}
            rows.append({"num_heads": h, "job_id": outcome.job_id, "point": p,
                         "accuracy": outcome.stages["evaluate"]["accuracy"],
                         "readout_accuracy": layer["readout_accuracy"], "snr": layer["snr"],
                         "snr_lo": layer["snr_lo"], "snr_hi": layer["snr_hi"],
                         **{k: layer.get(k) for k in ("label_specific_fraction", "effect_size", "effect_size_lo",
                                                      "effect_size_hi")},
                         **{k: head.get(k) for k in ("mean_labels_per_head", "mean_heads_per_label",
                                                     "observed_jaccard", "null_mean", "null_sd", "overlap_deficit",
                                                     "p_value", "p_min", "status", "reason", "specialisation",
                                                     "specialisation_null_mean", "specialisation_p",
                                                     "specialisation_status")}})
    table = pl.DataFrame(rows)
    study = study_folder(store, spec.name, "heads", [v.job_id() for v in jobs])
    study.write_table("heads_study.parquet", table)
    store_figure(study, "heads_study", figures.heads_study(table))
    progress(f"study: table and figure in {study.uri}")
    return table


# ---------------------------------------------------------------- sweep


def write_sweep_table(study: JobStore, table: pl.DataFrame, dims: list[str]) -> str:
    """A sweep's table and figure in its study folder (snp_service.sweep names it via study_folder)."""
    path = study.write_table("sweep.parquet", table)
    store_figure(study, "sweep", figures.sweep_figure(table, dims))
    return path
