"""The lease: one run of a job at a time, on this host or any other sharing the store.

A run writes `<root>/_leases/<job-id>.json` naming its owner (host, pid) and an expiry, renews it
while it lives and removes it when it ends; a second run of the same job id is refused naming the
holder (JobBusyError). JobLease holds the methods JobStore gets them from (snp_service.store)."""

from __future__ import annotations

import os
import platform
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from snp_service.errors import DamagedError, JobBusyError, StoreError
from snp_service.provenance import timestamp

LEASES = "_leases"  # <root>/_leases/<job-id>.json: who runs the job now (not a job: `_` names are skipped)
# a run renews its lease every quarter of this; a crashed run's lease lapses after it
LEASE_SECONDS = float(os.environ.get("SNP_LEASE_SECONDS", "600"))
# S3 has no create-if-absent here (pyarrow): a run writes its lease, waits this long, and holds the job
# only if it reads its own lease back (of two runs that start together, the later writer wins)
LEASE_SETTLE_SECONDS = float(os.environ.get("SNP_LEASE_SETTLE_SECONDS", "2"))


class JobLease:
    """The lease methods of a JobStore (`self.store`, `self.job_id` and its read and write methods)."""

    @contextmanager
    def lease(self, seconds: float = LEASE_SECONDS) -> Iterator[dict]:
        """Hold the job's lease while the body runs: a second run of the same job id, on this host or
        another sharing the store, is refused with one message naming the holder (JobBusyError). The
        lease names its owner (host, pid) and an expiry, renewed by a thread while the run lives; a
        lease past its expiry, or held by a process of this host that no longer exists, is taken over,
        so a crashed run never blocks its job for longer than `seconds`."""
        mine = self._take_lease(seconds)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew_lease, args=(mine, seconds, stop), daemon=True,
                                   name=f"lease {self.job_id}")
        renewer.start()
        try:
            yield mine
        finally:
            stop.set()
            renewer.join()
            self._drop_lease(mine)

    @property
    def _leases(self):
        """The store's `_leases` folder, as a JobStore."""
        return self.store.job(LEASES)

    def lease_holder(self) -> dict | None:
        """The job's lease, when a live run holds it (None when free, lapsed, its holder's process
        gone from this host, or the record unreadable)."""
        try:
            held = self._leases.read_json(f"{self.job_id}.json")
        except DamagedError:
            return None
        except StoreError:
            if self._leases.exists(f"{self.job_id}.json"):
                raise
            return None
        return held if isinstance(held, dict) and lease_is_live(held) else None

    @contextmanager
    def _lease_guard(self) -> Iterator[None]:
        """Local store: read-check-write of a lease under an exclusive flock (released by the kernel
        when its process dies, also on NFS's lock manager). S3: nothing (see LEASE_SETTLE_SECONDS)."""
        if self.store.remote:
            yield
            return
        import fcntl

        folder = Path(self.store.base) / LEASES
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".guard", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _take_lease(self, seconds: float) -> dict:
        mine = {"job_id": self.job_id, "owner": f"{platform.node()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
                "host": platform.node(), "pid": os.getpid(), "since": timestamp(), "expires": time.time() + seconds}
        with self._lease_guard():
            held = self.lease_holder()
            if held is not None:
                raise JobBusyError(busy_message(self.job_id, held))
            self._leases.write_json(f"{self.job_id}.json", mine)
        if self.store.remote:  # the later of two writers wins: hold the job only if ours is what is there
            time.sleep(LEASE_SETTLE_SECONDS)
            held = self.lease_holder()
            if held is None or held.get("owner") != mine["owner"]:
                raise JobBusyError(busy_message(self.job_id, held or {"owner": "another run"}))
        return mine

    def _renew_lease(self, mine: dict, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds / 4):
            try:
                with self._lease_guard():
                    held = self.lease_holder()
                    if held is not None and held.get("owner") != mine["owner"]:
                        return  # taken over (this run stalled past its expiry): never overwrite the new holder
                    mine["expires"] = time.time() + seconds
                    self._leases.write_json(f"{self.job_id}.json", mine)
            except StoreError:
                pass  # the store is down for now: the next renewal tries again

    def _drop_lease(self, mine: dict) -> None:
        try:
            with self._lease_guard():
                held = self.lease_holder()
                if held is not None and held.get("owner") == mine["owner"]:
                    self.store.call("releasing the lease", self.store.fs.delete_file,
                                    self._leases.path(f"{self.job_id}.json"))
        except (StoreError, FileNotFoundError):
            pass  # it lapses after its expiry


def lease_is_live(held: dict) -> bool:
    """A lease is live until its expiry, unless its holder was a process of this host that is gone."""
    if not isinstance(held.get("expires"), (int, float)) or held["expires"] < time.time():
        return False
    if held.get("host") == platform.node() and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return False  # crashed or killed: its lease is not waited for
        except PermissionError:
            pass  # another user's live process
    return True


def busy_message(job_id: str, held: dict) -> str:
    until = (datetime.fromtimestamp(held["expires"], timezone.utc).isoformat(timespec="seconds")
             if isinstance(held.get("expires"), (int, float)) else "?")
    return (f"job {job_id} is being run by {held.get('owner')} (host {held.get('host', '?')}, pid "
            f"{held.get('pid', '?')}, since {held.get('since', '?')}; its lease runs to {until} and is renewed "
            f"while that run lives); wait for it to end, then run the job again (a crashed run's lease lapses "
            f"within {LEASE_SECONDS:g} s, SNP_LEASE_SECONDS)")
