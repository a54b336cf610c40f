"""What a person reads first (issue 29, items 7 and 9): no Ray token warning, no core_worker error
line, no escape codes or progress bars in a log written to a file; hints that work as printed."""

import logging
import os
import re
import subprocess
import sys
import tempfile

import pytest
import yaml

from snp_service import console
from snp_service.spec import spec_from_dict
from tests.conftest import REPO, tiny_job


def test_output_to_a_file_gets_no_bars_and_no_colours(monkeypatch, tmp_path):
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.setenv("SNP_BARS", "unset")  # restored after the test
    with open(tmp_path / "log", "w") as f:
        console.configure(quiet=False, stream=f)
    assert os.environ["SNP_BARS"] == "0" and os.environ["RAY_COLOR_PREFIX"] == "0" and not console.bars_enabled()
    record = logging.LogRecord("ray._private.worker", logging.INFO, __file__, 1,
                               "Started. View the dashboard at %s%s%s %s%s", ("\x1b[1m", "\x1b[32m",
                                                                              "http://127.0.0.1:8265", "\x1b[39m",
                                                                              "\x1b[22m"), None)
    assert all(f.filter(record) for f in logging.getLogger("ray._private.worker").filters)
    assert record.getMessage() == "Started. View the dashboard at http://127.0.0.1:8265 "

    class Tty:
        def isatty(self):
            return True

    console.configure(quiet=False, stream=Tty())
    assert console.bars_enabled()
    console.configure(quiet=True, stream=Tty())
    assert not console.bars_enabled()


def test_token_auth_is_decided_as_ray_does_without_its_warning(monkeypatch, caplog, tmp_path):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token here
    for k in [k for k in os.environ if k.startswith("RAY_AUTH_TOKEN")]:
        monkeypatch.delenv(k)
    from ray._private.authentication.authentication_token_setup import AuthenticationTokenLoader

    AuthenticationTokenLoader.instance().reset_cache()  # a token an earlier test's Ray read stays cached
    with caplog.at_level(logging.WARNING):
        console.token_auth_quietly(new_cluster=False)  # a client, no token: left to Ray (nothing to send)
        assert "RAY_AUTH_MODE" not in os.environ
        console.token_auth_quietly(new_cluster=True)  # a new local cluster: token mode, as Ray 2.60 decides
        assert os.environ["RAY_AUTH_MODE"] == "token"
    assert not [r for r in caplog.records if "Token authentication" in r.getMessage()]
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    console.token_auth_quietly(new_cluster=True)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"  # the user's choice stands
    AuthenticationTokenLoader.instance().reset_cache()


def test_the_submit_hint_names_the_store_and_its_endpoint(tmp_path, monkeypatch):
    from snp_service.cli import results_hint

    monkeypatch.delenv("SNP_S3_ENDPOINT", raising=False)
    d = tiny_job(tmp_path)
    d["storage"] = {"root": "s3://snp-results/quickstart", "endpoint": "http://127.0.0.1:9000"}
    spec = spec_from_dict(d)
    hint = results_hint(spec)
    assert (f"`SNP_S3_ENDPOINT=http://127.0.0.1:9000 snp-service results {spec.job_id()} "
            "--store s3://snp-results/quickstart`") in hint
    monkeypatch.setenv("SNP_S3_ENDPOINT", "http://127.0.0.1:9000")  # as deploy/local.sh up says to export
    assert f"`snp-service results {spec.job_id()} --store s3://snp-results/quickstart`" in results_hint(spec)
    assert "`snp-service results --store" in results_hint(spec_from_dict({**d, "sweep": {"threshold": [0.3]}}))


# Ray's own lines that are a warning or an error: its Python logger's level names, its C++ logs'
# `[date time,ms E pid tid] file.cc:line:` and a traceback
RAY_NOISE = re.compile(r"\bWARNING\b|\bERROR\b|^\S*\s*\[[\d-]+ [\d:,]+ [EWF] \d+ \d+\]|core_worker\.cc|Traceback",
                       re.M)


@pytest.mark.slow
def test_a_quickstart_log_written_to_a_file_is_plain(tmp_path):
    """A quickstart-sized job, its own local Ray, stdout and stderr to a file: no escape codes, no
    carriage returns (bars), no warning or error line from Ray (token warning, PreemptionWatcher)."""
    job = tiny_job(tmp_path, **{"train.epochs": 2, "analysis.readout_epochs": 2, "analysis.bootstrap": 50,
                                "heads.null_draws": 200})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp}
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_COLOR_PREFIX", "SNP_BARS"):
        env.pop(k, None)
    log = tmp_path / "quickstart.log"
    try:
        with open(log, "w") as out:
            rc = subprocess.run([sys.executable, "-m", "snp_service.cli", "run", str(tmp_path / "job.yaml")],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=1500).returncode
    finally:
        subprocess.run(["rm", "-rf", ray_tmp])
    text = log.read_text()
    assert rc == 0, text[-4000:]
    assert "done:" in text and "(TrainController" in text  # Ray's forwarded lines are there, plain
    assert "\x1b" not in text and "\r" not in text
    assert re.search(r"\[snp-service\] measure \S+: done in \d+ s", text)  # a long stage still moves
    plain = without_other_instances_noise(text)
    noise = RAY_NOISE.search(plain)
    assert not noise, plain[max(0, noise.start() - 1500):noise.end() + 2500]


def without_other_instances_noise(text: str) -> str:
    """The log without the one Ray error this machine causes, not the service: Ray Train's
    PlacementGroupCleaner actor finds its cluster by scanning the machine's processes (a cluster
    ray.init started records no address) and fails, with a traceback, when other Ray instances run
    here too (the suite's other clusters, other work). Its lines only, and only when they say so."""
    pids = set(re.findall(r"^\(PlacementGroupCleaner pid=(\d+)\) .*Found multiple active Ray instances", text, re.M))
    return "\n".join(ln for ln in text.splitlines()
                     if not any(ln.startswith(f"(PlacementGroupCleaner pid={p})") for p in pids))
