"""The service as users run it: `ray start --head`, a real S3 server, `snp-service submit`."""

import hashlib
import subprocess
import sys
import uuid

import pytest
import yaml

from snp_service import submit
from snp_service.localdev import RAY_CLI
from snp_service.spec import load_spec
from snp_service.store import Store
from tests.conftest import S3_SECRET, tiny_job

pytestmark = pytest.mark.slow


def test_submit_tiny_job_end_to_end_into_the_bucket(tmp_path, s3_server, ray_head, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    job = tiny_job(work, **{"train.epochs": 2, "analysis.readout_epochs": 3, "analysis.bootstrap": 50})
    job["dataset"]["root"] = "data"  # relative: generated inside the uploaded working directory
    job["storage"] = {"root": f"s3://snp-test/{uuid.uuid4().hex[:8]}", "endpoint": s3_server.endpoint}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    spec = load_spec(work / "job.yaml")

    sid = submit.submit(spec, work / "job.yaml", ray_head, working_dir=work)
    assert sid == spec.job_id()
    final = submit.wait(sid, ray_head, timeout=900)
    log = submit.logs(sid, ray_head)
    assert final == "SUCCEEDED", log[-3000:]
    assert "done:" in log and S3_SECRET not in log

    st = Store.from_spec(spec.storage)
    jb = st.job(sid)
    manifest = jb.manifest()
    assert manifest["status"] == "complete" and S3_SECRET not in jb.read_bytes("manifest.json").decode()
    listed = {a["path"]: a for a in manifest["artefacts"]}
    for rel in ("spec.json", "model/weights.pt", "snp/layers.parquet", "heads/summary.parquet",
                "report/report.html"):
        assert rel in listed, rel
    assert any(p.startswith("train/") and p.endswith("state.pt") for p in listed)  # Ray Train checkpoints in S3
    for rel, a in listed.items():
        data = jb.read_bytes(rel)
        assert len(data) == a["size"] and hashlib.sha256(data).hexdigest() == a["sha256"], rel
        assert S3_SECRET.encode() not in data, rel  # no artefact (spec, report, checkpoint...) holds the secret

    from ray.job_submission import JobSubmissionClient

    info = JobSubmissionClient(ray_head).get_job_info(sid)  # what the dashboard shows for the job
    assert S3_SECRET not in repr(info) and S3_SECRET not in str(info.runtime_env)

    cli = subprocess.run([sys.executable, "-m", "snp_service.cli", "status", sid, "--address", ray_head],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and "SUCCEEDED" in cli.stdout

    # submitted again: a new attempt (every stage reused), the first attempt's logs kept; --wait streams
    again = subprocess.run([sys.executable, "-m", "snp_service.cli", "submit", str(work / "job.yaml"), "--address",
                            ray_head, "--wait"], capture_output=True, text=True, cwd=work, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"submitted {sid}-2" in again.stdout and "train: already finished" in again.stdout
    assert "SUCCEEDED" in again.stdout.splitlines()[-1]
    first = subprocess.run([sys.executable, "-m", "snp_service.cli", "logs", sid, "--attempt", "1", "--address",
                            ray_head], capture_output=True, text=True)
    assert first.returncode == 0 and "done:" in first.stdout and "already finished" not in first.stdout
    local = subprocess.run([sys.executable, "-m", "snp_service.cli", "submit", str(work / "job.yaml"), "--address",
                            ray_head, "--store", str(work / "results")], capture_output=True, text=True, cwd=work)
    assert local.returncode == 2 and "--allow-local-store" in local.stderr

    # the plain form users type works too, and finds every stage finished (same content-derived job id)
    import os

    plain = subprocess.run(
        [RAY_CLI, "job", "submit", "--address", ray_head, "--working-dir", str(work), "--submission-id", f"{sid}-plain",
         "--runtime-env-json", '{"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}}', "--",
         "python", "-m", "snp_service.cli", "run", "job.yaml"],
        capture_output=True, text=True, env={**os.environ, "RAY_AUTH_MODE": "token"}, timeout=600)
    assert plain.returncode == 0, plain.stdout[-2000:] + plain.stderr[-2000:]
    assert "train: already finished" in plain.stdout and S3_SECRET not in plain.stdout + plain.stderr


def test_submit_refuses_a_bad_job_before_uploading(tmp_path, ray_head):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {name: nope}\n")
    r = subprocess.run([sys.executable, "-m", "snp_service.cli", "submit", str(bad), "--address", ray_head],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "model.name" in r.stderr and "Traceback" not in r.stderr


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    from snp_service.localdev import free_ports

    r = subprocess.run([sys.executable, "-m", "snp_service.cli", "status", "x",
                        "--address", f"http://127.0.0.1:{free_ports(1)[0]}"], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot reach the Ray job API" in r.stderr and "Traceback" not in r.stderr


def test_tune_sweep_lands_its_table_in_the_bucket(tmp_path, s3_server, ray_cluster):
    from snp_service.sweep import run_sweep
    from snp_service.spec import spec_from_dict

    job = tiny_job(tmp_path, **{"train.epochs": 2, "analysis.readout_epochs": 2, "analysis.bootstrap": 50,
                                "heads.null_draws": 200, "measure.points": ["blocks.0.attn.heads", "blocks.0.out"]})
    job["storage"] = {"root": f"s3://snp-test/{uuid.uuid4().hex[:8]}", "endpoint": s3_server.endpoint}
    job["sweep"] = {"threshold": [0.3, 0.5], "num_heads": [2]}
    spec = spec_from_dict(job)
    table = run_sweep(spec, progress=lambda m: None)
    assert table["threshold"].to_list() == [0.3, 0.5] and (table["status"] == "complete").all()
    st = Store.from_spec(spec.storage)
    assert len(st.job_ids()) == 2
    second = st.job(table["job_id"][1])
    assert second.stage_result("train")["reused_from"] == table["job_id"][0]  # the threshold trial did not retrain
    studies = [f.path for f in st.job("_studies").files()]
    assert any(p.endswith("sweep.parquet") for p in studies) and any(p.endswith("sweep.png") for p in studies)
    # no object the sweep wrote (Tune's tuner.pkl and trial state, checkpoints, tables) holds the secret
    objects = [f for jid in st.job_ids() + ["_studies"] for f in st.job(jid).files()]
    assert any(f.path.endswith(".pkl") for f in objects)  # Tune pickles its state into the bucket
    for f in objects:
        with st.fs.open_input_stream(f.path) as stream:
            assert S3_SECRET.encode() not in stream.read(), f.path


def test_s3_down_for_good_mid_job_fails_clearly_and_writes_no_manifest(tmp_path, s3_server, ray_head):
    """The object store goes away while a submitted job trains and stays away: the job fails (Ray
    status FAILED, which `snp-service status` reports) with a message naming the endpoint, and the
    job never gets a manifest, so nothing marks it complete."""
    import os
    import time

    work = tmp_path / "work"
    work.mkdir()
    job = tiny_job(work, **{"train.epochs": 8, "analysis.readout_epochs": 2, "analysis.bootstrap": 50})
    job["dataset"]["root"] = "data"
    job["storage"] = {"root": f"s3://snp-test/{uuid.uuid4().hex[:8]}", "endpoint": s3_server.endpoint}
    (work / "job.yaml").write_text(yaml.safe_dump(job))
    spec = load_spec(work / "job.yaml")
    sid = f"{spec.job_id()}-outage"
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    runtime_env = '{"env_vars": {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SNP_STORE_RETRY_SECONDS": "5"}}'
    r = subprocess.run([RAY_CLI, "job", "submit", "--address", ray_head, "--working-dir", str(work), "--no-wait",
                        "--submission-id", sid, "--runtime-env-json", runtime_env, "--",
                        "python", "-m", "snp_service.cli", "run", "job.yaml"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    try:
        deadline = time.time() + 300
        while "epoch 1/8" not in submit.logs(sid, ray_head):  # training has started and checkpointed once
            assert submit.status(sid, ray_head)["status"] not in submit.TERMINAL, submit.logs(sid, ray_head)[-3000:]
            assert time.time() < deadline, "training did not start"
            time.sleep(0.5)
        s3_server.stop()
        final = submit.wait(sid, ray_head, timeout=600)
        log = submit.logs(sid, ray_head)
        assert final == "FAILED", log[-3000:]
        assert s3_server.endpoint in log and S3_SECRET not in log, log[-3000:]
        # ours is one line; Ray's controller logs its own traceback, forwarded asynchronously (it can
        # land before or after ours), so look for our line rather than at the last one
        ours = [ln for ln in log.splitlines() if ln.startswith("snp-service: error: job.yaml: ")]
        assert len(ours) == 1, log[-3000:]
        assert ours[0].startswith("snp-service: error: job.yaml: stage train failed because the results store "
                                  "became unreachable") and s3_server.endpoint in ours[0], log[-3000:]
        cli = subprocess.run([sys.executable, "-m", "snp_service.cli", "status", sid, "--address", ray_head],
                             capture_output=True, text=True, env=env)
        assert "FAILED" in cli.stdout, cli.stdout + cli.stderr
    finally:
        s3_server.start()  # the session's other tests use it
    jb = Store.from_spec(spec.storage).job(spec.job_id())
    assert not jb.exists("manifest.json")
