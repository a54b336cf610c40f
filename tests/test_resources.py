"""Resources and addresses (issue 30, classes 5 and 6): a cluster address that does not answer is
refused at once, before anything is written; `synth` takes the counts a job file's synthetic section
takes; `heads-study --heads` refuses a head count given twice, as the file form does."""

import time

import pytest
import yaml

from snp_service.cli import main
from tests.conftest import REPO, tiny_job


def _job_file(tmp_path, **overrides) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **overrides)))
    return str(path)


@pytest.mark.parametrize("address", ["closed loopback port", "192.0.2.1:6379"])  # TEST-NET-1: never routed
def test_a_cluster_address_that_does_not_answer_is_refused_before_anything_is_written(tmp_path, monkeypatch,
                                                                                     capsys, address):
    from snp_service.localdev import free_ports

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if address == "closed loopback port":
        address = f"127.0.0.1:{free_ports(1)[0]}"
    t0 = time.monotonic()
    assert main(["run", _job_file(tmp_path, **{"compute.address": address})]) == 2
    assert time.monotonic() - t0 < 30  # ray.init retried for minutes, after the data stage
    err = capsys.readouterr().err
    assert f"Ray address '{address}'" in err and "nothing answers there" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("flags, message", [
    (["--classes", "0"], "--classes 0: Input should be greater than or equal to 2"),
    (["--classes", "1"], "--classes 1: Input should be greater than or equal to 2"),  # hung before
    (["--train-per-class", "-5"], "--train-per-class -5: Input should be greater than or equal to 1"),
    (["--test-per-class", "0"], "--test-per-class 0: Input should be greater than or equal to 1"),
    (["--seed", "-1"], "--seed -1: Input should be greater than or equal to 0"),
])
def test_synth_takes_the_counts_a_job_file_takes(tmp_path, flags, message):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "snp_service.cli", "synth", "cifar100", str(tmp_path / "data"),
                           *flags], capture_output=True, text=True, timeout=120, cwd=REPO)  # a regression may hang
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()


def test_heads_study_refuses_a_head_count_given_twice_before_anything_runs(tmp_path, capsys):
    assert main(["heads-study", _job_file(tmp_path), "--heads", "2", "2"]) == 2
    err = capsys.readouterr().err
    assert "head counts [2, 2]" in err and "unique" in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_a_run_of_a_job_another_run_holds_is_refused_before_anything_is_written(tmp_path, capsys):
    from snp_service.spec import load_spec
    from tests.test_store import lease_held_elsewhere

    job = _job_file(tmp_path)
    holder = lease_held_elsewhere(tmp_path / "results", 600, load_spec(job).job_id())
    try:
        assert main(["run", job]) == 2
        err = capsys.readouterr().err
        assert "is being run by" in err and f"pid {holder.pid}" in err and "Traceback" not in err
        assert [p.name for p in (tmp_path / "results").iterdir()] == ["_leases"]
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs with about 300 KB free (a results disk nearly full); skipped where mounting is
    not allowed."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        (disk / "filler").write_bytes(b"\0" * 700_000)
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_training_that_the_results_disk_cannot_hold_is_refused_before_it_starts(tmp_path, small_disk, capsys):
    job = _job_file(tmp_path, storage={"root": str(small_disk / "results")})
    assert main(["run", job]) == 2
    err = capsys.readouterr().err
    assert "MB free; training needs about" in err and "Traceback" not in err
    assert not list(small_disk.glob("results/*/train"))  # no worker started, no checkpoint folder


@pytest.mark.slow
def test_a_disk_that_fills_up_during_training_is_one_message_and_leaves_no_partial_checkpoint(
        tmp_path, small_disk, ray_cluster, monkeypatch):
    from snp_service import pipeline
    from snp_service.errors import StoreError
    from snp_service.spec import spec_from_dict
    from snp_service.store import Store

    monkeypatch.setattr(Store, "free_bytes", lambda self: None)  # the space check passes: the disk fills later
    spec = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 2, "compute.max_failures": 1,
                                                "storage": {"root": str(small_disk / "results")}}))
    with pytest.raises(StoreError, match="filled up while training wrote a checkpoint") as e:
        pipeline.run(spec, progress=lambda m: None)
    assert "partial checkpoint folder(s) removed" in str(e.value)
    assert not list(small_disk.glob("results/*/train/*/checkpoint_*"))  # one per restart before
