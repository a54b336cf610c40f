"""The results store: the only module that writes results (JobStore's lease methods are in
snp_service.leases, the checks of a local file read whole in snp_service.localfiles).

One interface over a pyarrow FileSystem: a local directory (the embedded default) or an
S3-compatible bucket. Each job writes under `<root>/<job-id>/`: the spec, stage outputs (JSON,
parquet tables via polars, tensors), Ray Train's checkpoints, and last `manifest.json` listing
every artefact with its size and SHA-256. A job folder without a manifest is incomplete.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import platform
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.fs as pafs

from snp_service.errors import DamagedError, StoreError
from snp_service.failures import clean_error
from snp_service.leases import JobLease
from snp_service.localfiles import nearest_existing, read_regular_file, too_large
from snp_service.provenance import code_version, timestamp
from snp_service.spec import StorageSpec, check_endpoint, resolve_path

MANIFEST = "manifest.json"
STAGES = "stages"

# Every artefact of a job, by name: the one place its path is spelled. Stages write through these
# names; the report, the studies and the CLI read through them (`snp-service results --table`).
TABLES = {"layers": "snp/layers.parquet", "heads": "heads/summary.parquet", "andc": "prune/andc.parquet",
          "curve": "prune/curve.parquet", "structural": "structure/structural.parquet",
          "train": "train/metrics.parquet", "classes": "eval/per_class.parquet", "confusion": "eval/confusion.parquet"}
# tables jobs finished before a stage of their own took them over keep where they were written
LEGACY_TABLES = {"structural": "prune/structural.parquet"}  # the prune stage's, before the structure stage
FILES = {"spec": "spec.json", "spec_yaml": "spec.yaml", "class_names": "data/classes.json",
         "tokenizer": "data/tokenizer.json",
         "weights": "model/weights.pt", "report": "report/report.html", "summary": "report/summary.md"}
POINT_FILES = {  # per measurement point: name -> (stage folder, file name)
    # the measure stage's (reads no threshold, normalisation, candidate order or cluster time limit)
    "field_sums": ("measure", "field_sums.npy"), "label_counts": ("measure", "label_counts.npy"),
    "node_label_accuracy": ("measure", "node_label_accuracy.npy"), "dependence": ("measure", "dependence.parquet"),
    "readout": ("measure", "readout.pt"), "measured": ("measure", "measured.json"),
    # the cluster stage's
    "snp_matrices": ("snp", "snp_matrices.npy"), "snp_raw": ("snp", "snp_raw.npy"), "nodes": ("snp", "nodes.parquet"),
    "heads_labels": ("heads", "heads_labels.npy"),
    "head_matrices": ("heads", "head_matrices.npy"), "head_stats": ("heads", "heads.parquet"),
    "heads_null": ("heads", "null.npy"), "heads_specialisation_null": ("heads", "specialisation_null.npy"),
    "selection_raw": ("prune", "selection_raw.npy"), "selection_eta2": ("prune", "selection_eta2.npy"),
    # the prune stage's work done on the measure stage's capture, for the prune stage to take over
    "staged_prune": ("measure", "prune_staged.json"),
    "staged_selection_raw": ("measure", "prune_staged_selection_raw.npy"),
    "staged_selection_eta2": ("measure", "prune_staged_selection_eta2.npy"),
}


RETRY_SECONDS = float(os.environ.get("SNP_STORE_RETRY_SECONDS", "60"))


@dataclass(frozen=True)
class Store:
    """A results root: `fs` plus a base path in it (a directory, or bucket/prefix).

    On S3, every request is retried by pyarrow itself on the errors the AWS SDK deems transient
    (no connection, timeouts, 5xx, throttling), with backoff for at least SNP_STORE_RETRY_SECONDS
    (default 60; the filesystem is retrying_s3's); errors of credentials or a missing bucket are
    not retried. Failures raise StoreError naming the endpoint and bucket, never a credential.
    """

    fs: pafs.FileSystem
    base: str
    uri: str
    endpoint: str | None = None
    s3_options: tuple = ()  # the S3FileSystem's arguments (no credentials): RetryingS3 rebuilds it from them

    @property
    def remote(self) -> bool:
        return not isinstance(self.fs, pafs.LocalFileSystem)

    def call(self, what: str, fn, *args):
        """Run a filesystem call; StoreError with context on failure. No retry loop here: on S3 each
        request inside the call is retried by the filesystem (retrying_s3), and a second layer over it
        would multiply the waits."""
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except OSError as e:
            where = f" at endpoint {self.endpoint}" if self.endpoint else ""
            raise StoreError(f"{what} failed on results store {self.uri}{where}: {clean_error(e)}") from None

    def check(self) -> None:
        """Fail early, before any compute, when the store cannot be reached or written."""
        if not self.remote:
            existing = nearest_existing(Path(self.base))
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

    def free_bytes(self) -> int | None:
        """Free space on the local disk the store writes to (None on S3: a bucket's quota is not seen)."""
        return None if self.remote else shutil.disk_usage(nearest_existing(Path(self.base))).free

    @classmethod
    def from_spec(cls, storage: StorageSpec) -> Store:
        if storage.root.startswith("s3://"):
            from urllib.parse import urlparse

            kwargs: dict[str, Any] = {}
            endpoint = storage.endpoint or os.environ.get("AWS_ENDPOINT_URL")  # the AWS CLI's variable too
            if endpoint:
                try:  # the environment's endpoint is checked as the spec's is: never one with user:secret@
                    check_endpoint(endpoint)
                except ValueError as e:
                    raise StoreError(f"results store {storage.root}: {e} (AWS_ENDPOINT_URL)") from None
                u = urlparse(endpoint)
                kwargs.update(endpoint_override=u.netloc, scheme=u.scheme)
            kwargs["region"] = storage.region or "us-east-1"
            # credentials come only from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
            # AWS_SESSION_TOKEN, read by the AWS SDK in every process that uses the filesystem) and are
            # never passed in: a pickled filesystem (Ray Train's storage_filesystem, Tune's tuner.pkl in
            # the bucket) then holds no secret. Ray workers get them from their environment (runtime_env).
            kwargs.update(connect_timeout=5, request_timeout=60)
            return cls(retrying_s3(kwargs), storage.root[5:].rstrip("/"), storage.root.rstrip("/"), storage.endpoint,
                       tuple(sorted(kwargs.items())))
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
class JobStore(JobLease):
    """One job's folder in a store: its artefacts, stage markers, manifest and lease (snp_service.leases)."""

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
            except BaseException as e:
                if os.path.exists(tmp):  # nothing half-written is left behind (a full disk, an interrupt)
                    os.unlink(tmp)
                if isinstance(e, OSError):
                    raise StoreError(f"writing {self.uri}/{rel} failed: {clean_error(e)}") from None
                raise
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

    def read_bytes(self, rel: str, limit: int | None = None) -> bytes:
        """The file's bytes; with `limit`, a larger file is refused from its size, before it is read.
        A local file must be a regular file (read_regular_file); an object's size comes from S3."""
        if not self.store.remote:
            return read_regular_file(Path(self.path(rel)), limit, f"{self.uri}/{rel}")

        def get():
            if limit is not None:
                info = self.store.fs.get_file_info(self.path(rel))
                if info.type == pafs.FileType.NotFound:
                    raise FileNotFoundError(rel)
                if info.size is not None and info.size > limit:
                    raise StoreError(too_large(f"{self.uri}/{rel}", info.size, limit))
            with self.store.fs.open_input_stream(self.path(rel), compression=None) as f:
                data = f.read() if limit is None else f.read(limit + 1)
            if limit is not None and len(data) > limit:
                raise StoreError(too_large(f"{self.uri}/{rel}", len(data), limit))
            return data

        try:
            return self.store.call(f"reading {rel}", get)
        except FileNotFoundError:
            raise StoreError(f"{self.uri}/{rel} not found") from None

    def read_json(self, rel: str) -> Any:
        """A JSON artefact; one that does not parse (truncated, overwritten) raises DamagedError."""
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except ValueError as e:
            raise DamagedError(f"{self.uri}/{rel} is damaged (not readable JSON: {e}); "
                               "`snp-service verify` checks the job") from None

    def read_table(self, rel: str) -> pl.DataFrame:
        return pl.read_parquet(io.BytesIO(self.read_bytes(rel)))

    def read_torch(self, rel: str) -> Any:
        import torch

        return torch.load(io.BytesIO(self.read_bytes(rel)), map_location="cpu", weights_only=True)

    def copy_from(self, other: JobStore, prefixes: tuple[str, ...]) -> int:
        """Copy `other`'s files under `prefixes` (folders such as `model/`, or single files) to the
        same place here by pyarrow.fs.copy_files: a folder's whole tree at once, in parallel, by S3's
        server-side copy when both jobs are in the same bucket. Returns how many files were copied.
        (A `.tmp-` file a killed writer left behind comes along; no manifest or marker lists it.)"""
        n = 0
        for prefix in prefixes:
            src, dest = other.path(prefix.rstrip("/")), self.path(prefix.rstrip("/"))
            info = other.store.call(f"checking {prefix}", other.store.fs.get_file_info, src)
            if info.type == pafs.FileType.Directory:
                listed = other.store.call(f"listing {prefix}", other.store.fs.get_file_info,
                                          pafs.FileSelector(src, recursive=True))
                n += sum(i.type == pafs.FileType.File for i in listed)
            elif info.type == pafs.FileType.File:
                n += 1
            else:
                continue
            if not self.store.remote:  # copy_files creates the folders below `dest`, not `dest`'s own
                self.store.fs.create_dir(dest if info.type == pafs.FileType.Directory else posixpath.dirname(dest),
                                         recursive=True)
            self.store.call(f"copying {prefix}", functools.partial(
                pafs.copy_files, source_filesystem=other.store.fs, destination_filesystem=self.store.fs), src, dest)
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
    @staticmethod
    def table_paths(name: str) -> tuple[str, ...]:
        """Where the named table may be: TABLES, then where jobs finished before it moved keep it."""
        return (TABLES[name], *([LEGACY_TABLES[name]] if name in LEGACY_TABLES else []))

    def has(self, name: str) -> bool:
        """Whether the named table or file exists."""
        return any(self.exists(p) for p in (self.table_paths(name) if name in TABLES else (FILES[name],)))

    def table(self, name: str) -> pl.DataFrame:
        path, *older = self.table_paths(name)
        if older and not self.exists(path):  # a table that never moved is read without a lookup
            path = next((p for p in older if self.exists(p)), path)
        return self.read_table(path)

    def put_table(self, name: str, rows: pl.DataFrame | list | dict) -> str:
        return self.write_table(TABLES[name], rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(rows))

    def layers(self) -> pl.DataFrame:
        return self.table("layers")

    def heads(self) -> pl.DataFrame:
        return self.table("heads")

    def andc(self) -> pl.DataFrame:
        return self.table("andc")

    def spec_json(self) -> dict:
        """The job's spec as stored (a mapping; anything else raises DamagedError)."""
        spec = self.read_json(FILES["spec"])
        if not isinstance(spec, dict):
            raise DamagedError(f"{self.uri}/{FILES['spec']} is damaged (a {type(spec).__name__}, not a job spec)")
        return spec

    def class_names(self) -> list[str]:
        """The dataset's class names as the data stage recorded them (a list of strings; anything
        else raises DamagedError)."""
        names = self.read_json(FILES["class_names"])
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise DamagedError(f"{self.uri}/{FILES['class_names']} is damaged (expected a list of class names, "
                               f"got {type(names).__name__}); run the job again to rewrite it")
        return names

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
        except DamagedError:
            return None
        return marker if isinstance(marker, dict) and "finished" in marker else None

    def finish_stage(self, stage: str, summary: dict, seconds: float, outputs: tuple[str, ...] = ()) -> None:
        """Record a finished stage, with the size and SHA-256 of every file under its `outputs`
        prefixes: the marker vouches for them even when the job has no manifest (a re-run deletes
        it first, and may be interrupted)."""
        self.write_json(f"{STAGES}/{stage}.json", {"stage": stage, "seconds": round(seconds, 3), "finished": timestamp(),
                                                   **summary, "artefacts": self.fingerprints(outputs)})

    def finished_stages(self) -> list[str]:
        """Stages with a marker in the store (readable or not)."""
        return [posixpath.basename(i.path).removesuffix(".json") for i in self.files()
                if posixpath.relpath(i.path, self.base).startswith(f"{STAGES}/") and i.path.endswith(".json")]

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
        except DamagedError:
            return {"status": "damaged", "damage": [f"{MANIFEST}: not readable JSON"], "artefacts": []}
        if not isinstance(m, dict) or not isinstance(m.get("artefacts"), list):
            return {"status": "damaged", "damage": [f"{MANIFEST}: not a manifest"], "artefacts": []}
        return m

    def verify(self) -> list[str]:
        """Every artefact the manifest lists, checked against its size and SHA-256: the damaged ones
        ("path: why"); empty when all are intact. A job without a manifest (running, failed, or a
        re-run interrupted after deleting it): every finished stage's outputs against its marker."""
        m = self.manifest()
        if m is not None:
            return list(m.get("damage", [])) + self.check_entries(m["artefacts"], "the manifest")
        damage = []
        for stage in self.finished_stages():
            marker = self.stage_result(stage)  # an unreadable marker: the stage counts as not finished
            if marker is not None and isinstance(marker.get("artefacts"), list):  # older markers list none
                damage += self.check_entries(marker["artefacts"], f"stage {stage}'s marker")
        return damage

    def check_entries(self, entries: list, whose: str) -> list[str]:
        """The entries ({path, size, sha256}) whose file is missing, of another size or content."""
        sizes = {posixpath.relpath(i.path, self.base): i.size for i in self.files()}
        damage = []
        for entry in entries:
            rel = entry.get("path", "") if isinstance(entry, dict) else ""
            if rel not in sizes:
                damage.append(f"{rel}: missing")
            elif sizes[rel] != entry.get("size"):
                damage.append(f"{rel}: {sizes[rel]} bytes, {whose} says {entry.get('size')}")
            elif self.sha256(rel) != entry.get("sha256"):
                damage.append(f"{rel}: content differs from {whose}'s SHA-256")
        return damage

    def read_intact(self, rel: str, limit: int | None = None) -> bytes:
        """A finished job's artefact taken as input (its weights for another job): read only when the
        job's manifest says complete and lists the bytes with this size and SHA-256."""
        m = self.manifest()
        if m is None:
            raise StoreError(f"{self.uri}: job {self.job_id} has not finished (no {MANIFEST}); run it first")
        if m.get("status") != "complete":
            why = "; ".join(m.get("damage", [])[:2]) or f"status {m.get('status')!r}"
            raise DamagedError(f"{self.uri}: job {self.job_id} is not intact ({why}); run it again first")
        entry = next((e for e in m["artefacts"] if isinstance(e, dict) and e.get("path") == rel), None)
        if entry is None:
            raise DamagedError(f"{self.uri}/{rel}: not in job {self.job_id}'s manifest; run the job again first")
        data = self.read_bytes(rel, limit)
        if len(data) != entry.get("size") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise DamagedError(f"{self.uri}/{rel} is damaged ({len(data):,} bytes, the manifest says "
                               f"{entry.get('size')}; or another SHA-256): run job {self.job_id} again first")
        return data

    def sha256(self, rel: str) -> str:
        def digest(path=self.path(rel)):
            h = hashlib.sha256()
            with self.store.fs.open_input_stream(path, compression=None) as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            return h

        return self.store.call(f"hashing {rel}", digest).hexdigest()

    def fingerprints(self, prefixes: tuple[str, ...] | None = None) -> list[dict]:
        """{path, size, sha256} of every file (under `prefixes`, if given), but the manifest and
        temporary files."""
        entries = []
        for info in self.files():
            rel = posixpath.relpath(info.path, self.base)
            if rel == MANIFEST or ".tmp-" in rel or (prefixes is not None and not rel.startswith(prefixes)):
                continue
            entries.append({"path": rel, "size": info.size, "sha256": self.sha256(rel)})
        return entries

    def write_manifest(self, extra: dict) -> dict:
        """List every artefact with size and SHA-256; written last, so its presence means complete."""
        manifest = {"job_id": self.job_id, "written": timestamp(), "code_version": code_version(),
                    "host": platform.node(), "artefacts": self.fingerprints(), **extra}
        self.write_json(MANIFEST, manifest)
        return manifest

    def refresh_manifest(self, prefix: str) -> bool:
        """After a rewrite of the files under `prefix` (a rebuilt report): the manifest's entries there
        replaced by the files as they now are; every other entry kept as it was, so damage elsewhere
        is still found. False (nothing written) when the job has no readable manifest."""
        m = self.manifest()
        if m is None or m.get("status") == "damaged":
            return False
        kept = [e for e in m["artefacts"] if not (isinstance(e, dict) and str(e.get("path", "")).startswith(prefix))]
        self.write_json(MANIFEST, {**m, "artefacts": kept + self.fingerprints((prefix,))})
        return True

    # --- Ray Train ------------------------------------------------------------------------
    def checkpoint_folders(self) -> dict[str, int]:
        """Ray Train's checkpoint folders of this job (`train/<run>/checkpoint_*`) and their bytes."""
        sel = pafs.FileSelector(self.path("train"), recursive=True, allow_not_found=True)
        infos = self.store.call("listing checkpoints", self.store.fs.get_file_info, sel)
        folders = {posixpath.relpath(i.path, self.base): 0 for i in infos
                   if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")}
        for i in infos:
            folder = posixpath.dirname(posixpath.relpath(i.path, self.base))
            if i.type == pafs.FileType.File and folder in folders:
                folders[folder] += i.size or 0
        return folders

    def remove_folder(self, rel: str) -> None:
        self.store.call(f"removing {rel}", self.store.fs.delete_dir, self.path(rel))

    def ray_storage(self) -> tuple[str, pafs.FileSystem | None]:
        """(storage_path, storage_filesystem) for ray.train.RunConfig: checkpoints land in the job.
        On S3 the filesystem is the store's kind (retrying_s3), retrying for at least
        SNP_STORE_RETRY_SECONDS also in Ray Train's workers, which get it pickled."""
        if isinstance(self.store.fs, pafs.LocalFileSystem):
            return self.path("train"), None
        return self.path("train"), retrying_s3(dict(self.store.s3_options))


def s3_attempts(seconds: float) -> int:
    """The `max_attempts` of pyarrow's AwsDefaultS3RetryStrategy whose waits add up to at least
    `seconds`. That strategy is the AWS SDK's DefaultRetryStrategy: up to max_attempts retries
    (max_attempts + 1 requests), the n-th after 25 ms x 2^(n-1) (the first at once), no jitter, no
    cap, so m retries wait 25 ms x (2^m - 2) in all: 6 retries 1.55 s, 8 6.35 s, 12 102 s; at most
    about twice `seconds`. Not the SDK's standard strategy: its retry quota (500 tokens, 5 a retry)
    is refilled by successes the SDK reports to it, which pyarrow's wrapper never passes on, so a
    filesystem that had retried about 100 times stopped retrying for good."""
    m = 1
    while 0.025 * (2**m - 2) < seconds:
        m += 1
    return m


class RetryingS3FileSystem(pafs.S3FileSystem):
    """The store's S3 filesystem: AwsDefaultS3RetryStrategy(attempts), and a retry strategy that
    survives pickling. pyarrow 26's S3FileSystem drops `retry_strategy` when pickled, so Ray Train's
    workers (which get the storage filesystem pickled) retried 3 times, about 2 s, and an S3 outage
    of a minute failed the job. This one pickles its arguments (never credentials: each process
    reads those from its environment) and is built again with its strategy; still an
    S3FileSystem, so Ray Train treats it as one (single-threaded uploads)."""

    def __init__(self, options: dict, attempts: int):
        self.options, self.attempts = dict(options), attempts
        super().__init__(**self.options, retry_strategy=pafs.AwsDefaultS3RetryStrategy(max_attempts=attempts))

    def __reduce__(self):
        return (type(self), (self.options, self.attempts))


def retrying_s3(options: dict, seconds: float | None = None) -> RetryingS3FileSystem:
    """The store's S3 filesystem, retrying each request for at least `seconds` (default
    SNP_STORE_RETRY_SECONDS) on the errors the AWS SDK deems transient; the store's only retries."""
    return RetryingS3FileSystem(options, s3_attempts(RETRY_SECONDS if seconds is None else seconds))


def read_weights(weights: str, endpoint: str | None, limit: int) -> tuple[bytes, str, bool]:
    """The bytes of `model.weights` (at most `limit`, refused from the size before reading): a
    checkpoint file (a regular local file or s3://bucket/key), or a finished job's stored weights
    (its folder, local or s3://; read only when its manifest vouches for them). Returns (bytes, a name
    for messages, whether it is a finished job of this service)."""
    if weights.startswith("s3://"):
        bucket, _, key = weights[5:].partition("/")
        store = Store.from_spec(StorageSpec(root=f"s3://{bucket}", endpoint=endpoint))
        parent, _, leaf = key.rstrip("/").rpartition("/")
        job = store.job(key.rstrip("/"))
        if job.exists(FILES["weights"]):  # a finished job's folder
            return job.read_intact(FILES["weights"], limit), f"{weights} (job {leaf})", True
        return store.job(parent).read_bytes(leaf, limit), weights, False
    path = resolve_path(weights)
    if path.is_dir():  # a finished job's folder: its parent is a results root
        job = Store(pafs.LocalFileSystem(), str(path.parent), str(path.parent)).job(path.name)
        return job.read_intact(FILES["weights"], limit), f"{path} (job {path.name})", True
    return read_regular_file(path, limit, f"weights {path}"), str(path), False
