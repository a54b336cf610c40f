"""A job that changes only analysis.threshold (or normalise, the candidate order or the cluster
solver's time limit) reuses the measure stage of a finished job: capture, readouts, fields, their
per-label sums and the label-dependence tests and statistics are copied, only the cluster stage and
those after it run, and the results equal those of the same job run from scratch (issue 27). Also:
which spec fields each stage's key reads."""

import pytest

from snp_service import pipeline
from snp_service.spec import STAGE_INPUTS, stage_key
from snp_service.spec import spec_from_dict
from snp_service.store import Store
from tests.conftest import tiny_job

# the quickstart's stage keys (dataset root set to /fixed/quickstart: keys read the path) as the code
# before the split computed them (main at 8ac0aed and at 1fc5d07)
BEFORE_SPLIT = {"snp": "7d3b972ce071f4a2", "train": "6afccdace7f10445", "heads": "2f7b9370c057d7d0",
                "prune": "f482d86d3c7fbc29", "report": "2cab2f3052a284e7"}
MEASURE_FILES = ("field_sums", "label_counts", "node_label_accuracy", "dependence", "readout", "measured")


def _keys(job: dict) -> dict[str, str]:
    spec = spec_from_dict(job)
    return {s: stage_key(spec.model_dump(mode="json"), s) for s in STAGE_INPUTS}


@pytest.mark.parametrize("change", [{"analysis.threshold": 0.5}, {"analysis.normalise": "centred"},
                                    {"analysis.candidate_order": "label"}, {"analysis.cluster_time_limit_s": 10.0}])
def test_mask_fields_leave_the_measure_key_and_change_the_later_ones(tmp_path, change):
    base, other = _keys(tiny_job(tmp_path)), _keys(tiny_job(tmp_path, **change))
    assert [s for s in base if base[s] == other[s]] == ["data", "train", "load", "evaluate", "measure", "structure"]


def test_readout_settings_change_the_measure_key_not_the_train_key(tmp_path):
    base = _keys(tiny_job(tmp_path))
    for change in ({"analysis.readout_solver": "lbfgs"}, {"analysis.readout_pool_epochs": 3},
                   {"analysis.readout_epochs": 7}):
        other = _keys(tiny_job(tmp_path, **change))
        assert other["train"] == base["train"] and other["measure"] != base["measure"]


@pytest.mark.parametrize("change", [{"analysis.fdr": 0.1}, {"analysis.bootstrap": 77},
                                    {"analysis.confidence": 0.9}])
def test_label_dependence_settings_change_the_measure_key(tmp_path, change):
    """The label-specific fraction (at fdr) and its intervals (bootstrap, confidence) are computed in the
    measure stage, where the per-node tests are: these settings measure again, the network is reused."""
    base, other = _keys(tiny_job(tmp_path)), _keys(tiny_job(tmp_path, **change))
    assert [s for s in base if base[s] == other[s]] == ["data", "train", "load", "evaluate"]


def test_the_readout_solver_at_its_default_leaves_ids_and_keys_as_they_were(tmp_path):
    """analysis.readout_solver: adam and readout_pool_epochs: 2 (the defaults) are left out of job ids
    and stage keys, written out or not; lbfgs is another job that keeps the trained network."""
    base = spec_from_dict(tiny_job(tmp_path))
    same = spec_from_dict(tiny_job(tmp_path, **{"analysis.readout_solver": "adam", "analysis.readout_pool_epochs": 2}))
    solved = spec_from_dict(tiny_job(tmp_path, **{"analysis.readout_solver": "lbfgs"}))
    assert base.job_id() == same.job_id() != solved.job_id()
    assert _keys(tiny_job(tmp_path)) == _keys(tiny_job(tmp_path, **{"analysis.readout_solver": "adam"}))


def test_the_single_snp_stage_s_key_is_the_cluster_stage_s_and_later_keys_are_unchanged():
    """Jobs finished before issue 27 recorded one `snp` stage; its key read exactly what the cluster
    stage's reads (the solver's fields at their defaults are left out), so stage_key(spec, "snp") is
    the cluster stage's key, and the train, heads, prune and report keys are those of before the split."""
    import yaml

    from tests.conftest import REPO

    spec = spec_from_dict(yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())).model_dump(mode="json")
    spec["dataset"]["root"] = "/fixed/quickstart"
    assert stage_key(spec, "cluster") == BEFORE_SPLIT["snp"]
    assert {s: stage_key(spec, s) for s in BEFORE_SPLIT} == BEFORE_SPLIT


@pytest.mark.slow
def test_a_threshold_change_reuses_the_measure_stage_and_equals_a_fresh_run(tmp_path, ray_cluster):
    settings = {"train.epochs": 1, "analysis.bootstrap": 50, "heads.null_draws": 200, "pruning.enabled": True,
                "pruning.finetune_epochs": 1, "pruning.curve_thresholds": [0.5], "pruning.structural_fraction": 0.5}
    first = spec_from_dict(tiny_job(tmp_path, **settings))
    pipeline.run(first, progress=lambda m: None)
    second = spec_from_dict(tiny_job(tmp_path, **settings, **{"analysis.threshold": 0.5}))
    messages = []
    pipeline.run(second, progress=messages.append)
    text = "\n".join(messages)
    for stage in ("train", "evaluate", "measure", "structure"):  # structural pruning reads no threshold
        assert f"{stage}: same inputs as job {first.job_id()}" in text, stage
    assert "prune: same inputs" not in text  # the ANDC masks follow analysis.threshold: pruned again
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
    assert reused.table("structural").equals(store.job(first.job_id()).table("structural"))  # copied
    timing = [c for c in fresh.table("structural").columns if c.startswith("latency")]
    assert reused.table("structural").drop(timing).equals(fresh.table("structural").drop(timing))


def test_every_point_file_lies_in_one_stage_s_outputs():
    """A stage copied from another job brings every per-point file it wrote: each point file's folder
    is exactly one stage's output prefix (measure/ for the measure stage's, snp/ for the cluster's)."""
    from snp_service.store import POINT_FILES

    owners = {name: [s for s, prefixes in pipeline.STAGE_OUTPUTS.items() if f"{folder}/" in prefixes]
              for name, (folder, _) in POINT_FILES.items()}
    assert all(len(o) == 1 for o in owners.values()), owners
    measured = {n for n, o in owners.items() if o == ["measure"]}
    assert set(MEASURE_FILES) | {"staged_prune"} <= measured
    assert not measured & {"snp_matrices", "snp_raw", "nodes"}


def test_the_pruning_work_s_key_reads_the_threshold_its_masks_are_chosen_at(tmp_path):
    """With pruning.threshold set, analysis.threshold does not choose the ANDC masks: a job changing only
    it takes over the prune work done on the measure stage's capture. With pruning.threshold unset the
    masks follow analysis.threshold, and the key is the one jobs recorded before (pinned by its formula)."""
    import hashlib
    import json

    from snp_service.spec import CLUSTER_FIELDS

    def key(**change):
        return pipeline.pruning_key(spec_from_dict(tiny_job(tmp_path, **change)))

    fixed = {"pruning.threshold": 0.3}
    assert key(**fixed) == key(**fixed, **{"analysis.threshold": 0.5})
    assert key(**fixed) != key(**{"pruning.threshold": 0.4})
    assert key() != key(**{"analysis.threshold": 0.5})
    spec = spec_from_dict(tiny_job(tmp_path))
    before = {"pruning": spec.pruning.model_dump(mode="json"),
              "analysis": {k: getattr(spec.analysis, k) for k in CLUSTER_FIELDS}}
    assert key() == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert key(**fixed) != key(**fixed, **{"analysis.normalise": "centred"})  # still read by the masks
