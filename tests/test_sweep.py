"""Tune sweeps a Ray user can trust (issue 29, item 2 and 'Sweeps'): trials that can be placed, a
deadline instead of an endless wait, `--fresh`, a resume that applies new settings, and the sweep
table filled from the jobs the trials ran."""

import json
import shutil
import time
import uuid
from types import SimpleNamespace

import polars as pl
import pytest
import yaml

from snp_service import sweep
from snp_service.errors import SnpError
from snp_service.spec import load_spec, spec_from_dict
from snp_service.store import Store
from tests.conftest import REPO, tiny_job


def test_a_trial_holds_no_cpu_of_its_own():
    """Its TorchTrainer's worker asks for the CPUs: a trial holding even 0.01 CPU kept a worker of a
    whole node's CPUs from ever being placed (the quickstart's 2 CPUs on a 2-core machine)."""
    from ray.tune.execution.placement_groups import resource_dict_to_pg_factory

    request = resource_dict_to_pg_factory(dict(sweep.TRIAL_RESOURCES))
    assert request.required_resources.get("CPU", 0) == 0 and request.required_resources.get("GPU", 0) == 0


def test_the_shipped_sweep_is_heads_by_thresholds_and_fills_a_two_core_node(monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_spec(REPO / "jobs" / "sweep.yaml")
    assert sweep.grid(spec) == [{"num_heads": h, "threshold": t} for h in (2, 4) for t in (0.3, 0.5)]
    assert spec.compute.cpus_per_worker == 2 and spec.compute.start_timeout_s == 600


def test_a_changed_setting_outside_the_id_is_seen_and_another_copy_of_the_directory_is_not(tmp_path):
    d = {**tiny_job(tmp_path), "sweep": {"threshold": [0.3, 0.5]}}
    d["dataset"]["root"] = "data"
    base = [s.model_dump(mode="json") for s in map(lambda o: sweep.trial_spec(spec_from_dict(
        {**d, "workdir": str(tmp_path / "a")}), o), [{"threshold": 0.3}, {"threshold": 0.5}])]
    moved = [s.model_dump(mode="json") for s in map(lambda o: sweep.trial_spec(spec_from_dict(
        {**d, "workdir": str(tmp_path / "b")}), o), [{"threshold": 0.5}, {"threshold": 0.3}])]
    assert sweep._same_jobs(base, moved)  # a cluster's new copy of the working directory: the same jobs
    more = [{**c, "compute": {**c["compute"], "snp_actors": 2}} for c in base]
    assert not sweep._same_jobs(base, more)


def test_the_table_shows_the_job_each_trial_reported_and_its_error(tmp_path):
    spec = spec_from_dict({**tiny_job(tmp_path), "sweep": {"threshold": [0.3, 0.5]}})
    trials = sweep.grid(spec)
    specs = [sweep.trial_spec(spec, o) for o in trials]
    configs = [s.model_dump(mode="json") for s in specs]
    error = RuntimeError("Traceback (most recent call last):\n  File ...\n"
                         "snp_service.errors.SnpError: train: 1 training worker(s) could not be placed")
    results = [SimpleNamespace(config={"spec": configs[0]}, metrics={"job_id": "elsewhere-0123456789ab"}, error=None),
               SimpleNamespace(config={"spec": configs[1]}, metrics={}, error=error)]
    notes = []
    table = sweep.sweep_table(Store.from_spec(spec.storage), specs, trials, results, notes.append)
    assert table["job_id"].to_list() == ["elsewhere-0123456789ab", specs[1].job_id()]
    assert table["status"].to_list() == ["stopped", "failed"]
    assert table["error"].to_list() == [None, "train: 1 training worker(s) could not be placed"]
    assert notes and "elsewhere-0123456789ab" in notes[0]


# --- on a cluster -----------------------------------------------------------------------------------


@pytest.fixture
def blocker(ray_cluster):
    """An actor holding 1.5 of the local cluster's 2 CPUs (another job's workers, say)."""
    import ray

    @ray.remote(num_cpus=1.5)
    class Hold:
        def ready(self):
            return True

    h = Hold.remote()
    ray.get(h.ready.remote())
    yield h
    ray.kill(h)


@pytest.mark.slow
def test_snp_workers_that_cannot_be_placed_fail_at_the_deadline_with_one_message(tmp_path, blocker):
    """The measure stage's actors (1 CPU each) on a cluster with 0.5 CPU free: one message at
    compute.start_timeout_s, naming what did not fit and what is free (actors.workers_for)."""
    from snp_service.actors import workers_for

    spec = spec_from_dict(tiny_job(tmp_path, **{"compute.start_timeout_s": 2.0, "compute.cpus_per_worker": 1}))
    t0 = time.monotonic()
    with pytest.raises(SnpError) as e, workers_for(spec, ["blocks.0.out"], "measure", lambda m: None):
        pass
    assert 2.0 <= time.monotonic() - t0 < 60
    msg = str(e.value)
    assert msg.startswith("measure: 1 worker(s) of 1 CPU(s) could not be placed within compute.start_timeout_s (2 s)")
    assert "0.5 of 2 CPUs" in msg and "\n" not in msg, msg


@pytest.mark.slow
def test_training_workers_that_cannot_be_placed_fail_at_the_deadline_with_one_message(tmp_path, blocker):
    from snp_service import pipeline

    spec = spec_from_dict(tiny_job(tmp_path, **{"compute.start_timeout_s": 3.0, "train.epochs": 1}))
    t0 = time.monotonic()
    with pytest.raises(SnpError) as e:
        pipeline.run(spec, progress=lambda m: None)
    assert time.monotonic() - t0 < 180
    msg = str(e.value)
    assert "could not be placed within compute.start_timeout_s (3 s)" in msg and "of 2 CPUs" in msg, msg
    assert "\n" not in msg


@pytest.mark.slow
def test_a_sweep_that_cannot_be_placed_ends_with_one_line(tmp_path, blocker, capsys):
    """A worker larger than every node: refused before any trial; one held by others: each trial
    fails at the deadline, and the sweep exits 1 with one line for them all."""
    from snp_service.cli import main

    job = tiny_job(tmp_path, **{"train.epochs": 1, "compute.start_timeout_s": 3.0})
    job["sweep"] = {"threshold": [0.3, 0.5]}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**job, "compute": {**job["compute"], "cpus_per_worker": 3}}))
    assert main(["sweep", str(path)]) == 2
    assert "do not fit this Ray cluster" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(job))
    assert main(["sweep", str(path)]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("snp-service:")]
    assert len(err) == 1 and "2 trial(s) failed" in err[0] and "compute.start_timeout_s (3 s)" in err[0], err


TINY = ["train.epochs=1", "train.warmup_epochs=0",
        "dataset.synthetic={num_classes: 4, train_per_class: 48, test_per_class: 12, seed: 0}",
        "analysis.readout_epochs=2", "analysis.bootstrap=50", "heads.null_draws=200",
        "measure.points=[blocks.0.attn.heads, blocks.1.out]"]


@pytest.mark.slow
def test_the_shipped_sweep_through_submit_fills_its_table_from_the_trials_jobs(tmp_path, s3_server, ray_head,
                                                                              monkeypatch, capsys):
    """jobs/sweep.yaml (relative dataset root, cpus_per_worker 2 on a 2-CPU head) submitted as users
    do: every row is the job its trial ran, complete, with that job's numbers. Submitted again with a
    changed setting outside the job id, the trials' jobs carry it; with --fresh, a new experiment."""
    from snp_service.cli import main
    from snp_service.studies import study_folder

    work = tmp_path / "work"
    (work / "jobs").mkdir(parents=True)
    shutil.copy(REPO / "jobs" / "sweep.yaml", work / "jobs" / "sweep.yaml")
    monkeypatch.chdir(work)
    store = f"s3://snp-test/{uuid.uuid4().hex[:8]}"
    sets = [*TINY, f"storage.endpoint={s3_server.endpoint}"]
    args = ["submit", "jobs/sweep.yaml", "--address", ray_head, "--store", store, "--wait"]
    args += [x for s in sets for x in ("--set", s)]

    assert main(args) == 0, capsys.readouterr().out[-4000:]
    spec = load_spec(work / "jobs" / "sweep.yaml", sets, store)
    expected = [sweep.trial_spec(spec, o).job_id() for o in sweep.grid(spec)]
    st = Store.from_spec(spec.storage)
    study = study_folder(st, spec.name, "sweep", expected)

    def check_table() -> pl.DataFrame:
        table = study.read_table("sweep.parquet")
        assert table["job_id"].to_list() == expected
        assert (table["status"] == "complete").all(), table
        for row in table.iter_rows(named=True):
            job = st.job(row["job_id"])
            assert job.manifest()["status"] == "complete"
            assert row["accuracy"] == job.stage_result("evaluate")["accuracy"]
            assert row["num_heads"] == job.spec_json()["model"]["num_heads"]
            assert row["threshold"] == job.spec_json()["analysis"]["threshold"]
        return table

    check_table()
    assert sorted(st.job_ids()) == sorted(expected)  # no job under another id
    assert st.job(expected[1]).stage_result("train")["reused_from"] == expected[0]  # threshold trial: no retraining

    assert main(args + ["--set", "compute.snp_actors=2"]) == 0
    out = capsys.readouterr().out
    assert "a new Tune experiment applies them" in out, out[-4000:]
    check_table()
    assert all(st.job(j).spec_json()["compute"]["snp_actors"] == 2 for j in expected)

    assert main(args + ["--set", "compute.snp_actors=2", "--fresh"]) == 0
    out = capsys.readouterr().out
    assert "--fresh: the earlier Tune experiment is replaced" in out, out[-4000:]
    check_table()
    assert json.dumps(sorted(st.job_ids())) == json.dumps(sorted(expected))
