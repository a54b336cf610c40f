"""The results store: the only module that writes results.

One interface over a pyarrow FileSystem: a local directory (the embedded default) or an
S3-compatible bucket. Each job writes under `<root>/<job-id>/`: the spec, stage outputs (JSON,
parquet tables via polars, tensors), Ray Train's checkpoints, and last `manifest.json` listing
every artefact with its size and SHA-256. A job folder without a manifest is incomplete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import posixpath
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs

from snp_service.errors import StoreError
from snp_service.provenance import code_version
from snp_service.spec import StorageSpec, resolve_path

MANIFEST = "manifest.json"
STAGES = "stages"

# Every artefact of a job, by name: the one place its path is spelled. Stages write through these
# names; the report, the studies and the CLI read through them (`snp-service results --table`).
TABLES = {"layers": "snp/layers.parquet", "heads": "heads/summary.parquet", "andc": "prune/andc.parquet",
          "curve": "prune/curve.parquet", "structural": "prune/structural.parquet", "train": "train/metrics.parquet",
          "classes": "eval/per_class.parquet", "confusion": "eval/confusion.parquet"}
FILES = {"spec": "spec.json", "spec_yaml": "spec.yaml", "class_names": "data/classes.json",
         "weights": "model/weights.pt", "report": "report/report.html", "summary": "report/summary.md"}
POINT_FILES = {  # per measurement point: name -> (stage folder, file name)
    "snp_matrices": ("snp", "snp_matrices.npy"), "snp_raw": ("snp", "snp_raw.npy"),
    "node_label_accuracy": ("snp", "node_label_accuracy.npy"), "nodes": ("snp", "nodes.parquet"),
    "readout": ("snp", "readout.pt"), "heads_labels": ("heads", "heads_labels.npy"),
    "head_matrices": ("heads", "head_matrices.npy"), "head_stats": ("heads", "heads.parquet"),
    "heads_null": ("heads", "null.npy"), "heads_specialisation_null": ("heads", "specialisation_null.npy"),
    "selection_raw": ("prune", "selection_raw.npy"), "selection_eta2": ("prune", "selection_eta2.npy"),
    # the prune stage's work done on the snp stage's capture, for the prune stage to take over
    "staged_prune": ("snp", "prune_staged.json"), "staged_selection_raw": ("snp", "prune_staged_selection_raw.npy"),
    "staged_selection_eta2": ("snp", "prune_staged_selection_eta2.npy"),
}


_AUTH_ERRORS = ("ACCESS_DENIED", "AccessDenied", "SignatureDoesNotMatch", "InvalidAccessKeyId", "Forbidden",
                "NO_SUCH_BUCKET", "NoSuchBucket")
RETRY_SECONDS = float(os.environ.get("SNP_STORE_RETRY_SECONDS", "60"))


def _is_auth(e: Exception) -> bool:
    return any(k in str(e) for k in _AUTH_ERRORS)


@dataclass(frozen=True)
class Store:
    """A results root: `fs` plus a base path in it (a directory, or bucket/prefix).

    On S3, every call is retried with exponential backoff for up to SNP_STORE_RETRY_SECONDS
    (default 60) on transient errors (connection refused or reset, timeouts, 5xx); errors of
    credentials or a missing bucket fail at once. Failures raise StoreError naming the endpoint
    and bucket, never a credential.
    """

    fs: pafs.FileSystem
    base: str
    uri: str
    endpoint: str | None = None

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    def call(self, what: str, fn, *args):
        """Run a filesystem call, retrying transient S3 errors; StoreError with context on failure."""
        import time

        delay, deadline = 0.5, time.monotonic() + RETRY_SECONDS
        while True:
            try:
                return fn(*args)
            except FileNotFoundError:
                raise
            except OSError as e:
                if not self.remote or _is_auth(e) or time.monotonic() + delay > deadline:
                    where = f" at endpoint {self.endpoint}" if self.endpoint else ""
                    raise StoreError(f"{what} failed on results store {self.uri}{where}: {clean_error(e)}") from None
                time.sleep(delay)
                delay = min(delay * 2, 8.0)

    def check(self) -> None:
        """Fail early, before any compute, when the store cannot be reached or written."""
        if not self.remote:
            existing = Path(self.base)
            while not existing.exists():
                existing = existing.parent
            if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
                raise StoreError(f"results directory {self.uri} cannot be created or written "
                                 f"({existing} is not a writable directory)")
            return
        bucket = self.base.split("/", 1)[0]
        try:
            info = self.call("checking the bucket", self.fs.get_file_info, bucket)
        except StoreError as e:
            raise StoreError(f"{e} (bucket {bucket!r}; credentials come from AWS_ACCESS_KEY_ID / "
                             "AWS_SECRET_ACCESS_KEY in the environment)") from None
        if info.type == pafs.FileType.NotFound:
            raise StoreError(f"bucket {bucket!r} does not exist at endpoint {self.endpoint or 'AWS'}; create it first")

    @classmethod
    def from_spec(cls, storage: StorageSpec) -> Store:
        if storage.root.startswith("s3://"):
            from urllib.parse import urlparse

            kwargs: dict[str, Any] = {}
            endpoint = storage.endpoint or os.environ.get("AWS_ENDPOINT_URL")  # the AWS CLI's variable too
            if endpoint:
                u = urlparse(endpoint)
                kwargs.update(endpoint_override=u.netloc, scheme=u.scheme)
            kwargs["region"] = storage.region or "us-east-1"
            # credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
            # AWS_SESSION_TOKEN, read by the AWS SDK in every process that uses the filesystem) and are
            # never passed in: a pickled filesystem (Ray Train's storage_filesystem, Tune's tuner.pkl in
            # the bucket) then holds no secret. Ray workers get them from their environment (runtime_env).
            fs = pafs.S3FileSystem(**kwargs, connect_timeout=5, request_timeout=60,
                                   retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
            return cls(fs, storage.root[5:].rstrip("/"), storage.root.rstrip("/"), storage.endpoint)
        try:
            path = resolve_path(storage.root)  # created on the first write, not before
        except ValueError as e:
            raise StoreError(f"results store {storage.root!r}: {e}") from None
        return cls(pafs.LocalFileSystem(), str(path), str(path))

    def job(self, job_id: str) -> JobStore:
        return JobStore(self, job_id)

    def job_ids(self) -> list[str]:
        infos = self.call("listing jobs", self.fs.get_file_info, pafs.FileSelector(self.base, allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and not i.base_name.startswith("_")  # _studies etc. are not jobs
                      and self.fs.get_file_info(posixpath.join(i.path, FILES["spec"])).type == pafs.FileType.File)


@dataclass(frozen=True)
class JobStore:
    store: Store
    job_id: str

    @property
    def base(self) -> str:
        return posixpath.join(self.store.base, self.job_id)

    @property
    def uri(self) -> str:
        return posixpath.join(self.store.uri, self.job_id)

    def path(self, rel: str) -> str:
        return posixpath.join(self.base, rel)

    # --- writing -------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        fs, dest = self.store.fs, self.path(rel)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{dest}.tmp-{os.getpid()}"
            try:
                fs.create_dir(posixpath.dirname(dest), recursive=True)
                with fs.open_output_stream(tmp, compression=None) as f:
                    f.write(data)
                os.replace(tmp, dest)
            except OSError as e:
                if os.path.exists(tmp):
                    os.unlink(tmp)  # nothing half-written is left behind (e.g. disk full)
                raise StoreError(f"writing {self.uri}/{rel} failed: {clean_error(e)}") from None
            return dest

        def put():  # an object PUT is atomic; retried whole
            with fs.open_output_stream(dest, compression=None) as f:
                f.write(data)

        self.store.call(f"writing {rel}", put)
        return dest

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def write_table(self, rel: str, df: pl.DataFrame) -> str:
        buf = io.BytesIO()
        df.write_parquet(buf)
        return self.write_bytes(rel, buf.getvalue())

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode())

    def write_torch(self, rel: str, obj: Any) -> str:
        """A state dict or tensor, in torch.save format."""
        import torch

        buf = io.BytesIO()
        torch.save(obj, buf)
        return self.write_bytes(rel, buf.getvalue())

    def write_array(self, rel: str, array: Any) -> str:
        """A numpy array as .npy."""
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, array)
        return self.write_bytes(rel, buf.getvalue())

    # --- reading -------------------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        info = self.store.call(f"checking {rel}", self.store.fs.get_file_info, self.path(rel))
        return info.type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        def get():
            with self.store.fs.open_input_stream(self.path(rel), compression=None) as f:
                return f.read()

        try:
            return self.store.call(f"reading {rel}", get)
        except FileNotFoundError:
            raise StoreError(f"{self.uri}/{rel} not found") from None

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_table(self, rel: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(rel)))

    def read_torch(self, rel: str) -> Any:
        import torch

        return torch.load(io.BytesIO(self.read_bytes(rel)), map_location="cpu", weights_only=True)

    def copy_from(self, other: JobStore, prefixes: tuple[str, ...]) -> int:
        """Copy every file of `other` under `prefixes` (e.g. `model/`) to the same place here."""
        n = 0
        for info in other.files():
            rel = posixpath.relpath(info.path, other.base)
            if ".tmp-" in rel or not rel.startswith(prefixes):
                continue
            if not self.store.remote:
                self.store.fs.create_dir(posixpath.dirname(self.path(rel)), recursive=True)
            self.store.call(f"copying {rel}", self.store.fs.copy_file, info.path, self.path(rel))
            n += 1
        return n

    def read_array(self, rel: str) -> Any:
        """A .npy array (never unpickled: allow_pickle is off)."""
        import numpy as np

        return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)

    def files(self) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        infos = self.store.call("listing files", self.store.fs.get_file_info, sel)
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)

    # --- named artefacts (TABLES, FILES, POINT_FILES) -------------------------------------
    def has(self, name: str) -> bool:
        """Whether the named table or file exists."""
        return self.exists(TABLES.get(name) or FILES[name])

    def table(self, name: str) -> pl.DataFrame:
        return self.read_table(TABLES[name])

    def put_table(self, name: str, rows: pl.DataFrame | list | dict) -> str:
        return self.write_table(TABLES[name], rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows))

    def layers(self) -> pl.DataFrame:
        return self.table("layers")

    def heads(self) -> pl.DataFrame:
        return self.table("heads")

    def andc(self) -> pl.DataFrame:
        return self.table("andc")

    def spec_json(self) -> dict:
        return self.read_json(FILES["spec"])

    def class_names(self) -> list[str]:
        return self.read_json(FILES["class_names"])

    @staticmethod
    def point_path(point: str, what: str) -> str:
        stage, name = POINT_FILES[what]
        return f"{stage}/{point}/{name}"

    def has_point(self, point: str, what: str) -> bool:
        return self.exists(self.point_path(point, what))

    def read_point(self, point: str, what: str) -> Any:
        """A point's artefact, read by its kind (.npy array, .parquet table, .json, .pt torch object)."""
        rel = self.point_path(point, what)
        return (self.read_array(rel) if rel.endswith(".npy") else self.read_table(rel) if rel.endswith(".parquet")
                else self.read_json(rel) if rel.endswith(".json") else self.read_torch(rel))

    def write_point(self, point: str, what: str, obj: Any) -> str:
        rel = self.point_path(point, what)
        if rel.endswith(".npy"):
            return self.write_array(rel, obj)
        if rel.endswith(".parquet"):
            return self.write_table(rel, obj if isinstance(obj, pl.DataFrame) else pl.DataFrame(obj))
        if rel.endswith(".json"):
            return self.write_json(rel, obj)
        return self.write_torch(rel, obj)

    # --- stages and manifest ---------------------------------------------------------------
    def stage_result(self, stage: str) -> dict | None:
        """The recorded summary of a finished stage, or None if it has not finished (a damaged marker
        counts as not finished: the stage runs again; it never takes a run down)."""
        rel = f"{STAGES}/{stage}.json"
        if not self.exists(rel):
            return None
        try:
            marker = self.read_json(rel)
        except ValueError:
            return None
        return marker if isinstance(marker, dict) and "finished" in marker else None

    def finish_stage(self, stage: str, summary: dict, seconds: float) -> None:
        self.write_json(f"{STAGES}/{stage}.json", {"stage": stage, "seconds": round(seconds, 3),
                                                   "finished": _now(), **summary})

    def invalidate_manifest(self) -> None:
        """Mark the job incomplete while it is being (re)written."""
        if self.exists(MANIFEST):
            self.store.call("removing the old manifest", self.store.fs.delete_file, self.path(MANIFEST))

    def manifest(self) -> dict | None:
        """The manifest; a damaged one (truncated, not JSON) reads as {"status": "damaged", ...}."""
        if not self.exists(MANIFEST):
            return None
        try:
            m = self.read_json(MANIFEST)
        except ValueError:
            return {"status": "damaged", "damage": [f"{MANIFEST}: not readable JSON"], "artefacts": []}
        if not isinstance(m, dict) or not isinstance(m.get("artefacts"), list):
            return {"status": "damaged", "damage": [f"{MANIFEST}: not a manifest"], "artefacts": []}
        return m

    def verify(self) -> list[str]:
        """Every artefact the manifest lists, checked against its size and SHA-256: the damaged ones
        ("path: why"); empty when all are intact. A job without a manifest has nothing to check."""
        m = self.manifest()
        if m is None:
            return []
        damage = list(m.get("damage", []))
        sizes = {posixpath.relpath(i.path, self.base): i.size for i in self.files()}
        for entry in m["artefacts"]:
            rel = entry.get("path", "")
            if rel not in sizes:
                damage.append(f"{rel}: missing")
            elif sizes[rel] != entry.get("size"):
                damage.append(f"{rel}: {sizes[rel]} bytes, the manifest says {entry.get('size')}")
            elif self.sha256(rel) != entry.get("sha256"):
                damage.append(f"{rel}: content differs from the manifest's SHA-256")
        return damage

    def sha256(self, rel: str) -> str:
        def digest(path=self.path(rel)):
            h = hashlib.sha256()
            with self.store.fs.open_input_stream(path, compression=None) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return h

        return self.store.call(f"hashing {rel}", digest).hexdigest()

    def write_manifest(self, extra: dict) -> dict:
        """List every artefact with size and SHA-256; written last, so its presence means complete."""
        entries = []
        for info in self.files():
            rel = posixpath.relpath(info.path, self.base)
            if rel == MANIFEST or ".tmp-" in rel:
                continue
            entries.append({"path": rel, "size": info.size, "sha256": self.sha256(rel)})
        manifest = {"job_id": self.job_id, "written": _now(), "code_version": code_version(),
                    "host": platform.node(), "artefacts": entries, **extra}
        self.write_json(MANIFEST, manifest)
        return manifest

    # --- Ray Train ------------------------------------------------------------------------
    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for ray.train.RunConfig: checkpoints land in the job."""
        if isinstance(self.store.fs, pafs.LocalFileSystem):
            return self.path("train"), None
        return self.path("train"), self.store.fs


def clean_error(e: Exception, line: int = 0) -> str:
    """One line of an error message (the first, or e.g. -1 for the last), without secrets
    (pyarrow/AWS messages do not carry the secret key, but be sure)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[line].strip() if lines else type(e).__name__
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY")
    return text.replace(secret, "***") if secret and len(secret) >= 6 else text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def read_weights(weights: str, endpoint: str | None) -> tuple[bytes, str, bool]:
    """The bytes of `model.weights`: a checkpoint file (local path or s3://bucket/key), or a finished
    job's stored weights (its folder, local or s3://). Returns (bytes, a name for messages, whether it
    is a finished job of this service)."""
    if weights.startswith("s3://"):
        bucket, _, key = weights[5:].partition("/")
        store = Store.from_spec(StorageSpec(root=f"s3://{bucket}", endpoint=endpoint))
        parent, _, leaf = key.rstrip("/").rpartition("/")
        job = store.job(key.rstrip("/"))
        if job.exists(FILES["weights"]):  # a finished job's folder
            return job.read_bytes(FILES["weights"]), f"{weights} (job {leaf})", True
        return store.job(parent).read_bytes(leaf) if parent else store.job("").read_bytes(leaf), weights, False
    path = resolve_path(weights)
    try:
        if path.is_dir():
            if not (path / MANIFEST).is_file():
                raise StoreError(f"weights {path}: job {path.name} has not finished (no {MANIFEST}); run it first")
            return (path / FILES["weights"]).read_bytes(), f"{path} (job {path.name})", True
        return path.read_bytes(), str(path), False
    except OSError as e:
        raise StoreError(f"weights {path}: cannot read: {e.strerror or e}") from None
