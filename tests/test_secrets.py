"""Secrets never travel through paths or URLs (issue 30, class 4): a job file is data, not a shell
script, so `~` and `$VARS` in its paths are refused, never expanded (an expanded secret would land in
spec.json, spec.yaml, the report and error messages); an S3 endpoint holding user:secret@ is refused
without being repeated, from the job file, `--set` or AWS_ENDPOINT_URL. Against a live S3 server
(issue 30, item 7): refusals print no secret, and a job run into the bucket writes none anywhere."""

import posixpath

import pytest
import yaml

from snp_service.cli import main
from snp_service.errors import StoreError
from snp_service.spec import StorageSpec
from snp_service.store import Store
from tests.conftest import tiny_job

SECRET = "s3cr3t-never-printed-4d1e"


def _job_file(tmp_path, **overrides) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **overrides)))
    return str(path)


@pytest.mark.parametrize("field, value", [
    ("dataset.root", "/tmp/data/${AWS_SECRET_ACCESS_KEY}"),  # synthetic: old code generated it and wrote the secret
    ("dataset.root", "$AWS_SECRET_ACCESS_KEY/data"),
    ("storage.root", "/tmp/results-${AWS_SECRET_ACCESS_KEY}"),
    ("model.weights", "/tmp/${AWS_SECRET_ACCESS_KEY}.pth"),
    ("dataset.root", "~/data"),
])
def test_paths_are_not_expanded_so_a_job_file_cannot_write_a_secret(tmp_path, monkeypatch, capsys, field, value):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("HOME", f"/home/{SECRET}")
    section, _, name = field.partition(".")
    job = _job_file(tmp_path)
    assert main(["validate", job, "--set", f"{field}={value}"]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert f"{section}.{name}" in err and "not expanded in job files" in err
    assert not (tmp_path / "results").exists()


def test_a_path_is_taken_as_written_otherwise(tmp_path, monkeypatch):
    from snp_service.spec import resolve_path

    monkeypatch.chdir(tmp_path)
    assert resolve_path("data/a-b_c.1") == tmp_path / "data" / "a-b_c.1"
    assert resolve_path("/srv/price$/x") == __import__("pathlib").Path("/srv/price$/x")  # a $ not naming a variable


@pytest.mark.parametrize("endpoint", ["http://AKIAKEY:" + SECRET + "@127.0.0.1:9000",
                                      "https://" + SECRET + "@s3.example.com",
                                      "AKIAKEY:" + SECRET + "@127.0.0.1:9000"])
def test_an_endpoint_holding_credentials_is_refused_without_repeating_them(tmp_path, capsys, endpoint):
    job = _job_file(tmp_path, storage={"root": "s3://bucket/prefix", "endpoint": endpoint})
    assert main(["validate", job]) == 2
    out, err = capsys.readouterr()
    assert SECRET not in out + err and "storage.endpoint" in err and "***@" in err
    assert "holds credentials" in err or "has no scheme" in err


def test_the_environments_endpoint_is_checked_likewise(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://AKIAKEY:{SECRET}@127.0.0.1:9")
    with pytest.raises(StoreError) as e:
        Store.from_spec(StorageSpec(root="s3://bucket/prefix"))
    assert SECRET not in str(e.value) and "holds credentials" in str(e.value)


# --- against a live S3 server (issue 30, item 7): SeaweedFS enforcing the credentials -----------------

WRONG_SECRET = "wrong-secret-never-printed-91be"
WRONG_KEY = "AKIAWRONGKEYNEVERSHOWN"
URL_SECRET = "url-secret-never-printed-5d2a"


def _s3_job(tmp_path, root: str, endpoint: str | None) -> str:
    storage = {"root": root, **({"endpoint": endpoint} if endpoint else {})}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, storage=storage)))
    return str(path)


def _with_userinfo(endpoint: str) -> str:
    return endpoint.replace("://", f"://AKIAKEY:{URL_SECRET}@", 1)


@pytest.mark.parametrize("case", ["wrong secret key", "wrong access key", "missing bucket",
                                  "credentials in the job file's endpoint", "credentials in AWS_ENDPOINT_URL",
                                  "credentials in SNP_S3_ENDPOINT"])
def test_a_live_s3_store_that_refuses_says_so_without_any_secret(s3_server, tmp_path, monkeypatch, capsys, case):
    """`run`, `results` and `verify` against the live server: exit 2, one message naming what to fix
    (endpoint, bucket, or that an endpoint holds credentials), no traceback, nothing computed, and none
    of the secrets (the real one, a wrong one, one inside a URL) in anything printed."""
    from tests.conftest import S3_SECRET

    prefix = f"s3://snp-test/secrets-{__import__('uuid').uuid4().hex[:8]}"
    root, endpoint, names = prefix, s3_server.endpoint, s3_server.endpoint
    if case == "wrong secret key":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", WRONG_SECRET)
    elif case == "wrong access key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", WRONG_KEY)
    elif case == "missing bucket":
        root, names = "s3://no-such-bucket-3f1a/x", "no-such-bucket-3f1a"
    elif case == "credentials in the job file's endpoint":
        endpoint, names = _with_userinfo(s3_server.endpoint), "***@"
    else:
        variable = "AWS_ENDPOINT_URL" if "AWS_" in case else "SNP_S3_ENDPOINT"
        monkeypatch.setenv(variable, _with_userinfo(s3_server.endpoint))
        endpoint, names = None, "***@"
    job = _s3_job(tmp_path, root, endpoint)
    if case != "credentials in SNP_S3_ENDPOINT":  # that variable is read by the store commands only
        assert main(["run", job]) == 2
        if endpoint:  # the store commands take the endpoint from SNP_S3_ENDPOINT (else AWS_ENDPOINT_URL)
            monkeypatch.setenv("SNP_S3_ENDPOINT", endpoint)
    assert main(["results", "--store", root]) == 2
    assert main(["verify", "--store", root]) == 2
    out, err = capsys.readouterr()
    printed = out + err
    for secret in (S3_SECRET, WRONG_SECRET, URL_SECRET):
        assert secret not in printed, (case, printed[-2000:])
    assert WRONG_KEY not in printed  # an access key id is no secret, but nothing needs to repeat it either
    assert "Traceback" not in printed and names in err, (case, err[-2000:])
    assert not (tmp_path / "data").exists()  # refused before anything was computed


@pytest.mark.slow
def test_a_job_run_into_a_live_bucket_writes_no_secret_anywhere(s3_server, tmp_path):
    """A `run` on a local Ray driver into the bucket, credentials from the environment (as the
    s3_server fixture sets them, like a user's shell): the secret is in neither stdout nor stderr,
    in no object under the store's prefix (spec.json, spec.yaml, report.html, the manifest, every
    artefact and stage marker), and in no file of the Ray session (its logs)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import uuid
    from pathlib import Path

    import pyarrow.fs as pafs
    import torch

    from snp_service.spec import load_spec
    from tests.conftest import S3_SECRET

    weights = tmp_path / "weights.pth"
    torch.save(load_spec(_job_file(tmp_path)).build_model(4).state_dict(), weights)  # no training: a load job
    root = f"s3://snp-test/secrets-run-{uuid.uuid4().hex[:8]}"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **{
        "model.weights": str(weights), "analysis.readout_epochs": 3, "analysis.bootstrap": 50,
        "storage": {"root": root, "endpoint": s3_server.endpoint}})))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == S3_SECRET  # the credentials come from the environment
        run = subprocess.run([sys.executable, "-m", "snp_service.cli", "run", str(path)], capture_output=True,
                             text=True, env={**os.environ, "RAY_TMPDIR": ray_tmp}, timeout=900)
        assert run.returncode == 0, run.stderr[-3000:]
        assert S3_SECRET not in run.stdout + run.stderr
        store = Store.from_spec(load_spec(path).storage)
        objects = [i for i in store.fs.get_file_info(pafs.FileSelector(store.base, recursive=True))
                   if i.type == pafs.FileType.File]
        names = {posixpath.relpath(i.path, store.base) for i in objects}
        job_id = load_spec(path).job_id()
        for rel in ("spec.json", "spec.yaml", "report/report.html", "manifest.json"):
            assert f"{job_id}/{rel}" in names, rel
        for info in objects:
            with store.fs.open_input_stream(info.path) as f:
                data = f.read()
            assert S3_SECRET.encode() not in data, info.path
        logs = [p for p in Path(ray_tmp).rglob("*") if p.is_file() and not p.is_symlink()]
        assert logs, "the Ray session left no files to scan"
        for p in logs:
            try:
                data = p.read_bytes()
            except OSError:  # a socket or a file that went away
                continue
            assert S3_SECRET.encode() not in data, p
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
