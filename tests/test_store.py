"""The local results store: atomic writes, tables, stages and the manifest written last."""

import hashlib
import json

import polars as pl

from snp_service.spec import StorageSpec
from snp_service.store import Store


def test_write_read_and_manifest(tmp_path):
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    job.write_json("a/b.json", {"x": 1})
    job.write_table("t.parquet", pl.DataFrame({"k": [1, 2]}))
    assert job.read_json("a/b.json") == {"x": 1}
    assert job.read_table("t.parquet")["k"].to_list() == [1, 2]
    assert job.manifest() is None  # incomplete until the manifest is written
    m = job.write_manifest({"status": "complete"})
    paths = {e["path"]: e for e in m["artefacts"]}
    assert set(paths) == {"a/b.json", "t.parquet"}
    data = (tmp_path / "res" / "j-1" / "a" / "b.json").read_bytes()
    assert paths["a/b.json"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert paths["a/b.json"]["size"] == len(data)
    assert json.loads((tmp_path / "res" / "j-1" / "manifest.json").read_text())["status"] == "complete"
    job.invalidate_manifest()
    assert job.manifest() is None
    assert not list((tmp_path / "res").rglob("*.tmp-*"))


def _reported_job(tmp_path):
    """A finished job of a table and a report, its manifest written."""
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    job.write_json("snp/layers.json", {"x": 1})
    job.write_bytes("report/report.html", b"<p>old</p>")
    job.write_manifest({"status": "complete"})
    return job


def test_a_rewritten_report_is_relisted_and_damage_elsewhere_is_still_found(tmp_path):
    job = _reported_job(tmp_path)
    job.write_bytes("report/report.html", b"<p>rebuilt, longer</p>")
    job.write_bytes("report/figures/new.svg", b"<svg/>")
    table = tmp_path / "res" / "j-1" / "snp" / "layers.json"
    table.write_bytes(table.read_bytes().replace(b"1", b"2"))  # same size, other bytes
    assert len(job.verify()) == 2  # the rewritten report and the damaged table
    assert job.refresh_manifest("report/")
    assert job.verify() == ["snp/layers.json: content differs from the manifest's SHA-256"]
    assert {e["path"] for e in job.manifest()["artefacts"]} == {"snp/layers.json", "report/report.html",
                                                                 "report/figures/new.svg"}
    job.invalidate_manifest()
    assert not job.refresh_manifest("report/")  # no manifest: nothing to refresh, none written
    assert job.manifest() is None


def test_the_same_figure_gives_the_same_bytes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from snp_service.report import store_figure

    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    out = []
    for _ in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 2], label="a")
        ax.legend()
        store_figure(job, "f", fig)
        out.append((job.read_bytes("report/figures/f.svg"), job.read_bytes("report/figures/f.png")))
    assert out[0] == out[1]


def test_stages_are_recorded(tmp_path):
    store = Store.from_spec(StorageSpec(root=str(tmp_path)))
    job = store.job("j-2")
    assert job.stage_result("train") is None
    job.finish_stage("train", {"eval_accuracy": 0.5}, 1.25)
    assert job.stage_result("train")["eval_accuracy"] == 0.5
    assert store.job_ids() == []  # a folder is a job once its spec.json is written (the run's first write)
    job.write_json("spec.json", {"name": "j"})
    assert store.job_ids() == ["j-2"]


COPIED = {"model/weights.pt": b"w" * 7, "measure/a.npy": b"a" * 10, "measure/deep/er/b.json": b"{}",
          "train/metrics.parquet": b"table"}


def copies_a_finished_stage(store: Store) -> None:
    """A finished stage copied to another job (JobStore.copy_from, pyarrow.fs.copy_files): a flat
    folder, a nested tree and a single file into a job that has none of their folders yet; a prefix
    the source lacks is skipped, files beside the prefixes stay behind; the copy's own marker lists
    the same bytes and its manifest verifies. On the local disk here, on S3 in test_s3.py."""
    source, copy = store.job("source"), store.job("copy")
    for rel, data in COPIED.items():
        source.write_bytes(rel, data)
    source.write_bytes("train/checkpoint_000001/state.pt", b"not a stage output")
    prefixes = ("model/", "measure/", "train/metrics.parquet", "heads/")
    source.finish_stage("measure", {}, 0.1, prefixes)
    assert copy.copy_from(source, prefixes) == len(COPIED)
    assert {rel: copy.read_bytes(rel) for rel in COPIED} == COPIED
    assert not copy.exists("train/checkpoint_000001/state.pt") and not copy.exists("heads")
    copy.finish_stage("measure", {}, 0.1, prefixes)
    assert copy.stage_result("measure")["artefacts"] == source.stage_result("measure")["artefacts"]
    copy.write_manifest({"status": "complete"})
    assert copy.verify() == [] and {e["path"] for e in copy.manifest()["artefacts"]} == {*COPIED, "stages/measure.json"}
    assert copy.copy_from(source, prefixes) == len(COPIED) and copy.verify() == []  # again: overwritten, same bytes


def test_a_finished_stage_is_copied_whole(tmp_path):
    copies_a_finished_stage(Store.from_spec(StorageSpec(root=str(tmp_path / "res"))))


# --- one run of a job at a time (issue 30, class 5): a lease per job id in the store

LEASE_HOLDER = """
import select, sys
from snp_service.spec import StorageSpec
from snp_service.store import Store
with Store.from_spec(StorageSpec(root=sys.argv[1])).job(sys.argv[3]).lease():
    print("held", flush=True)
    select.select([sys.stdin], [], [], float(sys.argv[2]))  # until the test closes our stdin
"""


def lease_held_elsewhere(root, seconds: float, job_id: str = "j-1"):
    """Another process holding the job's lease (it prints `held` once it does) until its stdin is
    closed (`release`), at most `seconds`."""
    import subprocess
    import sys

    from tests.conftest import REPO

    proc = subprocess.Popen([sys.executable, "-c", LEASE_HOLDER, str(root), str(seconds), job_id],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def release(holder) -> None:
    """Let a lease holder leave its lease and end."""
    holder.stdin.close()
    holder.wait(timeout=60)


def test_a_second_run_of_a_job_is_refused_naming_the_holder_and_may_run_once_it_ends(tmp_path):
    import pytest

    from snp_service.errors import JobBusyError

    store = Store.from_spec(StorageSpec(root=str(tmp_path)))
    holder = lease_held_elsewhere(tmp_path, 600)
    try:
        assert holder.poll() is None  # still holding when the second run asks
        with pytest.raises(JobBusyError, match=rf"job j-1 is being run by .*pid {holder.pid}, since"):
            with store.job("j-1").lease():
                pass
        with store.job("j-2").lease():  # another job id is free
            pass
    finally:
        release(holder)
    assert holder.returncode == 0  # it ended by leaving its lease, not by a crash
    with store.job("j-1").lease() as mine:  # released when that run ended
        assert mine["pid"] == __import__("os").getpid()
    assert store.job("j-1").lease_holder() is None and store.job_ids() == []


def test_a_crashed_runs_lease_does_not_block_its_job(tmp_path):
    import time

    store = Store.from_spec(StorageSpec(root=str(tmp_path)))
    holder = lease_held_elsewhere(tmp_path, 600)
    holder.kill()  # SIGKILL: no finally runs, the lease stays behind
    holder.wait()
    assert (tmp_path / "_leases" / "j-1.json").exists()
    with store.job("j-1").lease():  # its holder is gone from this host: taken over at once
        pass
    leases = store.job("_leases")
    leases.write_json("j-1.json", {"owner": "elsewhere:1:x", "host": "another-host", "pid": 1,
                                   "since": "2026-01-01T00:00:00+00:00", "expires": time.time() - 1})
    with store.job("j-1").lease():  # another host's lease past its expiry: taken over
        pass


def test_a_long_run_renews_its_lease(tmp_path):
    import time

    import pytest

    from snp_service.errors import JobBusyError

    store = Store.from_spec(StorageSpec(root=str(tmp_path)))
    with store.job("j-1").lease(seconds=1.0):
        first = store.job("j-1").lease_holder()["expires"]
        deadline = time.monotonic() + 60  # only keeps a broken renewal from hanging the suite

        def renewed_past_first_expiry():
            held = store.job("j-1").lease_holder()
            return held is not None and held["expires"] > first and time.time() > first

        while not renewed_past_first_expiry() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert renewed_past_first_expiry()  # the lease outlived its first expiry by a renewal
        with pytest.raises(JobBusyError):
            with store.job("j-1").lease():
                pass


def test_a_refresh_lists_each_file_once_and_leaves_a_damaged_manifest_alone(tmp_path):
    job = _reported_job(tmp_path)
    job.write_bytes("report/report.html", b"<p>rebuilt</p>")
    assert job.refresh_manifest("report/")
    assert sorted(e["path"] for e in job.manifest()["artefacts"]) == ["report/report.html", "snp/layers.json"]
    assert job.verify() == []
    manifest = tmp_path / "res" / "j-1" / "manifest.json"
    for damaged in (manifest.read_bytes()[:-10],  # truncated: reads as damaged
                    json.dumps({"status": "damaged", "damage": ["x: missing"], "artefacts": []}).encode()):
        manifest.write_bytes(damaged)
        assert not job.refresh_manifest("report/")
        assert manifest.read_bytes() == damaged  # nothing written over the evidence


def test_finished_stages_are_the_markers_only(tmp_path):
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    job.write_json("spec.json", {"name": "x"})
    job.write_json("snp/layers.json", {"x": 1})
    job.write_bytes("stages/notes.txt", b"not a marker")
    job.finish_stage("train", {"key": "k"}, 1.0)
    job.finish_stage("cluster", {"key": "k"}, 1.0)
    assert sorted(job.finished_stages()) == ["cluster", "train"]


def test_a_table_written_where_an_earlier_version_kept_it_is_still_read(tmp_path):
    """Jobs finished before the structure stage keep their structural table in the prune stage's folder:
    reports and `results --table structural` still find it there; a table where it now goes wins."""
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    assert not job.has("structural")
    job.write_table("prune/structural.parquet", pl.DataFrame({"method": ["none"]}))
    assert job.has("structural") and job.table("structural")["method"].to_list() == ["none"]
    job.put_table("structural", pl.DataFrame({"method": ["none", "snp"]}))
    assert job.table("structural")["method"].to_list() == ["none", "snp"]
    assert (tmp_path / "res" / "j-1" / "structure" / "structural.parquet").exists()


def test_entries_a_manifest_cannot_vouch_for_are_damage_and_a_size_mismatch_names_both_sizes(tmp_path):
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    job.write_bytes("a.bin", b"12345")
    job.write_json("manifest.json", {"status": "complete", "artefacts": [
        "a.bin", {"size": 5}, {"path": "a.bin", "size": 7, "sha256": "0" * 64}]})
    assert job.verify() == [": missing", ": missing", "a.bin: 5 bytes, the manifest says 7"]


def test_a_manifest_that_is_not_one_reads_as_damaged(tmp_path):
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    damaged = {"status": "damaged", "damage": ["manifest.json: not a manifest"], "artefacts": []}
    for content in ({"status": "complete"}, {"status": "complete", "artefacts": "a.bin"}, ["artefacts"]):
        job.write_json("manifest.json", content)
        assert job.manifest() == damaged
        assert job.verify() == ["manifest.json: not a manifest"]


def test_a_stage_marker_records_the_stage_and_its_seconds_and_only_finished_markers_count(tmp_path):
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    job.write_bytes("snp/x.bin", b"x")
    job.finish_stage("cluster", {"key": "k1"}, 12.34567, ("snp/",))
    marker = job.stage_result("cluster")
    assert (marker["stage"], marker["seconds"], marker["key"]) == ("cluster", 12.346, "k1")
    assert [e["path"] for e in marker["artefacts"]] == ["snp/x.bin"] and marker["finished"]
    job.write_json("stages/heads.json", {"stage": "heads", "key": "k"})  # never finished
    job.write_json("stages/prune.json", ["finished"])  # not a marker
    assert job.stage_result("heads") is None and job.stage_result("prune") is None


def test_without_a_manifest_an_unreadable_marker_does_not_stop_the_others_being_checked(tmp_path):
    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    job.write_bytes("snp/x.bin", b"x")
    job.finish_stage("cluster", {"key": "k"}, 1.0, ("snp/",))
    job.finish_stage("heads", {"key": "k"}, 1.0)
    (tmp_path / "res" / "j-1" / "stages" / "heads.json").write_bytes(b'{"stage": "hea')  # truncated
    (tmp_path / "res" / "j-1" / "snp" / "x.bin").write_bytes(b"y")
    assert job.manifest() is None and job.stage_result("heads") is None
    assert job.verify() == ["snp/x.bin: content differs from stage cluster's marker's SHA-256"]


def test_the_manifest_records_where_and_by_what_it_was_written_and_hashes_raw_bytes(tmp_path):
    """Provenance in the manifest (job, time, code version, host), and every file hashed as stored: a
    name ending in .gz is not decompressed first (pyarrow's streams detect compression by default)."""
    import gzip
    import platform

    from snp_service.provenance import code_version

    job = Store.from_spec(StorageSpec(root=str(tmp_path / "res"))).job("j-1")
    data = gzip.compress(b"a table, compressed by its writer")
    job.write_bytes("data/table.csv.gz", data)
    m = job.write_manifest({"status": "complete"})
    assert (m["job_id"], m["code_version"], m["host"]) == ("j-1", code_version(), platform.node())
    assert m["written"][:4].isdigit()
    assert m["artefacts"] == [{"path": "data/table.csv.gz", "size": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()}]
    assert job.read_intact("data/table.csv.gz") == data
