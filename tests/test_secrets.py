"""Secrets never travel through paths or URLs (issue 30, class 4): a job file is data, not a shell
script, so `~` and `$VARS` in its paths are refused, never expanded (an expanded secret would land in
spec.json, spec.yaml, the report and error messages); an S3 endpoint holding user:secret@ is refused
without being repeated, from the job file, `--set` or AWS_ENDPOINT_URL."""

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
