"""Job ids do not depend on where the process stands (issue 29, item 1): relative paths resolve once,
against the directory the job file is loaded in (recorded as `workdir`), and a dataset root inside
it counts by its relative path. A Tune trial runs in a directory of its own and a cluster loads the
job in its copy of the working directory; both must compute the ids the sweep table expects."""

import json
import os
import subprocess
import sys

import pytest

from snp_service import sweep
from snp_service.spec import JobSpec, load_spec, spec_from_dict
from tests.conftest import REPO, tiny_job

QUICKSTART_ID = "quickstart-c108a585f438"  # tests/test_job_ids.py pins it (loaded from the repository root)

ID_IN_A_SUBPROCESS = ("import json, sys; from snp_service.spec import JobSpec; "
                      "print(JobSpec.model_validate(json.loads(sys.stdin.read())).job_id())")


def _id_elsewhere(spec_json: dict, cwd) -> str:
    """The job id as another process computes it from the dumped spec, standing in `cwd` (as a Tune
    trial's trainable does in its trial directory)."""
    out = subprocess.run([sys.executable, "-c", ID_IN_A_SUBPROCESS], input=json.dumps(spec_json), cwd=cwd,
                         capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return out.stdout.strip()


def test_one_jobs_id_is_the_same_from_two_directories(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    spec = load_spec(REPO / "jobs" / "quickstart.yaml")
    assert spec.job_id() == QUICKSTART_ID
    assert spec.workdir == str(REPO.resolve())
    assert spec.dataset.root == str(REPO.resolve() / ".cache" / "data" / "quickstart")  # resolved once, here
    trial = tmp_path / "trial-dir"
    trial.mkdir()
    assert _id_elsewhere(spec.model_dump(mode="json"), trial) == QUICKSTART_ID
    monkeypatch.chdir(trial)  # in this process too, and for every derived job (a sweep's trials)
    assert JobSpec.model_validate(spec.model_dump(mode="json")).job_id() == QUICKSTART_ID
    assert sweep.trial_spec(spec, {"num_heads": 4, "threshold": 0.5}).job_id() == "quickstart-n4-t0.5-e3835dfa06fd"
    assert sweep.trial_id(sweep.trial_spec(spec, {"lr": 0.01}).model_dump(mode="json")) == "quickstart-l0.01-cbb93b89117d"


def test_a_copy_of_the_working_directory_gives_the_same_id(monkeypatch, tmp_path):
    """As on a cluster: the job file loaded in another copy of the working directory (Ray's uploaded
    package) has the same id, though its absolute dataset root differs."""
    ids = []
    for copy in ("here", "_ray_pkg_0123abcd"):
        work = tmp_path / copy
        (work / "jobs").mkdir(parents=True)
        (work / "jobs" / "quickstart.yaml").write_bytes((REPO / "jobs" / "quickstart.yaml").read_bytes())
        monkeypatch.chdir(work)
        spec = load_spec("jobs/quickstart.yaml")
        assert spec.dataset.root.startswith(str(work.resolve()))
        ids.append(spec.job_id())
    assert ids == [QUICKSTART_ID, QUICKSTART_ID]


def test_relative_paths_resolve_against_the_workdir_given(tmp_path, monkeypatch):
    """workdir written in a job (or a stored spec.json) is the base of its relative paths, the store's
    included (a Tune trial writing a relative `results` must not write into its trial directory)."""
    monkeypatch.chdir(tmp_path)
    d = tiny_job(tmp_path)
    d["dataset"]["root"] = "data"
    d["storage"]["root"] = "results"
    here = spec_from_dict(d)
    assert here.storage.root == str(tmp_path.resolve() / "results")
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    there = spec_from_dict({**d, "workdir": str(elsewhere)})
    assert there.dataset.root == str(elsewhere.resolve() / "data")
    assert there.storage.root == str(elsewhere.resolve() / "results")
    assert there.job_id() == here.job_id()  # the root counts by "data", relative to each workdir
    with pytest.raises(Exception, match="absolute"):
        spec_from_dict({**d, "workdir": "relative/dir"})


def test_a_root_outside_the_workdir_counts_by_its_absolute_path(tmp_path):
    inside = spec_from_dict({**tiny_job(tmp_path), "workdir": str(tmp_path)})
    outside = spec_from_dict({**tiny_job(tmp_path), "workdir": str(tmp_path / "elsewhere")})
    assert inside.job_id() != outside.job_id()  # data/ vs /tmp/.../data
    assert outside.job_id() == spec_from_dict({**tiny_job(tmp_path), "workdir": "/nonexistent"}).job_id()
