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
named by their config, and an interrupted sweep is resumed with `Tuner.restore`. At the end, one
row per trial (config, job id, accuracy, SNP / heads / ANDC summaries) goes to
`<store>/_studies/<name>-sweep-<hash>/sweep.parquet`, with a figure.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import polars as pl
from ray import tune
from ray.tune import RunConfig, TuneConfig, Tuner
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from snp_service import pipeline
from snp_service.actors import ensure_ray
from snp_service.errors import SpecError
from snp_service.spec import JobSpec, derive_job
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


def _trainable(config: dict) -> None:
    """One trial: the pipeline for the trial's job, epochs reported to Tune as they finish."""
    spec = JobSpec.model_validate(config["spec"])
    outcome = pipeline.run(spec, progress=lambda m: print(f"[trial] {m}", flush=True),
                           train_callbacks=[TuneReportCallback()])
    job = Store.from_spec(spec.storage).job(outcome.job_id)
    final = {k: v for k, v in summarise(job, spec).items() if isinstance(v, (int, float)) and v is not None}
    tune.report({"done": True, **final, "eval_accuracy": final.get("accuracy", 0.0)})


def run_sweep(spec: JobSpec, progress: Callable[[str], None] = print) -> pl.DataFrame:
    trials = grid(spec)
    specs = [trial_spec(spec, o) for o in trials]
    store = Store.from_spec(spec.storage)
    store.check()
    study = study_folder(store, spec.name, "sweep", [s.job_id() for s in specs])
    name = study.job_id.rsplit("/", 1)[-1]
    ensure_ray(spec)
    progress(f"sweep {name}: {len(trials)} trials ({', '.join(trials[0])}) -> {study.uri}")
    param = tune.grid_search([s.model_dump(mode="json") for s in specs])
    trainable = tune.with_resources(_trainable, {"CPU": 0.01})  # its TorchTrainer and actors take the CPUs
    storage, fs = study.path("tune"), (store.fs if store.remote else None)
    path = f"{storage}/{name}"
    scheduler = None
    if spec.sweep.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=spec.train.epochs + 1,
                                  grace_period=max(1, spec.train.epochs // 4))
    if Tuner.can_restore(path, storage_filesystem=fs):
        progress(f"sweep {name}: resuming an interrupted sweep (Tuner.restore)")
        tuner = Tuner.restore(path, trainable=trainable, resume_errored=True, storage_filesystem=fs)
    else:
        tuner = Tuner(trainable, param_space={"spec": param},
                      tune_config=TuneConfig(metric="eval_accuracy", mode="max", scheduler=scheduler,
                                             max_concurrent_trials=spec.sweep.max_concurrent_trials,
                                             # job ids, not names: names of long jobs are cut at 64
                                             # characters and could collide; ids carry their hash
                                             trial_dirname_creator=lambda t: trial_id(t.config["spec"]),
                                             trial_name_creator=lambda t: trial_id(t.config["spec"])),
                      run_config=RunConfig(name=name, storage_path=storage, storage_filesystem=fs))
    results = tuner.fit()
    rows = []
    for s, overrides in zip(specs, trials):
        job = store.job(s.job_id())
        status = "complete" if job.manifest() else ("stopped" if job.stage_result("train") is None else "incomplete")
        rows.append({**overrides, "job_id": s.job_id(), "status": status,
                     **(summarise(job, s) if job.manifest() else {})})
    errors = [r.error for r in results if r.error]
    table = pl.DataFrame(rows)
    write_sweep_table(study, table, list(trials[0]))
    progress(f"sweep {name}: {len(rows)} trials, {len(errors)} failed; table at {study.uri}/sweep.parquet")
    return table
