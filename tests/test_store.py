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


def test_stages_are_recorded(tmp_path):
    store = Store.from_spec(StorageSpec(root=str(tmp_path)))
    job = store.job("j-2")
    assert job.stage_result("train") is None
    job.finish_stage("train", {"eval_accuracy": 0.5}, 1.25)
    assert job.stage_result("train")["eval_accuracy"] == 0.5
    assert store.job_ids() == []  # a folder is a job once its spec.json is written (the run's first write)
    job.write_json("spec.json", {"name": "j"})
    assert store.job_ids() == ["j-2"]
