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
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs

from snp_service.errors import StoreError
from snp_service.spec import StorageSpec, resolve_path

MANIFEST = "manifest.json"
STAGES = "stages"


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    from snp_service import __version__

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev, dirty = "", ""
    return f"{__version__}+{rev}{'.dirty' if dirty else ''}" if rev else __version__


@dataclass(frozen=True)
class Store:
    """A results root: `fs` plus a base path in it (a directory, or bucket/prefix)."""

    fs: pafs.FileSystem
    base: str
    uri: str

    @classmethod
    def from_spec(cls, storage: StorageSpec) -> Store:
        if storage.root.startswith("s3://"):
            from urllib.parse import urlparse

            kwargs: dict[str, Any] = {}
            if storage.endpoint:
                u = urlparse(storage.endpoint)
                kwargs.update(endpoint_override=u.netloc, scheme=u.scheme)
            if storage.region:
                kwargs["region"] = storage.region
            # credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
            fs = pafs.S3FileSystem(**kwargs, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=5))
            return cls(fs, storage.root[5:].rstrip("/"), storage.root.rstrip("/"))
        path = resolve_path(storage.root)
        path.mkdir(parents=True, exist_ok=True)
        return cls(pafs.LocalFileSystem(), str(path), str(path))

    def job(self, job_id: str) -> JobStore:
        return JobStore(self, job_id)

    def job_ids(self) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.base, allow_not_found=True))
        except OSError as e:
            raise StoreError(f"cannot list results store {self.uri}: {e}") from None
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                      and not i.base_name.startswith("_"))  # _studies etc. are not jobs


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
        fs.create_dir(posixpath.dirname(dest), recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{dest}.tmp-{os.getpid()}"
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, dest)
        else:  # an object PUT is atomic
            with fs.open_output_stream(dest) as f:
                f.write(data)
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
        return self.store.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.store.fs.open_input_stream(self.path(rel)) as f:
                return f.read()
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
            self.store.fs.create_dir(posixpath.dirname(self.path(rel)), recursive=True)
            self.store.fs.copy_file(info.path, self.path(rel))
            n += 1
        return n

    def read_array(self, rel: str) -> Any:
        """A .npy array (never unpickled: allow_pickle is off)."""
        import numpy as np

        return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)

    def files(self) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(self.base, recursive=True, allow_not_found=True)
        return sorted((i for i in self.store.fs.get_file_info(sel) if i.type == pafs.FileType.File),
                      key=lambda i: i.path)

    # --- stages and manifest ---------------------------------------------------------------
    def stage_result(self, stage: str) -> dict | None:
        """The recorded summary of a finished stage, or None if it has not finished."""
        rel = f"{STAGES}/{stage}.json"
        return self.read_json(rel) if self.exists(rel) else None

    def finish_stage(self, stage: str, summary: dict, seconds: float) -> None:
        self.write_json(f"{STAGES}/{stage}.json", {"stage": stage, "seconds": round(seconds, 3),
                                                   "finished": _now(), **summary})

    def invalidate_manifest(self) -> None:
        """Mark the job incomplete while it is being (re)written."""
        if self.exists(MANIFEST):
            self.store.fs.delete_file(self.path(MANIFEST))

    def manifest(self) -> dict | None:
        return self.read_json(MANIFEST) if self.exists(MANIFEST) else None

    def write_manifest(self, extra: dict) -> dict:
        """List every artefact with size and SHA-256; written last, so its presence means complete."""
        entries = []
        for info in self.files():
            rel = posixpath.relpath(info.path, self.base)
            if rel == MANIFEST or ".tmp-" in rel:
                continue
            h = hashlib.sha256()
            with self.store.fs.open_input_stream(info.path) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            entries.append({"path": rel, "size": info.size, "sha256": h.hexdigest()})
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


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
