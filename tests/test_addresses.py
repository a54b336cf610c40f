"""One way to address the cluster (issue 19): the job API from --address, RAY_API_SERVER_ADDRESS,
then an http(s) RAY_ADDRESS; a driver address that is a dashboard URL is one message, exit 2,
before anything is written."""

import pytest
import yaml

from snp_service.cli import main
from snp_service.errors import SnpError
from snp_service.submit import job_api_address
from tests.conftest import tiny_job


def test_the_job_api_address_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert job_api_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # a GCS address is not the job API
    assert job_api_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert job_api_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://ray.example.com")
    assert job_api_address(None) == "https://ray.example.com"
    assert job_api_address("head:8265") == "http://head:8265"
    with pytest.raises(SnpError, match="job API is an http"):
        job_api_address("ray://head:10001")


def test_running_here_with_a_dashboard_address_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path)))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "dashboard's job API" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
