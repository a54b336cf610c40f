"""Damaged results (issue 20, item 2): artefacts are checked against the manifest's sizes and
SHA-256; a damaged job is reported as damaged (`results`, `verify`), never takes another job
down, and a re-run recomputes it from the first damaged stage."""

import json

import polars as pl
import pytest

from snp_service.cli import main
from snp_service.spec import StorageSpec
from snp_service.store import Store
from tests.conftest import tiny_job


def _finished(tmp_path, job_id="done-0123456789ab"):
    store = Store.from_spec(StorageSpec(root=str(tmp_path / "results")))
    job = store.job(job_id)
    job.write_json("spec.json", {"name": "done", "model": {"name": "cct_2_3x2_32"}, "dataset": {"name": "x"}})
    job.put_table("layers", pl.DataFrame({"point": ["a", "b"], "snr": [1.0, 2.0]}))
    job.write_bytes("model/weights.pt", b"weights")
    job.finish_stage("snp", {"key": "k"}, 1.0)
    job.write_manifest({"status": "complete"})
    return store, job


def test_intact_and_damaged_jobs_are_told_apart(tmp_path, capsys):
    store, job = _finished(tmp_path)
    assert job.verify() == []
    (tmp_path / "results" / job.job_id / "snp" / "layers.parquet").write_bytes(b"PAR1 garbage")
    (tmp_path / "results" / job.job_id / "model" / "weights.pt").unlink()
    damage = job.verify()
    assert any(d.startswith("snp/layers.parquet") for d in damage) and "model/weights.pt: missing" in damage
    assert main(["verify", "--store", str(tmp_path / "results")]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert main(["results", job.job_id, "--store", str(tmp_path / "results")]) in (1, 2)
    assert "is damaged" in capsys.readouterr().err


def test_a_truncated_manifest_or_marker_takes_no_job_down(tmp_path, capsys):
    store, job = _finished(tmp_path)
    _, other = _finished(tmp_path, "other-0123456789ab")
    base = tmp_path / "results"
    (base / job.job_id / "manifest.json").write_text('{"job_id": "done-01')  # truncated
    (base / other.job_id / "stages" / "snp.json").write_text('{"stage": "sn')
    assert job.manifest()["status"] == "damaged" and job.verify()
    assert other.stage_result("snp") is None  # a damaged marker: the stage runs again
    assert main(["results", "--store", str(base)]) == 0  # the listing survives
    out = capsys.readouterr().out
    assert "damaged" in out and "other-0123456789ab" in out


def test_a_job_without_its_manifest_is_checked_against_its_stage_markers(tmp_path, capsys):
    """As after a re-run interrupted once it deleted the manifest: each finished stage's marker
    records its outputs, so a truncated table is found, the re-run starts at its stage, and `verify`
    says so (issue 30)."""
    from snp_service.pipeline import damaged_from

    store, job = _finished(tmp_path)
    job.finish_stage("cluster", {"key": "k"}, 1.0, ("snp/",))
    job.invalidate_manifest()
    stages = ["data", "train", "evaluate", "measure", "cluster", "heads", "prune", "report"]
    assert damaged_from(job, stages, lambda m: None) == len(stages)  # intact: every finished stage reused
    layers = tmp_path / "results" / job.job_id / "snp" / "layers.parquet"
    layers.write_bytes(layers.read_bytes()[:-40])
    messages = []
    assert damaged_from(job, stages, messages.append) == stages.index("cluster")
    assert "snp/layers.parquet" in messages[0] and "stage cluster's marker" in messages[0]
    assert main(["verify", "--store", str(tmp_path / "results")]) == 1
    out = capsys.readouterr().out
    assert "incomplete" in out and "DAMAGED: snp/layers.parquet" in out


@pytest.mark.parametrize("damaged, content, message", [
    ("spec.json", '{"name": "done", "mod', "spec.json is damaged (not readable JSON"),
    ("spec.json", '["not", "a", "spec"]', "spec.json is damaged (a list, not a job spec)"),
    ("data/classes.json", '{"0": "cat"}', "classes.json is damaged (expected a list of class names"),
])
def test_a_damaged_spec_or_class_list_gives_one_message_and_the_listing_survives(tmp_path, capsys, damaged,
                                                                                 content, message):
    store, job = _finished(tmp_path)
    _, other = _finished(tmp_path, "other-0123456789ab")
    job.write_json("data/classes.json", ["a", "b"])
    (tmp_path / "results" / job.job_id / damaged).write_text(content)
    root = str(tmp_path / "results")
    assert main(["results", "--store", root]) == 0
    out = capsys.readouterr().out
    assert other.job_id in out and (damaged != "spec.json" or "damaged" in out)
    assert main(["report", job.job_id, "--store", root]) == 2
    assert message in capsys.readouterr().err
    if damaged == "spec.json":
        assert main(["compare", job.job_id, other.job_id, "--store", root]) == 2
        assert message in capsys.readouterr().err


def test_folders_that_are_not_jobs_are_not_listed(tmp_path):
    store, job = _finished(tmp_path)
    (tmp_path / "results" / "not-a-job").mkdir()
    (tmp_path / "results" / "etc-like" / "x").mkdir(parents=True)
    assert store.job_ids() == [job.job_id]


@pytest.mark.slow
def test_a_rerun_recomputes_from_the_first_damaged_stage(tmp_path, ray_cluster):
    from snp_service import pipeline
    from snp_service.spec import spec_from_dict

    spec = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 1, "analysis.readout_epochs": 2,
                                                "analysis.bootstrap": 50, "heads.null_draws": 200}))
    first = pipeline.run(spec, progress=lambda m: None)
    job = Store.from_spec(spec.storage).job(first.job_id)
    layers = tmp_path / "results" / first.job_id / "snp" / "layers.parquet"
    layers.write_bytes(layers.read_bytes()[:-40])  # truncated
    messages = []
    again = pipeline.run(spec, progress=messages.append)
    text = "\n".join(messages)
    assert "damaged results: snp/layers.parquet" in text and "from the cluster stage" in text
    assert "train: already finished" in text and "measure: already finished" in text
    assert "cluster: already finished" not in text
    assert job.verify() == [] and again.manifest["status"] == "complete"
    assert json.loads((tmp_path / "results" / first.job_id / "manifest.json").read_text())["status"] == "complete"
    # a re-run interrupted after deleting the manifest, and the table truncated: the cluster stage's
    # marker still finds it (issue 30); before, every stage was reused and a manifest written over it
    job.invalidate_manifest()
    layers.write_bytes(layers.read_bytes()[:-40])
    messages.clear()
    pipeline.run(spec, progress=messages.append)
    text = "\n".join(messages)
    assert "damaged results: snp/layers.parquet" in text and "cluster: already finished" not in text
    assert job.verify() == [] and job.layers().height > 0


# --- issue 33: damage the suite never made (same size, several stages, half-written files)


def test_a_byte_flipped_without_a_size_change_is_found_by_its_sha256(tmp_path, capsys):
    store, job = _finished(tmp_path)
    weights = tmp_path / "results" / job.job_id / "model" / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0x01
    weights.write_bytes(bytes(data))
    assert job.verify() == ["model/weights.pt: content differs from the manifest's SHA-256"]
    assert main(["verify", "--store", str(tmp_path / "results")]) == 1
    with pytest.raises(Exception, match="is damaged"):
        job.read_intact("model/weights.pt")


def test_a_rerun_starts_from_the_first_of_several_damaged_stages(tmp_path):
    """Damage in the heads, prune and cluster stages' outputs (heads/, prune/, snp/: listed in that order,
    by path): the re-run starts at cluster, the earliest in the pipeline, neither the first listed nor
    the last."""
    from snp_service.pipeline import STAGE_OUTPUTS, damaged_from

    store = Store.from_spec(StorageSpec(root=str(tmp_path / "results")))
    job = store.job("several-0123456789ab")
    stages = ["data", "train", "evaluate", "measure", "cluster", "heads", "prune", "report"]
    for stage in stages:
        for prefix in STAGE_OUTPUTS.get(stage, ()):
            job.write_bytes(prefix + "out.bin" if prefix.endswith("/") else prefix, f"{stage} output".encode())
    job.write_manifest({"status": "complete"})
    base = tmp_path / "results" / job.job_id
    for rel in ("prune/out.bin", "snp/out.bin", "heads/out.bin"):
        (base / rel).write_bytes((base / rel).read_bytes()[::-1])  # same size, other content
    assert [d.split(":")[0] for d in job.verify()] == ["heads/out.bin", "prune/out.bin", "snp/out.bin"]
    messages = []
    assert damaged_from(job, stages, messages.append) == stages.index("cluster")
    assert "from the cluster stage" in messages[0]


def test_the_manifest_never_lists_half_written_temporary_files(tmp_path):
    store, job = _finished(tmp_path)
    base = tmp_path / "results" / job.job_id
    (base / "snp" / "layers.parquet.tmp-4242").write_bytes(b"half of a table")  # a writer killed mid-way
    (base / "model" / "weights.pt.tmp-7").write_bytes(b"wei")
    m = job.write_manifest({"status": "complete"})
    listed = {e["path"] for e in m["artefacts"]}
    assert listed == {"spec.json", "snp/layers.parquet", "model/weights.pt", "stages/snp.json"}
    assert job.verify() == []


def test_read_intact_hands_over_only_bytes_a_complete_manifest_vouches_for(tmp_path):
    """A finished job's artefact taken as another job's input (its weights): each refusal names why,
    and the bytes come back only when the complete manifest lists them with this size and SHA-256."""
    from snp_service.errors import DamagedError, StoreError

    store = Store.from_spec(StorageSpec(root=str(tmp_path / "results")))
    job = store.job("w-0123456789ab")
    job.write_bytes("model/weights.pt", b"weights v1")
    job.write_bytes("model/other.pt", b"not listed")
    with pytest.raises(StoreError, match="has not finished .no manifest.json.; run it first") as unfinished:
        job.read_intact("model/weights.pt")
    assert type(unfinished.value) is StoreError  # not reported as damage: the job is only unfinished
    job.write_manifest({"status": "running"})
    with pytest.raises(DamagedError, match=r"is not intact \(status 'running'\); run it again first"):
        job.read_intact("model/weights.pt")
    job.write_manifest({"status": "damaged", "damage": ["a: missing", "b: missing", "c: missing"]})
    with pytest.raises(DamagedError, match=r"is not intact \(a: missing; b: missing\); run it again"):
        job.read_intact("model/weights.pt")
    job.write_manifest({"status": "complete"})
    (tmp_path / "results" / job.job_id / "model" / "other.pt").unlink()
    assert job.read_intact("model/weights.pt") == b"weights v1"
    assert job.read_intact("model/weights.pt", limit=10) == b"weights v1"
    with pytest.raises(StoreError, match="weights.pt"):  # the caller's size limit reaches the read
        job.read_intact("model/weights.pt", limit=9)
    with pytest.raises(DamagedError, match="model/never.pt: not in job w-0123456789ab's manifest"):
        job.read_intact("model/never.pt")
    m = job.manifest()
    job.write_json("manifest.json", {**m, "artefacts": ["model/weights.pt", *m["artefacts"]]})  # a stray entry
    assert job.read_intact("model/weights.pt") == b"weights v1"
    weights = tmp_path / "results" / job.job_id / "model" / "weights.pt"
    weights.write_bytes(b"weights v2")  # same size, other bytes
    with pytest.raises(DamagedError, match=r"is damaged \(10 bytes, the manifest says 10; or another SHA-256\)"):
        job.read_intact("model/weights.pt")
    weights.write_bytes(b"weights v1 longer")
    with pytest.raises(DamagedError, match=r"is damaged \(17 bytes, the manifest says 10;"):
        job.read_intact("model/weights.pt")
