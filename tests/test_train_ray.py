"""Training through Ray Train on a real local Ray cluster (slow: each test trains a tiny CCT)."""

import pytest
import ray.train

from snp_service import pipeline
from snp_service.spec import spec_from_dict
from snp_service.store import Store
from snp_service.train import fit
from tests.conftest import tiny_job
from tests.faults import FailAfterEpoch, KillMidEpoch

pytestmark = pytest.mark.slow


def test_pipeline_trains_above_chance_and_reuses_stages(tmp_path, ray_cluster):
    spec = spec_from_dict(tiny_job(tmp_path))
    messages = []
    out = pipeline.run(spec, progress=messages.append)
    assert out.stages["evaluate"]["accuracy"] > 0.5 > out.stages["evaluate"]["chance"]
    job = Store.from_spec(spec.storage).job(spec.job_id())
    metrics = job.read_table("train/metrics.parquet")
    assert metrics["epoch"].to_list() == [0, 1, 2]
    assert metrics["eval_accuracy"][-1] > metrics["eval_accuracy"][0] or metrics["eval_accuracy"][0] > 0.9
    listed = {a["path"] for a in job.manifest()["artefacts"]}
    assert {"spec.json", "model/weights.pt", "train/metrics.parquet", "eval/per_class.parquet"} <= listed
    assert any(p.endswith("state.pt") for p in listed)  # Ray Train's checkpoints live in the job folder

    again = []
    pipeline.run(spec, progress=again.append)
    assert sum("already finished" in m for m in again) == len(pipeline.STAGES)

    layers = job.read_table("snp/layers.parquet")
    assert layers["point"].to_list() == spec.selected_points()
    assert (layers["readout_accuracy"] > 0.25).all()  # every point's readout beats chance (4 labels)
    assert ((layers["snr_lo"] <= layers["snr"]) | layers["snr"].is_nan()).all()


def test_training_on_the_device_data_path_learns_with_the_same_job_id(tmp_path, ray_cluster, capfd):
    """compute.data_on_device: true takes the GPU's data path here on CPU (decoded once, batches cut
    and augmented on the device): the same job id as the DataLoader path, and it learns as well."""
    job = tiny_job(tmp_path, **{"train.epochs": 3})
    loader = spec_from_dict(job)
    job["compute"]["data_on_device"] = True
    spec = spec_from_dict(job)
    assert spec.job_id() == loader.job_id()  # compute settings that do not change results stay out of the id
    result = fit(spec, str(tmp_path / "ckpt"))
    out = capfd.readouterr()
    assert "data on cpu: 384 training and 64 evaluation images as uint8" in out.out + out.err
    assert (out.out + out.err).count("epoch 2/3 ") == 1  # the workers' lines reached this console, once...
    assert "Reporting training result" not in out.out + out.err  # ...but not Ray Train's per-report lines
    hist = result.state["history"]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[-1]["eval_accuracy"] > 0.5  # 4 classes: chance 0.25
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]


def test_same_job_twice_gives_same_metrics(tmp_path, ray_cluster):
    a = spec_from_dict(tiny_job(tmp_path, storage={"root": str(tmp_path / "a")}, **{"train.epochs": 2}))
    b = spec_from_dict(tiny_job(tmp_path, storage={"root": str(tmp_path / "b")}, **{"train.epochs": 2}))
    assert a.job_id() == b.job_id()
    ra, rb = fit(a, str(tmp_path / "a" / "train")), fit(b, str(tmp_path / "b" / "train"))
    keys = ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy")
    assert [[h[k] for k in keys] for h in ra.state["history"]] == [[h[k] for k in keys] for h in rb.state["history"]]


def test_evaluating_every_second_epoch_trains_the_same_network(tmp_path, ray_cluster):
    """train.eval_every (for an evaluation split much larger than the training split): the skipped
    epochs' eval metrics are NaN, the last epoch is evaluated, and the weights are those of the run
    that evaluates every epoch (evaluation draws no random numbers)."""
    import math

    import torch

    every = spec_from_dict(tiny_job(tmp_path, storage={"root": str(tmp_path / "a")}, **{"train.epochs": 3}))
    sparse = spec_from_dict(tiny_job(tmp_path, storage={"root": str(tmp_path / "b")},
                                     **{"train.epochs": 3, "train.eval_every": 2}))
    assert sparse.job_id() != every.job_id()  # its stored history differs
    ra, rb = fit(every, str(tmp_path / "a" / "train")), fit(sparse, str(tmp_path / "b" / "train"))
    hb = rb.state["history"]
    assert [math.isnan(h["eval_accuracy"]) for h in hb] == [True, False, False]  # epochs 2 and 3 (the last)
    assert hb[-1]["eval_accuracy"] == ra.state["history"][-1]["eval_accuracy"]
    for k, v in ra.state["model"].items():
        assert torch.equal(v, rb.state["model"][k]), k


def test_interrupted_run_resumes_from_its_last_checkpoint(tmp_path, ray_cluster):
    spec = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 4}))
    storage = str(tmp_path / "train")
    with pytest.raises(ray.train.TrainingFailedError) as err:
        fit(spec, storage, worker_hooks=[FailAfterEpoch(1)], max_failures=0)
    assert "injected failure after epoch 1" in str(err.value)
    resumed = fit(spec, storage)  # same run name and storage: Ray Train V2 restores the run
    epochs = [h["epoch"] for h in resumed.state["history"]]
    assert epochs == [0, 1, 2, 3]

    uninterrupted = fit(spec, str(tmp_path / "clean"))
    for h1, h2 in zip(resumed.state["history"], uninterrupted.state["history"]):
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], rel=1e-6)  # continues where it stopped


def test_resume_from_checkpoint_continues_at_next_epoch(tmp_path, ray_cluster):
    short = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 2}))
    first = fit(short, str(tmp_path / "first"))
    longer = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 3}))
    second = fit(longer, str(tmp_path / "second"), resume_from=first.checkpoint_path)
    assert [h["epoch"] for h in second.state["history"]] == [0, 1, 2]
    assert second.state["history"][:2] == first.state["history"]


def test_heads_and_prune_stages_and_reuse_across_jobs(full_job):
    job_dict, spec, job = full_job

    heads = job.read_table("heads/summary.parquet")
    assert heads["point"].to_list() == ["blocks.0.attn.heads"] and heads["heads"].to_list() == [4]
    status = heads["status"][0]
    assert status in ("ok", "undefined", "uninformative")
    assert (heads["reason"][0] == "") == (status == "ok")
    assert job.read_array("heads/blocks.0.attn.heads/heads_labels.npy").shape == (4, 4)

    andc = job.read_table("prune/andc.parquet")
    assert set(andc["method"]) == {"andc", "random", "magnitude"}
    for p in spec.selected_points():  # equal kept fraction for the three methods at every point
        assert andc.filter(andc["point"] == p)["kept_fraction"].n_unique() == 1
    curve = job.read_table("prune/curve.parquet")
    assert len(curve) == 3 * len(spec.selected_points())
    structural = job.table("structural")
    assert structural["method"].to_list() == ["none", "snp", "magnitude"]
    base, snp, mag = structural.rows(named=True)
    assert snp["params"] == mag["params"] < base["params"] and snp["macs_per_image"] < base["macs_per_image"]
    assert snp["heads_removed"] == 2 and snp["ff_units_removed"] == 16

    # a job that changes only the ANDC threshold reuses training, evaluation, measure, cluster, heads and
    # the structural pruning (it reads no threshold) of the first
    other = spec_from_dict({**job_dict, "pruning": {**job_dict["pruning"], "threshold": 0.5}})
    assert other.job_id() != spec.job_id()
    messages = []
    out = pipeline.run(other, progress=messages.append)
    for stage in ("data", "train", "evaluate", "measure", "cluster", "heads", "structure"):
        assert out.stages[stage]["reused_from"] == spec.job_id(), stage
    assert "reused_from" not in out.stages["prune"]
    copied = Store.from_spec(other.storage).job(other.job_id())
    assert copied.read_bytes("model/weights.pt") == job.read_bytes("model/weights.pt")
    assert (copied.read_table("prune/andc.parquet")["threshold"] == 0.5).all()


def test_heads_study_job_file_runs_its_members_at_once_and_tabulates(tmp_path, ray_cluster, capsys):
    """A job file with a heads_study section through `snp-service run`: the two head counts are jobs
    of their own, trained at the same time (the cluster's 2 CPUs hold two 1-CPU members), then one table."""
    from datetime import datetime

    import yaml

    from snp_service import cli
    from snp_service.studies import run_heads_study

    job = tiny_job(tmp_path, **{"train.epochs": 2, "analysis.readout_epochs": 2, "analysis.bootstrap": 50,
                                "heads.null_draws": 200, "measure.points": ["blocks.0.attn.heads"]})
    job["heads_study"] = {"num_heads": [1, 4]}
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump(job))
    assert cli.main(["run", str(tmp_path / "heads.yaml")]) == 0
    out = capsys.readouterr()
    assert "2 member job(s), 2 at a time" in out.err + out.out
    spec = spec_from_dict(job)
    store = Store.from_spec(spec.storage)
    assert all(not j.startswith("_") for j in store.job_ids()) and len(store.job_ids()) == 2
    spans = []
    for jid in store.job_ids():
        t = store.job(jid).stage_result("train")
        end = datetime.fromisoformat(t["finished"]).timestamp()
        spans.append((end - t["seconds"], end))
    (s1, e1), (s2, e2) = spans
    assert s1 < e2 and s2 < e1, f"the members' training did not overlap: {spans}"
    table = run_heads_study(spec, progress=lambda m: None)  # the file's head counts; both members reused
    assert table["num_heads"].to_list() == [1, 4]
    one, four = table.rows(named=True)
    assert one["status"] == "undefined" and "at least two" in one["reason"]  # a single head cannot split labels
    assert four["job_id"] != one["job_id"]
    assert len(store.job_ids()) == 2
    with pytest.raises(Exception, match="num_heads=3"):
        run_heads_study(spec, [3])  # 3 does not divide the width 32


def test_worker_killed_mid_epoch_is_recovered_by_failure_config(tmp_path, ray_cluster):
    """A training worker process SIGKILLed halfway through epoch 1: Ray Train restarts the worker
    group from the last checkpoint (after epoch 0, compute.max_failures) and redoes epoch 1."""
    spec = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 3}))
    assert spec.compute.max_failures >= 1
    marker = tmp_path / "killed"
    recovered = fit(spec, str(tmp_path / "train"), worker_hooks=[KillMidEpoch(1, str(marker))])
    assert marker.read_text().startswith("killed at epoch 1 step")  # the worker really died mid-epoch
    assert [h["epoch"] for h in recovered.state["history"]] == [0, 1, 2]  # no epoch lost or repeated
    clean = fit(spec, str(tmp_path / "clean"))
    assert recovered.state["history"][-1]["train_loss"] == pytest.approx(clean.state["history"][-1]["train_loss"],
                                                                          rel=1e-6)


def test_driver_killed_mid_job_then_rerun_resumes_and_matches(tmp_path, ray_cluster):
    """SIGKILL the driver after training, re-run the same job: finished stages are reused and the
    final tables equal an undisturbed run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    job = tiny_job(tmp_path, **{"analysis.readout_epochs": 3, "analysis.bootstrap": 50, "heads.null_draws": 200})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    spec = spec_from_dict(job)
    jb = Store.from_spec(spec.storage).job(spec.job_id())
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "snp_service.cli", "run", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while jb.stage_result("train") is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert jb.stage_result("train") is not None and jb.manifest() is None  # killed mid-job: incomplete

    messages = []
    out = pipeline.run(spec, progress=messages.append)
    assert any(m.startswith("train: already finished") for m in messages)
    clean = spec_from_dict({**job, "storage": {"root": str(tmp_path / "clean")}})
    pipeline.run(clean, progress=lambda m: None)
    cj = Store.from_spec(clean.storage).job(clean.job_id())
    drop = ["seconds"]
    assert jb.read_table("snp/layers.parquet").drop(drop).equals(cj.read_table("snp/layers.parquet").drop(drop))
    assert out.stages["evaluate"]["accuracy"] == cj.stage_result("evaluate")["accuracy"]


def test_a_diverging_training_fails_its_stage_clearly_and_records_nothing(tmp_path, ray_cluster):
    """A learning rate that sends the loss to inf/nan: the train stage fails with one message naming
    the epoch, and the job gets no manifest (never `complete` with NaN tables)."""
    from snp_service.errors import SnpError

    spec = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 2, "train.optimizer": "sgd", "train.lr": 10.0,
                                                "train.momentum": 0.99, "train.weight_decay": 0.0,
                                                "train.label_smoothing": 0.0, "train.precision": "fp32"}))
    with pytest.raises(SnpError, match="training diverged"):
        pipeline.run(spec, progress=lambda m: None)
    job = Store.from_spec(spec.storage).job(spec.job_id())
    assert job.manifest() is None and job.stage_result("train") is None


def test_two_training_workers_report_the_whole_evaluation_and_get_their_own_job_id(tmp_path, ray_cluster):
    """2 CPU workers: the per-epoch evaluation covers the whole evaluation split (the evaluate stage,
    run on the same final weights in one process, gives the same accuracy), the training metrics are
    summed over both ranks, and the job is not the 1-worker job (batch_size is per worker)."""
    one = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 1, "analysis.readout_epochs": 2,
                                               "analysis.bootstrap": 50}))
    two = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 1, "analysis.readout_epochs": 2,
                                               "analysis.bootstrap": 50, "compute.num_workers": 2,
                                               "compute.cpus_per_worker": 1}))
    assert one.job_id() != two.job_id()
    out = pipeline.run(two, progress=lambda m: None)
    train, ev = out.stages["train"], out.stages["evaluate"]
    assert train["eval_accuracy"] == ev["accuracy"]
    metrics = Store.from_spec(two.storage).job(out.job_id).table("train")
    assert metrics["train_images_per_s"][0] > 0
