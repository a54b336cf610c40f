"""deploy/local.sh as users run it (issue 29, items 6 and 7): `down` leaves no process or port of its
cluster behind (the head runs in its own session and is stopped by its process group, as
localdev.RayHead does), and the hints `up` prints name the store the shipped S3 job writes to."""

import os
import re
import subprocess
import sys
import time

import pytest

from snp_service.localdev import free_ports
from tests.conftest import REPO, S3_KEY, S3_SECRET

pytestmark = pytest.mark.slow


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True).stdout
    return [int(p) for p, g in (line.split() for line in out.splitlines()) if int(g) == pgid]


def _listening(pids: list[int]) -> set[int]:
    """TCP ports these processes listen on (`ss -ltnp`)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    ports = set()
    for line in out.splitlines():
        if any(f"pid={p}," in line for p in pids):
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


def _all_listening() -> set[int]:
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines()}


def test_local_sh_down_leaves_no_process_or_port_of_its_cluster(tmp_path):
    s3, dash, gcs = free_ports(3)
    state = tmp_path / "state"
    env = {**os.environ, "SNP_LOCAL_STATE": str(state), "SNP_S3_PORT": str(s3), "SNP_DASHBOARD_PORT": str(dash),
           "SNP_GCS_PORT": str(gcs), "SNP_PYTHON": sys.executable, "PYTHONPATH": str(REPO),
           "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
           "SNP_RAY_START_ARGS": "--num-cpus=1"}
    env.pop("RAY_ADDRESS", None)
    script = str(REPO / "deploy" / "local.sh")
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert f"snp-service results --store s3://snp-results/quickstart" in up.stdout  # where quickstart_s3 writes
        assert f"SNP_S3_ENDPOINT=http://127.0.0.1:{s3}" in up.stdout
        ray_pgid = int((state / "ray.pid").read_text())
        s3_pgid = int((state / "s3" / "weed.pid").read_text())
        temp = (state / "ray-temp-dir").read_text().strip()
        time.sleep(5)  # the dashboard's agents and the client server come up after the API answers
        pids = _group(ray_pgid) + _group(s3_pgid)
        ports = _listening(pids)
        assert len(_group(ray_pgid)) >= 5 and {dash, gcs, s3} <= ports, (pids, ports)
        status_hint = re.search(r"^\s*(RAY_AUTH_MODE=token ray status --address \S+)$", up.stdout, re.M).group(1)
        status = subprocess.run(["env", *status_hint.split()[:1], os.path.join(os.path.dirname(sys.executable), "ray"),
                                 *status_hint.split()[2:]], env=env, capture_output=True, text=True, timeout=120)
        assert status.returncode == 0 and "Resources" in status.stdout, status.stderr[-2000:]
    finally:
        down = subprocess.run([script, "down"], env=env, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    assert _group(ray_pgid) == [] and _group(s3_pgid) == []
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert not (ports & _all_listening()), ports & _all_listening()
    assert not os.path.exists(temp) and not (state / "ray.pid").exists()
