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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from snp_service.console import token_auth_quietly
from snp_service.errors import SnpError
from snp_service.spec import JobSpec

EXCLUDES = [".venv", ".venv-ci", "results", ".cache", ".local", ".git", ".test-artefacts", ".ci/artefacts",
            "__pycache__", "*.pyc"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def job_api_address(address: str | None) -> str:
    """The cluster's job API, the one way every command finds it: --address, else
    RAY_API_SERVER_ADDRESS, else RAY_ADDRESS when it is an http(s) address (Ray's own convention for
    the job CLI), else the local default http://127.0.0.1:8265. A bare host:port is taken as http.

    Kept beside JobSubmissionClient's own lookup (ray.dashboard.utils.get_address_for_submission_client)
    because that one lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is given (so a
    --address would be ignored), takes a bare host:port or a GCS RAY_ADDRESS as the cluster's GCS and
    asks it for the dashboard, and opens a Ray Client session from the CLI for a ray:// address; this
    service's job API is always the dashboard's http(s) address, named or the local default."""
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
    # Switched on for this process when RAY_AUTH_MODE is unset and a token exists, as Ray's own helper
    # does, but without the warning that helper prints on every command.
    token_auth_quietly(new_cluster=False)
    try:
        with _address_variables_unset():
            return JobSubmissionClient(address)
    except Exception as e:  # ConnectionError, ValueError from the SDK
        raise SnpError(f"cannot reach the Ray job API at {address}: {str(e).splitlines()[0]} "
                       "(start one with `deploy/local.sh up` or pass --address http://HEAD:8265)") from None


@contextmanager
def _address_variables_unset() -> Iterator[None]:
    """RAY_API_SERVER_ADDRESS and RAY_ADDRESS unset while the job client is built: JobSubmissionClient
    would take either over the address it is given (job_api_address has read them already)."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def attempts(client, job_id: str) -> list[str]:
    """Submission ids of a job on this cluster, oldest first: `<job id>`, then `<job id>-2`, `-3`... (a
    re-submission gets a new id, so every attempt's logs stay readable)."""
    ids = []
    for info in client.list_jobs():
        sid = getattr(info, "submission_id", None) or ""
        suffix = sid[len(job_id) + 1:] if sid.startswith(job_id + "-") else None
        if sid == job_id:
            ids.append((1, sid))
        elif suffix is not None and suffix.isdigit():
            ids.append((int(suffix), sid))
    return [sid for _, sid in sorted(ids)]


def submit(spec: JobSpec, job_file: Path, address: str | None = None, working_dir: Path | None = None,
           pass_credentials: bool = False, sets: list[str] = (), store: str | None = None,
           allow_local_store: bool = False, fresh: bool = False) -> str:
    """Submit the job file (a plain job, a sweep or a compare study: `snp-service run` runs each kind)
    as one Ray job; returns the submission id."""
    working_dir = (working_dir or Path.cwd()).resolve()
    try:
        rel = job_file.resolve().relative_to(working_dir)
    except ValueError:
        raise SnpError(f"{job_file} is outside the working directory {working_dir}, which is what gets uploaded; "
                       "put the job file inside it") from None
    if not spec.storage.root.startswith("s3://") and not allow_local_store:
        raise SnpError(f"storage.root {spec.storage.root!r} is a local path: on a cluster the results would land in "
                       "Ray's copy of the working directory on the head. Use an s3:// store (--store s3://bucket/"
                       "prefix), or --allow-local-store if you want them there")
    client = _client(address)
    job_id = spec.job_id()
    earlier = attempts(client, job_id)
    for sid in earlier:
        st = str(client.get_job_info(sid).status)
        if st not in TERMINAL:
            raise SnpError(f"job {job_id} is already {st} on this cluster ({sid}); `snp-service logs {job_id} --follow` "
                           "follows it")
    sid = job_id if not earlier else f"{job_id}-{len(earlier) + 1}"  # earlier attempts and their logs are kept
    env = {"PYTHONUNBUFFERED": "1"}
    if pass_credentials:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(k):
                env[k] = os.environ[k]
    deadline = time.time() + 120
    while True:
        try:
            return client.submit_job(
                entrypoint=" ".join(["python -m snp_service.cli run", shlex.quote(rel.as_posix())]
                                    + [f"--set {shlex.quote(x)}" for x in sets]
                                    + ([f"--store {shlex.quote(store)}"] if store else [])
                                    + (["--fresh"] if fresh else [])), submission_id=sid,
                runtime_env={"working_dir": str(working_dir), "excludes": EXCLUDES, "env_vars": env},
                metadata={"job_id": job_id, "model": spec.model.name, "dataset": spec.dataset.name})
        except RuntimeError as e:  # a head that has just started: its job agent is not up yet
            if "No available agent" not in str(e) or time.time() > deadline:
                raise SnpError(f"submitting {sid} failed: {str(e).splitlines()[0]}") from None
            time.sleep(2)


def _latest(client, job_id: str) -> str:
    """The latest attempt of a job id, or the submission id itself when given one."""
    ids = attempts(client, job_id)
    if ids:
        return ids[-1]
    try:
        client.get_job_info(job_id)
        return job_id
    except Exception:
        raise SnpError(f"no submission {job_id!r} on this Ray cluster") from None


def status(job_id: str, address: str | None = None) -> dict:
    client = _client(address)
    sid = _latest(client, job_id)
    info = client.get_job_info(sid)
    return {"job_id": sid, "status": str(info.status), "message": info.message or "",
            "start_time": info.start_time, "end_time": info.end_time}


def follow(job_id: str, address: str | None = None, write: Callable[[str], None] = print) -> str:
    """Stream a submission's logs until it ends (no time limit); returns its final status."""
    import asyncio

    client = _client(address)
    sid = _latest(client, job_id)

    async def tail():
        async for chunk in client.tail_job_logs(sid):
            write(chunk)

    asyncio.run(tail())
    while True:  # the log stream ends with the job; its status follows a moment later
        st = str(client.get_job_info(sid).status)
        if st in TERMINAL:
            return st
        time.sleep(1)


def stop(job_id: str, address: str | None = None) -> str:
    client = _client(address)
    sid = _latest(client, job_id)
    if str(client.get_job_info(sid).status) in TERMINAL:
        return f"{sid} had already ended ({client.get_job_info(sid).status})"
    client.stop_job(sid)
    return f"{sid}: stop requested"


def logs(job_id: str, address: str | None = None, attempt: int | None = None) -> str:
    client = _client(address)
    ids = attempts(client, job_id)
    sid = (ids[attempt - 1] if attempt and 0 < attempt <= len(ids) else _latest(client, job_id))
    try:
        return client.get_job_logs(sid)
    except Exception:
        raise SnpError(f"no submission {sid!r} on this Ray cluster") from None


def wait(job_id: str, address: str | None = None, timeout: float | None = None,
         progress: Callable[[str], None] = lambda _m: None) -> str:
    """Poll a submission until it ends (no limit unless `timeout`); returns its final status."""
    deadline = None if timeout is None else time.time() + timeout
    last = None
    while deadline is None or time.time() < deadline:
        st = status(job_id, address)["status"]
        if st != last:
            progress(f"{job_id}: {st}")
            last = st
        if st in TERMINAL:
            return st
        time.sleep(2)
    raise SnpError(f"job {job_id} did not finish within {timeout:.0f} s (still {last})")
