"""`snp-service submit/status/logs`: a job YAML through Ray's job submission API.

The submission id is the job id (content-derived), so `status` and `logs` take the same id the
results store uses, and re-submitting a finished or failed job resumes from its finished stages.
The working directory is uploaded (git-ignored paths and virtual environments left out) and the
entrypoint is `python -m snp_service.cli run <job>`, so the cluster runs the submitted code.

Credentials: by default none are sent; the cluster's own environment provides them (deploy/local.sh
starts the head with them, KubeRay takes them from a Kubernetes secret). `--pass-credentials`
sends AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from this shell in the job's runtime_env instead,
for clusters without them; Ray then stores them in the job's runtime_env, which its dashboard shows.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from snp_service.errors import SnpError
from snp_service.spec import JobSpec

EXCLUDES = [".venv", ".venv-ci", "results", ".cache", ".local", ".git", ".test-artefacts", ".ci/artefacts",
            "__pycache__", "*.pyc"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_api_address(address: str | None) -> str:
    """The cluster's job API, the one way every command finds it: --address, else
    RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s) address (Ray's own convention for
    the job CLI), else the local default http://127.0.0.1:8265. A bare host:port is taken as http."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS")
    if not address:
        env = os.environ.get("RAY_ADDRESS", "")
        address = env if env.startswith(("http://", "https://")) else "http://127.0.0.1:8265"
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise SnpError(f"cluster address {address!r}: the job API is an http(s) address (the dashboard's, e.g. "
                       "http://head:8265); ray:// and GCS addresses are for drivers, not for submitting")
    return address


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = job_api_address(address)
    # Ray 2.60 clusters enable token auth when a token exists (~/.ray/auth_token); its job client
    # only sends the token with RAY_AUTH_MODE=token (`ray job submit` needs it exported by hand).
    # Ray's own helper switches it on, for this process, when RAY_AUTH_MODE is unset and a token exists.
    try:
        from ray._private.authentication import authentication_token_setup

        authentication_token_setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    except (ImportError, AttributeError):  # another Ray version: its own defaults apply
        pass
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, ValueError from the SDK
        raise SnpError(f"cannot reach the Ray job API at {address}: {str(e).splitlines()[0]} "
                       "(start one with `deploy/local.sh up` or pass --address http://HEAD:8265)") from None


def submit(spec: JobSpec, job_file: Path, address: str | None = None, working_dir: Path | None = None,
           pass_credentials: bool = False, sets: list[str] = (), store: str | None = None) -> str:
    working_dir = (working_dir or Path.cwd()).resolve()
    try:
        rel = job_file.resolve().relative_to(working_dir)
    except ValueError:
        raise SnpError(f"{job_file} is outside the working directory {working_dir}, which is what gets uploaded; "
                       "put the job file inside it") from None
    client = _client(address)
    sid = spec.job_id()
    try:
        info = client.get_job_info(sid)
    except Exception:  # not found
        info = None
    if info is not None:
        if str(info.status) not in TERMINAL:
            raise SnpError(f"job {sid} is already {info.status} on this cluster; `snp-service logs {sid}` follows it")
        client.delete_job(sid)  # a finished or failed submission: resubmit under the same id
    env = {"PYTHONUNBUFFERED": "1"}
    if pass_credentials:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            if os.environ.get(k):
                env[k] = os.environ[k]
    deadline = time.time() + 120
    while True:
        try:
            return client.submit_job(
                entrypoint=" ".join(["python -m snp_service.cli run", shlex.quote(rel.as_posix())]
                                    + [f"--set {shlex.quote(x)}" for x in sets]
                                    + ([f"--store {shlex.quote(store)}"] if store else [])), submission_id=sid,
                runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env},
                metadata={"job_id": sid, "model": spec.model.name, "dataset": spec.dataset.name})
        except RuntimeError as e:  # a head that has just started: its job agent is not up yet
            if "No available agent" not in str(e) or time.time() > deadline:
                raise SnpError(f"submitting {sid} failed: {str(e).splitlines()[0]}") from None
            time.sleep(2)


def status(job_id: str, address: str | None = None) -> dict:
    client = _client(address)
    try:
        info = client.get_job_info(job_id)
    except Exception:
        raise SnpError(f"no submission {job_id!r} on this Ray cluster") from None
    return {"job_id": job_id, "status": str(info.status), "message": info.message or "",
            "start_time": info.start_time, "end_time": info.end_time}


def wait(job_id: str, address: str | None = None, timeout: float = 3600.0,
         progress: Callable[[str], None] = lambda _m: None) -> str:
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        st = status(job_id, address)["status"]
        if st != last:
            progress(f"{job_id}: {st}")
            last = st
        if st in TERMINAL:
            return st
        time.sleep(2)
    raise SnpError(f"job {job_id} did not finish within {timeout:.0f} s (still {last})")


def logs(job_id: str, address: str | None = None) -> str:
    client = _client(address)
    try:
        return client.get_job_logs(job_id)
    except Exception:
        raise SnpError(f"no submission {job_id!r} on this Ray cluster") from None
