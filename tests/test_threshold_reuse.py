"""A job that changes only analysis.threshold (or normalise, or the candidate order) reuses the
measure stage of a finished job: capture, readouts, fields, raw SNP matrices and label-dependence
tests are copied, only the cluster stage and those after it run, and the results equal those of
the same job run from scratch (issue 27). Also: which spec fields each stage's key reads."""

import pytest

from snp_service import pipeline
from snp_service.pipeline import stage_key
from snp_service.spec import spec_from_dict
from snp_service.store import Store
from tests.conftest import tiny_job

MEASURE_FILES = ("mean_fields", "label_counts", "node_label_accuracy", "readout", "measured")


def _keys(job: dict) -> dict[str, str]:
    spec = spec_from_dict(job)
    return {s: stage_key(spec.model_dump(mode="json"), s) for s in pipeline.STAGE_INPUTS}


@pytest.mark.parametrize("change", [{"analysis.threshold": 0.5}, {"analysis.normalise": "centred"},
                                    {"analysis.candidate_order": "label"}])
def test_mask_fields_leave_the_measure_key_and_change_the_later_ones(tmp_path, change):
    base, other = _keys(tiny_job(tmp_path)), _keys(tiny_job(tmp_path, **change))
    assert [s for s in base if base[s] == other[s]] == ["data", "train", "load", "evaluate", "measure"]


def test_readout_settings_change_the_measure_key_not_the_train_key(tmp_path):
    base = _keys(tiny_job(tmp_path))
    for change in ({"analysis.readout_solver": "adam"}, {"analysis.readout_pool_epochs": 3}):
        other = _keys(tiny_job(tmp_path, **change))
        assert other["train"] == base["train"] and other["measure"] != base["measure"]


def test_interval_settings_change_only_the_cluster_and_report_keys(tmp_path):
    base, other = _keys(tiny_job(tmp_path)), _keys(tiny_job(tmp_path, **{"analysis.bootstrap": 77}))
    assert sorted(s for s in base if base[s] != other[s]) == ["cluster", "report"]


@pytest.mark.slow
def test_a_threshold_change_reuses_the_measure_stage_and_equals_a_fresh_run(tmp_path, ray_cluster):
    settings = {"train.epochs": 1, "analysis.bootstrap": 50, "heads.null_draws": 200}
    first = spec_from_dict(tiny_job(tmp_path, **settings))
    pipeline.run(first, progress=lambda m: None)
    second = spec_from_dict(tiny_job(tmp_path, **settings, **{"analysis.threshold": 0.5}))
    messages = []
    pipeline.run(second, progress=messages.append)
    text = "\n".join(messages)
    for stage in ("train", "evaluate", "measure"):
        assert f"{stage}: same inputs as job {first.job_id()}" in text, stage
    assert "cluster: same inputs" not in text and any(m.startswith("cluster: ") for m in messages)
    assert not any(m.startswith("measure: ") and "readout acc" in m for m in messages)  # nothing measured again
    store = Store.from_spec(second.storage)
    reused = store.job(second.job_id())
    assert reused.stage_result("measure")["reused_from"] == first.job_id()

    fresh_spec = spec_from_dict(tiny_job(tmp_path, **settings, **{"analysis.threshold": 0.5,
                                                                  "storage": {"root": str(tmp_path / "fresh")}}))
    pipeline.run(fresh_spec, progress=lambda m: None)
    fresh = Store.from_spec(fresh_spec.storage).job(fresh_spec.job_id())
    assert fresh.job_id == reused.job_id and fresh.stage_result("measure").get("reused_from") is None
    drop = ["seconds"]
    assert reused.layers().drop(drop).equals(fresh.layers().drop(drop))
    assert reused.layers()["threshold"].to_list() == [0.5] * reused.layers().height
    for p in second.selected_points():
        for what in ("nodes", "dependence"):
            assert reused.read_point(p, what).equals(fresh.read_point(p, what)), (p, what)
        assert (reused.read_point(p, "snp_matrices") == fresh.read_point(p, "snp_matrices")).all()
    assert reused.table("heads").drop("seconds", strict=False).equals(fresh.table("heads").drop("seconds", strict=False))


def test_every_point_file_lies_in_one_stage_s_outputs():
    """A stage copied from another job brings every per-point file it wrote: each point file's folder
    is exactly one stage's output prefix (measure/ for the measure stage's, snp/ for the cluster's)."""
    from snp_service.store import POINT_FILES

    owners = {name: [s for s, prefixes in pipeline.STAGE_OUTPUTS.items() if f"{folder}/" in prefixes]
              for name, (folder, _) in POINT_FILES.items()}
    assert all(len(o) == 1 for o in owners.values()), owners
    measured = {n for n, o in owners.items() if o == ["measure"]}
    assert {"mean_fields", "label_counts", "dependence", "readout", "measured", "staged_prune"} <= measured
    assert not measured & {"snp_matrices", "snp_raw", "nodes"}
