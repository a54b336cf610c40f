"""Interrupts (issue 20, item 9): SIGINT or SIGTERM during training or during the SNP stage ends
`snp-service run` with one line and exit 130 / 143, leaves no captured-feature folder behind, and
running the same job again resumes from the stages that finished."""

import os
import signal
import subprocess
import sys
import time

import pytest
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


def _wait_for(proc, text, timeout=300):
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
