"""One way to address the cluster (issue 19): the job API from --address, RAY_API_SERVER_ADDRESS,
then an http(s) RAY_ADDRESS; a driver address that is a dashboard URL is one message, exit 2,
before anything is written."""

import os

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


@pytest.mark.parametrize("variables", ["RAY_API_SERVER_ADDRESS", "RAY_ADDRESS", "both", "a GCS RAY_ADDRESS"])
def test_the_job_client_connects_where_the_service_chose(monkeypatch, variables):
    """Ray's JobSubmissionClient takes RAY_API_SERVER_ADDRESS or RAY_ADDRESS over the address it is
    given (and asks a GCS RAY_ADDRESS for the dashboard); the one job_api_address chose, the flag
    first, is the one it connects to in each case, and the variables are left as they were."""
    from snp_service import submit
    from snp_service.localdev import free_ports

    flag, api, http_ray, gcs = free_ports(4)  # closed ports: nothing answers there
    env = {"RAY_API_SERVER_ADDRESS": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{api}"},
           "RAY_ADDRESS": {"RAY_ADDRESS": f"http://127.0.0.1:{http_ray}"},
           "both": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{api}", "RAY_ADDRESS": f"127.0.0.1:{gcs}"},
           "a GCS RAY_ADDRESS": {"RAY_ADDRESS": f"127.0.0.1:{gcs}"}}[variables]
    monkeypatch.setattr(submit, "token_auth_quietly", lambda new_cluster: None)
    for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cases = [f"http://127.0.0.1:{flag}"]
    if variables != "a GCS RAY_ADDRESS":  # (then the local default, where a dashboard may well answer)
        cases.append(None)
    for given in cases:
        target = job_api_address(given)
        assert target == given or target == env.get("RAY_API_SERVER_ADDRESS", env.get("RAY_ADDRESS"))
        with pytest.raises(SnpError) as e:
            submit._client(given)
        assert str(e.value).startswith(f"cannot reach the Ray job API at {target}: "
                                       f"Failed to connect to Ray at address: {target}.")  # Ray's own words
        assert {k: os.environ.get(k) for k in env} == env


def test_running_here_with_a_dashboard_address_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path)))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "dashboard's job API" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_set_and_store_override_the_job_file_and_are_validated_like_it(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path)))
    assert main(["validate", str(path)]) == 0
    plain = capsys.readouterr().out
    assert main(["validate", str(path), "--set", "train.epochs=7", "--set", "analysis.threshold=0.4",
                 "--store", str(tmp_path / "elsewhere")]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "threshold: 0.4" in out and str(tmp_path / "elsewhere") in out
    job_id = lambda text: text.split("job id ")[1].split(";")[0]  # noqa: E731
    assert job_id(out) != job_id(plain)  # the id follows from the overridden spec
    assert main(["validate", str(path), "--set", "train.epochs=yes"]) == 2
    assert "train.epochs" in capsys.readouterr().err
    assert main(["validate", str(path), "--set", "train.epochs"]) == 2
    assert "expected path=value" in capsys.readouterr().err


def test_markdown_tables_never_wrap():
    import polars as pl

    from snp_service.cli import markdown

    df = pl.DataFrame({"a_rather_long_column_name": [0.123456, float("nan")], "point": ["blocks.0.attn.heads", "x|y"]})
    lines = markdown(df).splitlines()
    assert lines[0] == "| a_rather_long_column_name | point |" and len(lines) == 4
    assert lines[2] == "| 0.123 | blocks.0.attn.heads |" and lines[3] == "| n/a | x\\|y |"


def test_training_that_no_node_can_hold_is_refused_with_what_is_missing(tmp_path):
    from snp_service.spec import spec_from_dict
    from snp_service.train import check_fits_cluster

    nodes = [{"CPU": 2.0}, {"CPU": 8.0}]
    spec = lambda **c: spec_from_dict(tiny_job(tmp_path, **{f"compute.{k}": v for k, v in c.items()}))  # noqa: E731
    check_fits_cluster(spec(num_workers=2, cpus_per_worker=2), False, nodes)  # 1 + 4 workers fit
    with pytest.raises(SnpError, match="1 GPU do not fit") as e:
        check_fits_cluster(spec(cpus_per_worker=1), True, nodes)
    assert "0 GPUs" in str(e.value)
    with pytest.raises(SnpError, match="256 CPU"):
        check_fits_cluster(spec(cpus_per_worker=256), False, nodes)
    check_fits_cluster(spec(cpus_per_worker=256, autoscaling=True), False, nodes)  # the autoscaler may add one


def test_a_ray_address_is_split_as_ray_init_splits_it_and_needs_a_port():
    """actors.host_port: Ray's own parser (ray.init's) splits the address; the service adds that the
    port is a number from 1 to 65535, which Ray checks only when it connects."""
    from snp_service.actors import host_port

    assert host_port("head:6379") == ("head", 6379) and host_port("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert host_port("[::1]:6379") == ("::1", 6379)
    for bad in ("garbage", "head:notaport", "http//x", "ray:/head", "::1:6379", ":6379", "head:", "head:0",
                "head:65536", "head:+80", "head:\uff16\uff13\uff17\uff19"):
        assert host_port(bad) is None, bad


@pytest.mark.parametrize("address", ["garbage", "head:notaport", "http//x", "ray:/head", "head:70000"])
def test_a_garbage_ray_address_is_refused_before_anything_is_written(tmp_path, capsys, address):
    job = tiny_job(tmp_path)
    job["compute"] = {**job["compute"], "address": address}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert main(["run", str(path)]) == 2
    assert "not an address" in capsys.readouterr().err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()
