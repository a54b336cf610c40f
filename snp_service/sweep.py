"""Ray Tune sweeps (`snp-service sweep JOB.yaml`): the job's `sweep:` section is a grid over number of
heads (width fixed), SNP threshold (`analysis.threshold`, which the ANDC masks also use unless
`pruning.threshold` is set) and learning rate.

Each trial is a Tune function trainable that runs the whole pipeline for its variant of the job;
its training is a Ray Train `TorchTrainer` whose per-epoch reports reach Tune through
`TuneReportCallback` (the Train V2 way: no `Tuner(trainer)`), so ASHA can stop poor trials on
`eval_accuracy`. Every trial is a job with its own content-derived id in the same store, so a trial
that differs from a finished one only in the threshold (`analysis.threshold`) copies its trained
network and its measure stage (capture, readouts, fields, label-dependence statistics: pipeline stage
keys) and runs only the cluster stage and those after it; trials that run at the same time
(max_concurrent_trials > 1) cannot copy from each other and each train and measure. A re-run sweep
reuses every finished trial. Trial directories are
named by their job ids, and an interrupted sweep is resumed with `Tuner.restore` when its trials'
jobs are what they were; a sweep whose jobs changed in fields outside the job id (compute, say)
or one run with `fresh` starts a new Tune experiment instead (finished jobs are still reused by
id), so the new fields apply. A trial holds no CPU of its own (TRIAL_RESOURCES): its TorchTrainer
and actors ask for theirs, so a worker as large as a node still fits. At the end, one row per trial
(config, the job id the trial reported, accuracy, SNP / heads / ANDC summaries) goes to
`<store>/_studies/<name>-sweep-<hash>/sweep.parquet`, with a figure.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable

import polars as pl
from ray import tune
from ray.tune import RunConfig, TuneConfig, Tuner
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from snp_service import pipeline
from snp_service.actors import ensure_ray
from snp_service.errors import SpecError
from snp_service.spec import JobSpec, derive_job, portable_paths
from snp_service.store import JobStore, Store
from snp_service.studies import study_folder, write_sweep_table


def grid(spec: JobSpec) -> list[dict]:
    """Every trial's overrides, in a fixed order."""
    sw = spec.sweep
    if sw is None:
        raise SpecError("the job has no sweep: section (num_heads / threshold / lr lists)")
    dims = {"num_heads": sw.num_heads, "threshold": sw.threshold, "lr": sw.lr}
    dims = {k: v for k, v in dims.items() if v}
    if not dims:
        raise SpecError("sweep: give at least one of num_heads, threshold, lr")
    keys = list(dims)
    return [dict(zip(keys, values)) for values in itertools.product(*(dims[k] for k in keys))]


# where each swept dimension lives in a job
SWEPT = {"num_heads": ("model", "num_heads"), "lr": ("train", "lr"), "threshold": ("analysis", "threshold")}


def trial_spec(spec: JobSpec, overrides: dict) -> JobSpec:
    """One trial's job: the base job with the trial's values (derive_job), named by them."""
    suffix = "-".join(f"{k[0]}{v}" for k, v in sorted(overrides.items()))
    nested: dict = {}
    for k, v in overrides.items():
        section, field = SWEPT[k]
        nested.setdefault(section, {})[field] = v
    return derive_job(spec, f"{spec.name}-{suffix}", nested, f"{spec.name} trial {overrides}")


def trial_id(spec_json: dict) -> str:
    """A trial's folder and name in Tune: its job id (unique where cut names are not)."""
    return JobSpec.model_validate(spec_json).job_id()


def summarise(job: JobStore, spec: JobSpec) -> dict:
    """A trial's numbers for the sweep table (the last measured point of each kind)."""
    out = {"accuracy": (job.stage_result("evaluate") or {}).get("accuracy")}
    if job.has("layers"):
        layers = job.layers()
        last = layers.row(len(layers) - 1, named=True)
        out.update(last_point=last["point"], last_snr=last["snr"], last_readout_accuracy=last["readout_accuracy"],
                   mean_snr=float(layers["snr"].mean()))
    if job.has("heads"):
        h = job.heads()
        last = h.row(len(h) - 1, named=True)
        out.update(heads_point=last["point"], heads_p=last["p_value"], heads_p_min=last["p_min"], heads_status=last["status"],
                   labels_per_head=last["mean_labels_per_head"])
    if job.has("andc"):
        a = job.andc().filter(pl.col("method") == "andc")
        last = a.row(len(a) - 1, named=True)
        out.update(andc_kept=last["kept_fraction"], andc_accuracy=last["accuracy_pruned"],
                   andc_drop=last["accuracy_full"] - last["accuracy_pruned"])
    return out


# What a trial itself holds: no CPU (its TorchTrainer's workers and its SNP actors ask for their own;
# a trial holding even 0.01 CPU kept a worker of a whole node's CPUs from ever being placed). Tune
# needs a non-empty request, so it is one byte of Ray's memory resource.
TRIAL_RESOURCES = {"CPU": 0, "memory": 1}


def _trainable(config: dict) -> None:
    """One trial: the pipeline for the trial's job, epochs reported to Tune as they finish."""
    spec = JobSpec.model_validate(config["spec"])
    outcome = pipeline.run(spec, progress=lambda m: print(f"[trial] {m}", flush=True),
                           train_callbacks=[TuneReportCallback()])
    job = Store.from_spec(spec.storage).job(outcome.job_id)
    final = {k: v for k, v in summarise(job, spec).items() if isinstance(v, (int, float)) and v is not None}
    tune.report({"done": True, **final, "eval_accuracy": final.get("accuracy", 0.0), "job_id": outcome.job_id})


def check_placeable(spec: JobSpec) -> None:
    """Refuse a sweep whose training workers or SNP actors fit no node of the cluster (every trial
    shares the base job's compute section), before any trial starts."""
    import ray

    from snp_service.actors import check_worker_fits, gpus_per_worker
    from snp_service.train import check_fits_cluster

    use_gpu = spec.compute.use_gpu
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    check_fits_cluster(spec, bool(use_gpu), [n["Resources"] for n in ray.nodes() if n.get("Alive")])
    check_worker_fits(spec, gpus_per_worker(spec), "snp")


def _same_jobs(configs: list[dict], others: list[dict]) -> bool:
    """Whether two sweeps' trial configs are the same jobs with the same settings (paths compared as
    the job id sees them, so another copy of the working directory on a cluster is not a change)."""
    def key(c: dict) -> str:
        return json.dumps({k: v for k, v in portable_paths(c).items() if k != "workdir"}, sort_keys=True)
    return sorted(map(key, configs)) == sorted(map(key, others))


def run_sweep(spec: JobSpec, progress: Callable[[str], None] = print, fresh: bool = False) -> pl.DataFrame:
    """Run the grid as a Tune experiment (resumed when it was interrupted and its jobs are unchanged;
    `fresh`: a new experiment); returns the table of all trials, also written to the study folder.
    A trial that failed is a `failed` row with its error (run_sweep does not raise for it)."""
    trials = grid(spec)
    specs = [trial_spec(spec, o) for o in trials]
    store = Store.from_spec(spec.storage)
    store.check()
    study = study_folder(store, spec.name, "sweep", [s.job_id() for s in specs])
    name = study.job_id.rsplit("/", 1)[-1]
    ensure_ray(spec)
    check_placeable(specs[0])  # one message now, not one failed trial per grid point
    progress(f"sweep {name}: {len(trials)} trials ({', '.join(trials[0])}) -> {study.uri}")
    configs = [s.model_dump(mode="json") for s in specs]
    trainable = tune.with_resources(_trainable, TRIAL_RESOURCES)
    storage, fs = study.path("tune"), (store.fs if store.remote else None)
    path = f"{storage}/{name}"
    scheduler = None
    if spec.sweep.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.train.epochs + 1,
                                  grace_period=max(1, spec.train.epochs // 4))
    tuner = None
    if Tuner.can_restore(path, storage_filesystem=fs):
        earlier = None if fresh else Tuner.restore(path, trainable=trainable, resume_errored=True,
                                                   storage_filesystem=fs)
        if earlier is None:
            progress(f"sweep {name}: --fresh: the earlier Tune experiment is replaced (finished jobs are still "
                     "reused by id)")
        elif not _same_jobs(configs, [r.config["spec"] for r in earlier.get_results()]):
            progress(f"sweep {name}: the trials' settings changed since the earlier run (fields outside the job "
                     "id, e.g. compute); a new Tune experiment applies them (finished jobs are still reused by id)")
        else:
            progress(f"sweep {name}: resuming an interrupted sweep (Tuner.restore)")
            tuner = earlier
        if tuner is None:
            study.remove_folder(f"tune/{name}")
    if tuner is None:
        tuner = Tuner(trainable, param_space={"spec": tune.grid_search(configs)},
                      tune_config=TuneConfig(metric="eval_accuracy", mode="max", scheduler=scheduler,
                                             max_concurrent_trials=spec.sweep.max_concurrent_trials,
                                             # job ids, not names: names of long jobs are cut at 64
                                             # characters and could collide; ids carry their hash
                                             trial_dirname_creator=lambda t: trial_id(t.config["spec"]),
                                             trial_name_creator=lambda t: trial_id(t.config["spec"])),
                      run_config=RunConfig(name=name, storage_path=storage, storage_filesystem=fs))
    results = tuner.fit()
    table = sweep_table(store, specs, trials, results, progress)
    write_sweep_table(study, table, list(trials[0]))
    failed = table.filter(pl.col("status").is_in(["failed", "incomplete"])).height
    progress(f"sweep {name}: {len(table)} trials, {failed} failed or incomplete; table at {study.uri}/sweep.parquet")
    return table


def error_line(error: BaseException) -> str:
    """A failed trial's error as one line: the last line of Ray's traceback text (the exception the
    trial raised), its `module.Class: ` prefix dropped."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    return re.sub(r"^[\w.]+(Error|Exception|Interrupt): ", "", lines[-1])[:500]


def sweep_table(store: Store, specs: list[JobSpec], trials: list[dict], results, progress: Callable[[str], None]
                ) -> pl.DataFrame:
    """One row per trial from the job that trial ran: the id it reported to Tune (its expected id
    when it reported none: a trial stopped or failed before its pipeline ended), its status in the
    store (complete: manifest written; stopped: training never finished, e.g. stopped by ASHA;
    incomplete: trained, a later stage missing; failed: the trial raised) and its summaries."""
    reported, errors = {}, {}
    for r in results:
        expected = trial_id(r.config["spec"])
        if r.metrics and r.metrics.get("job_id"):
            reported[expected] = r.metrics["job_id"]
        if r.error:
            errors[expected] = error_line(r.error)
    rows = []
    for s, overrides in zip(specs, trials):
        expected = s.job_id()
        job_id = reported.get(expected, expected)
        if job_id != expected:
            progress(f"sweep: trial {expected} ran as job {job_id}; its row shows that job")
        job = store.job(job_id)
        manifest = job.manifest()
        status = "complete" if manifest else ("stopped" if job.stage_result("train") is None else "incomplete")
        if expected in errors and not manifest:
            status = "failed"
        rows.append({**overrides, "job_id": job_id, "status": status, "error": errors.get(expected),
                     **(summarise(job, s) if manifest else {})})
    return pl.DataFrame(rows)
