"""Interrupts (issue 20, item 9; issue 30, item 7): SIGINT or SIGTERM during training, during the
SNP stage, while Ray starts after a job's load stage, or during a heads study ends the command with
one line and exit 130 / 143, leaves no captured-feature folder, lease or half-written file behind,
and running the same command again resumes from the stages that finished."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import tiny_job


def _start(tmp_path, features):
    job = tiny_job(tmp_path, **{"train.epochs": 4, "analysis.readout_epochs": 30, "analysis.bootstrap": 50})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    env = {**os.environ, "SNP_FEATURES_DIR": str(features), "PYTHONUNBUFFERED": "1"}
    return path, subprocess.Popen([sys.executable, "-m", "snp_service.cli", "run", str(path)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)


def _wait_for(proc, text, timeout=600):  # a deadline only against a hang; a loaded machine needs minutes
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"never saw {text!r}: {''.join(seen)[-2000:]}")


def _until(proc, condition, limit: float = 300):
    """Wait for `condition()` while the run lives (polled: a folder has no event to wait on); its
    last value. The limit only keeps a hung run from hanging the suite."""
    deadline = time.monotonic() + limit
    while not (value := condition()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return value or condition()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, when", [(signal.SIGINT, 130, "measure: "), (signal.SIGTERM, 143, "epoch 1/4")])
def test_an_interrupted_run_says_so_cleans_up_and_resumes(tmp_path, sig, code, when):
    features = tmp_path / "features"
    features.mkdir()
    path, proc = _start(tmp_path, features)
    _wait_for(proc, when)
    if when == "measure: ":  # the workers have captured something: there is a folder to clean up
        assert _until(proc, lambda: list(features.glob("snp-features-*"))), "no feature folder ever appeared"
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("snp-service:")]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), err[-2000:]
    assert "Traceback" not in err.split(lines[0])[-1]
    assert not list(features.glob("snp-features-*"))  # no captured features left behind
    again = subprocess.run([sys.executable, "-m", "snp_service.cli", "run", str(path)], capture_output=True,
                           text=True, env={**os.environ, "SNP_FEATURES_DIR": str(features)}, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    if when == "measure: ":
        assert "train: already finished" in again.stdout  # resumed, not retrained


def _one_line_and_exit(proc, code, err):
    assert proc.returncode == code, (proc.returncode, err[-3000:])
    lines = [line for line in err.splitlines() if line.startswith("snp-service:")]
    assert len(lines) == 1 and ("interrupted" in lines[0] or "terminated" in lines[0]), err[-3000:]
    assert "Traceback" not in err.split(lines[0])[-1], err[-3000:]


def _ray_sessions(ray_tmp: str) -> list[Path]:
    return sorted(Path(ray_tmp).glob("ray/session_2*"))


@pytest.fixture
def ray_tmp():
    """RAY_TMPDIR for the command under test: its Ray sessions are counted there (a short path: Ray's
    socket paths must stay under 108 characters)."""
    d = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_load_job_interrupted_as_ray_starts_after_its_load_stage_says_so_and_resumes(tmp_path, ray_tmp, sig, code):
    """The load stage (model.weights) is followed at once by Ray's start for the evaluate stage, and
    ray.init puts its own SIGTERM handler (a bare `sys.exit(15)`) in place while it starts: before
    the fix a SIGTERM then ended the run with exit 15 and no message."""
    from snp_service.spec import spec_from_dict

    weights = tmp_path / "weights.pth"
    torch.save(spec_from_dict(tiny_job(tmp_path)).build_model(4).state_dict(), weights)
    features = tmp_path / "features"
    features.mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **{"model.weights": str(weights)})))
    env = {**os.environ, "SNP_FEATURES_DIR": str(features), "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp}
    command = [sys.executable, "-m", "snp_service.cli", "run", str(path)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for(proc, "load: ")
    assert _until(proc, lambda: _ray_sessions(ray_tmp)), "Ray never started after the load stage"
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)  # ray.init is under way: its session folder exists, its cluster is starting
    out, err = proc.communicate(timeout=180)
    _one_line_and_exit(proc, code, err)
    assert not list((tmp_path / "results" / "_leases").glob("*.json"))  # the lease was released
    assert not list(features.glob("snp-features-*"))
    assert not list((tmp_path / "results").rglob("*.tmp-*"))  # no half-written file
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "load: already finished" in again.stdout  # resumed


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_heads_study_stops_every_member_cleans_up_and_resumes(tmp_path, ray_tmp, sig, code):
    """`heads-study` runs its members in threads of one driver. Before the fix the interpreter's exit
    froze the members mid-run: a member's lease stayed in `_leases/`, a member's failure was printed
    after the interrupt line, and a member's next Ray call, as Ray shut down, started a second local
    Ray cluster."""
    features = tmp_path / "features"
    features.mkdir()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **{"train.epochs": 4, "analysis.readout_epochs": 30,
                                                          "analysis.bootstrap": 50})))
    env = {**os.environ, "SNP_FEATURES_DIR": str(features), "PYTHONUNBUFFERED": "1", "RAY_TMPDIR": ray_tmp}
    command = [sys.executable, "-m", "snp_service.cli", "heads-study", str(path), "--heads", "1", "2"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    seen = _wait_for(proc, "] measure: ")  # a member's point workers have started
    tag = seen.splitlines()[-1].split("] measure: ")[0].rsplit("[", 1)[-1]  # h1 or h2
    assert _until(proc, lambda: list(features.glob("snp-features-*"))), "no feature folder ever appeared"
    assert proc.poll() is None, "the study ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    _one_line_and_exit(proc, code, err)
    assert "failed:" not in out, out[-2000:]  # a member told to stop is not reported as a failure
    assert not list((tmp_path / "results" / "_leases").glob("*.json"))  # every member released its lease
    assert not list(features.glob("snp-features-*"))  # no captured features left behind
    assert not list((tmp_path / "results").rglob("*.tmp-*"))
    assert len(_ray_sessions(ray_tmp)) == 1, _ray_sessions(ray_tmp)  # no Ray started while the driver exited
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"[{tag}] train: already finished" in again.stdout  # resumed, not retrained


def test_an_interrupted_store_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Every store write goes to a temporary name first (the load stage's is the network's weights,
    gigabytes for a large model); an interrupt before the rename used to leave it behind."""
    import snp_service.store as store_module
    from snp_service.spec import StorageSpec

    job = store_module.Store.from_spec(StorageSpec(root=str(tmp_path))).job("tiny-0123456789ab")

    def interrupted(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        job.write_bytes("model/weights.pt", b"x" * 4096)
    assert not list(tmp_path.rglob("*.tmp-*")) and not (tmp_path / job.job_id / "model" / "weights.pt").exists()


def test_an_interrupted_synthetic_dataset_leaves_no_temporary_folder(tmp_path, monkeypatch):
    """A job's preflight (before its load or train stage) writes a synthetic dataset under a
    temporary name; an interrupt halfway used to leave that folder in the dataset root."""
    from snp_service import synthetic

    real, calls = synthetic._images, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:  # the training split is written, the test split is not
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "_images", interrupted)
    for write in (synthetic.write_cifar100, synthetic.write_flowers102):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            write(tmp_path, 2, 2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "_images", real)
    assert synthetic.verify(synthetic.write_cifar100(tmp_path, 2, 2, 1))  # and it is written whole afterwards


_RAY_FROM_A_THREAD = """
import sys, threading
import ray
from snp_service.actors import ensure_ray
from snp_service.spec import spec_from_dict
from tests.conftest import tiny_job
from pathlib import Path

spec = spec_from_dict(tiny_job(Path(sys.argv[1])))
member = threading.Thread(target=ensure_ray, args=(spec,))  # as a heads study's first member starts Ray
member.start()
member.join()  # that member has finished; the others go on using Ray
print("answer", ray.get(ray.remote(lambda: 42).remote(), timeout=120), flush=True)
"""


@pytest.mark.slow
def test_ray_started_by_a_study_member_outlives_that_member(tmp_path, ray_tmp):
    """Ray's processes are killed when the thread that started them ends (PR_SET_PDEATHSIG is per
    thread): before the fix, a heads study whose first member started Ray (compute.max_concurrent_jobs
    given, so the driver had not) lost its cluster when that member finished, under the others."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", _RAY_FROM_A_THREAD, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=400)
    assert done.returncode == 0 and "answer 42" in done.stdout, (done.returncode, done.stderr[-2000:])
