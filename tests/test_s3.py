"""The results store on a real S3 server (SeaweedFS, credentials enforced, loopback only)."""

import threading
import time
import uuid

import numpy as np
import polars as pl
import pytest

from snp_service import leases
from snp_service import store as store_mod
from snp_service.errors import StoreError
from snp_service.spec import StorageSpec
from snp_service.store import Store
from tests.conftest import S3_SECRET


def s3_store(server, prefix=None) -> Store:
    return Store.from_spec(StorageSpec(root=f"s3://snp-test/{prefix or uuid.uuid4().hex[:8]}", endpoint=server.endpoint))


def test_round_trip_manifest_and_listing(s3_server):
    st = s3_store(s3_server)
    st.check()
    job = st.job("job-a")
    job.write_json("spec.json", {"a": 1})
    job.write_table("t/x.parquet", pl.DataFrame({"x": [1, 2]}))
    job.write_array("m/a.npy", np.arange(6).reshape(2, 3))
    job.write_torch("model/w.pt", {"w": __import__("torch").ones(2)})
    job.finish_stage("data", {"n": 3}, 0.1)
    assert job.read_json("spec.json") == {"a": 1}
    assert job.read_table("t/x.parquet")["x"].to_list() == [1, 2]
    assert job.read_array("m/a.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert job.read_torch("model/w.pt")["w"].sum() == 2
    m = job.write_manifest({"status": "complete"})
    assert {a["path"] for a in m["artefacts"]} == {"spec.json", "t/x.parquet", "m/a.npy", "model/w.pt",
                                                   "stages/data.json"}
    assert st.job_ids() == ["job-a"]
    other = st.job("job-b")
    assert other.copy_from(job, ("model/",)) == 1 and other.read_bytes("model/w.pt") == job.read_bytes("model/w.pt")
    with pytest.raises(StoreError, match="not found"):
        job.read_bytes("nope.json")


def test_a_finished_stage_is_copied_whole_within_the_bucket(s3_server):
    from tests.test_store import copies_a_finished_stage

    copies_a_finished_stage(s3_store(s3_server))


def test_wrong_credentials_fail_fast_naming_endpoint_and_bucket(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong-secret")
    st = s3_store(s3_server)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as err:
        st.check()
    assert time.monotonic() - t0 < 10  # not retried for a minute
    msg = str(err.value)
    assert s3_server.endpoint in msg and "snp-test" in msg
    assert "definitely-wrong-secret" not in msg and S3_SECRET not in msg


def test_missing_bucket_is_named(s3_server):
    st = Store.from_spec(StorageSpec(root="s3://no-such-bucket/x", endpoint=s3_server.endpoint))
    with pytest.raises(StoreError, match="no-such-bucket"):
        st.check()


def test_outage_during_upload_is_retried(s3_server):
    st = s3_store(s3_server)
    job = st.job("outage")
    job.write_json("before.json", {"ok": True})
    s3_server.stop()

    def restart():
        time.sleep(10)  # the server is down for 10 s; each request is retried for at least 60
        s3_server.start()

    t = threading.Thread(target=restart)
    t.start()
    payload = bytes(range(256)) * 4096  # 1 MiB
    job.write_bytes("during.bin", payload)  # blocks through the outage, then lands
    t.join()
    assert job.read_bytes("during.bin") == payload
    assert job.read_json("before.json") == {"ok": True}


def test_endpoint_down_for_good_is_a_clear_error(s3_server, monkeypatch):
    from snp_service.localdev import free_ports

    monkeypatch.setattr(store_mod, "RETRY_SECONDS", 2.0)
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    st = Store.from_spec(StorageSpec(root="s3://snp-test/x", endpoint=dead))
    with pytest.raises(StoreError) as err:
        st.job("j").write_json("a.json", {})
    assert dead in str(err.value) and "writing a.json" in str(err.value)


def _image_tree(root, classes=("cat", "dog"), per_split=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_split):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_dataset_from_the_bucket_is_fetched_once_and_checked(s3_server, tmp_path, cache_env):
    import tarfile

    from snp_service.data import build_datasets
    from snp_service.errors import DatasetError
    from snp_service.spec import DatasetSpec

    _image_tree(tmp_path / "tree")
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "tree", arcname="tiny")
    c = s3_server.client()
    key = f"datasets/{uuid.uuid4().hex[:6]}"
    c.upload_file(str(archive), "snp-test", f"{key}/tiny.tar.gz")
    for f in (tmp_path / "tree").rglob("*.png"):
        c.upload_file(str(f), "snp-test", f"{key}/tree/{f.relative_to(tmp_path / 'tree')}")

    ds = DatasetSpec(name="imagefolder", root=f"s3://snp-test/{key}/tiny.tar.gz", num_workers=0)
    data = build_datasets(ds, endpoint=s3_server.endpoint)
    assert (len(data.train), len(data.eval), data.classes) == (6, 6, ["cat", "dog"])
    cached = cache_env / "s3" / "snp-test" / key / "tiny.tar.gz"
    stamp = cached.stat().st_mtime_ns
    build_datasets(ds, endpoint=s3_server.endpoint)
    assert cached.stat().st_mtime_ns == stamp  # the second node-local use does not download again

    tree = DatasetSpec(name="imagefolder", root=f"s3://snp-test/{key}/tree/", num_workers=0)
    assert len(build_datasets(tree, endpoint=s3_server.endpoint).eval) == 6  # a prefix works too

    missing = DatasetSpec(name="imagefolder", root=f"s3://snp-test/{key}/nope.tar.gz")
    with pytest.raises(DatasetError, match="not found at endpoint"):
        build_datasets(missing, endpoint=s3_server.endpoint)


def _s3_job(tmp_path, server_endpoint, **over):
    from tests.conftest import tiny_job

    job = tiny_job(tmp_path)
    job["storage"] = {"root": f"s3://snp-test/{uuid.uuid4().hex[:8]}", "endpoint": server_endpoint}
    return job


def test_job_with_wrong_credentials_fails_before_any_stage(s3_server, tmp_path, monkeypatch, capsys):
    from snp_service.cli import main

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    job = tmp_path / "job.yaml"
    job.write_text(__import__("yaml").safe_dump(_s3_job(tmp_path, s3_server.endpoint)))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert s3_server.endpoint in err and "snp-test" in err and "not-the-secret" not in err
    assert not (tmp_path / "data").exists()  # nothing was computed: not even the synthetic data


def test_job_with_endpoint_down_for_good_writes_nothing(tmp_path, monkeypatch, capsys):
    from snp_service.cli import main
    from snp_service.localdev import free_ports

    monkeypatch.setattr(store_mod, "RETRY_SECONDS", 1.0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    job = tmp_path / "job.yaml"
    job.write_text(__import__("yaml").safe_dump(_s3_job(tmp_path, dead)))
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert dead in err and "Traceback" not in err
    assert not (tmp_path / "data").exists()


def test_a_stage_failing_while_the_store_is_down_is_reported_as_the_store(monkeypatch, tmp_path):
    """Any stage failure is checked against the store: unreachable -> one StoreError naming the
    endpoint and the stage; reachable (or local) -> the stage's own error, unchanged."""
    from snp_service.localdev import free_ports
    from snp_service.pipeline import run_stage

    def broken(*_args):
        raise RuntimeError("Training failed due to controller error:\nupload of checkpoint failed")

    monkeypatch.setattr(store_mod, "RETRY_SECONDS", 1.0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    job = Store.from_spec(StorageSpec(root="s3://snp-test/x", endpoint=dead)).job("j")
    with pytest.raises(StoreError) as err:
        run_stage(broken, None, job, print, "train")
    msg = str(err.value)
    assert "stage train failed because the results store became unreachable" in msg and dead in msg
    assert "upload of checkpoint failed" in msg  # the stage's own last line is kept

    local = Store.from_spec(StorageSpec(root=str(tmp_path / "results"))).job("j")
    with pytest.raises(RuntimeError, match="controller error"):
        run_stage(broken, None, local, print, "train")


def test_the_lease_of_a_job_holds_on_s3_too(s3_server, monkeypatch):
    """One run of a job at a time on a bucket (issue 30): the lease object names its holder."""
    from snp_service.errors import JobBusyError

    monkeypatch.setattr(leases, "LEASE_SETTLE_SECONDS", 0.5)
    st = s3_store(s3_server)
    with st.job("job-a").lease() as mine:
        with pytest.raises(JobBusyError, match=f"job job-a is being run by {mine['owner']}"):
            with st.job("job-a").lease():
                pass
        assert st.job_ids() == []  # the lease is no job
    with st.job("job-a").lease():  # released
        assert st.job("job-a").lease_holder()["pid"] == mine["pid"]
    assert st.job("job-a").lease_holder() is None
