"""Bounded capture (issue 18): points are captured in groups that fit compute.feature_budget_gb and
released before the next, giving the same results as one capture of everything; and the snp stage's
capture serves the prune stage's work (the same rows as a separate prune capture)."""

import os

import pytest
import torch

from snp_service import actors
from snp_service.actors import feature_bytes, measure_points, point_groups, prune_points
from snp_service.spec import spec_from_dict
from tests.conftest import tiny_job


def _spec(tmp, **extra):
    return spec_from_dict(tiny_job(tmp, **{"analysis.readout_epochs": 2, "analysis.bootstrap": 50,
                                           **extra}))


def test_groups_fit_the_budget_and_keep_forward_order(tmp_path):
    spec = _spec(tmp_path)
    points, info = spec.selected_points(), spec.points()
    sizes = {p: feature_bytes(info[p], 1000) for p in points}
    budget = max(sizes.values()) + 1
    spec = _spec(tmp_path, **{"compute.feature_budget_gb": budget / 2**30})
    groups = point_groups(spec, points, 1000)
    assert [p for g in groups for p in g] == points
    assert all(sum(sizes[p] for p in g) <= budget for g in groups) and len(groups) > 1
    tiny = _spec(tmp_path, **{"compute.feature_budget_gb": 1e-9})
    assert point_groups(tiny, points, 1000) == [[p] for p in points]  # a point over the budget goes alone


def test_one_group_at_a_time_on_disk_and_the_same_results(tmp_path, monkeypatch):
    monkeypatch.setenv("SNP_FEATURES_DIR", str(tmp_path / "features"))
    (tmp_path / "features").mkdir()
    big = _spec(tmp_path)
    small = _spec(tmp_path, **{"compute.feature_budget_gb": 1e-9})
    torch.manual_seed(0)
    weights = big.model.build(4, 32).state_dict()
    points = big.selected_points()
    seen = []
    real_capture = actors.capture

    def spying_capture(model, dataset, group, directory, **kw):
        seen.append(sorted(os.listdir(tmp_path / "features")))  # feature folders alive at this moment
        return real_capture(model, dataset, group, directory, **kw)

    monkeypatch.setattr(actors, "capture", spying_capture)
    a = measure_points(small, weights, points)
    assert max(len(s) for s in seen) == 1  # never two groups' folders at once
    b = measure_points(big, weights, points)
    for p in points:
        for k, v in a[p].row.items():
            if k != "seconds":
                assert v == b[p].row[k] or (v != v and b[p].row[k] != b[p].row[k]), (p, k)
        assert torch.equal(a[p].field_sums, b[p].field_sums)
    assert not os.listdir(tmp_path / "features")  # everything released


def test_the_snp_capture_does_the_prune_work_as_a_separate_capture_would(tmp_path):
    spec = _spec(tmp_path, **{"pruning.enabled": True, "pruning.finetune_epochs": 1,
                              "pruning.curve_thresholds": [0.3], "pruning.points": ["blocks.0.mlp.hidden"],
                              "pruning.structural_fraction": 0.5})
    torch.manual_seed(0)
    weights = spec.model.build(4, 32).state_dict()
    points = spec.selected_points()
    shared = measure_points(spec, weights, points)
    plan = actors.prune_plan(spec)
    assert plan["blocks.0.mlp.hidden"] is True and plan["blocks.0.attn.heads"] is False  # structural only
    assert {p for p in points if shared[p].pruned is not None} == set(plan)
    inputs = {p: {"readout": shared[p].readout.state_dict(), "raw": shared[p].raw_matrices(spec.analysis.normalise).numpy(),
                  "andc": plan[p]} for p in plan}
    separate = prune_points(spec, weights, list(plan), inputs)
    for p in plan:
        assert shared[p].pruned["rows"] == separate[p]["rows"]
        assert (shared[p].pruned["selection_raw"] == separate[p]["selection_raw"]).all()
    assert shared["blocks.0.attn.heads"].pruned["rows"] == []


# --- extreme compute.feature_budget_gb (issue 30, item 7) -------------------------------------------

@pytest.mark.parametrize("value, says", [(0, "greater than 0"), (-1, "greater than 0"),
                                         (10_000.5, "less than or equal"), (".nan", "finite"), (".inf", "finite"),
                                         ("true", "number"), ("'4GB'", "number")])
def test_a_feature_budget_outside_its_range_is_refused_before_anything_runs(tmp_path, capsys, value, says):
    import yaml

    from snp_service.cli import main

    path = tmp_path / "job.yaml"
    text = yaml.safe_dump(tiny_job(tmp_path, **{"compute.feature_budget_gb": 1.0}))
    path.write_text(text.replace("feature_budget_gb: 1.0", f"feature_budget_gb: {value}"))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "compute.feature_budget_gb" in err and says in err and "Traceback" not in err, err
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()  # refused before compute


@pytest.mark.parametrize("budget", [5e-324, 1e-9, 10_000.0])
def test_the_extreme_budgets_are_accepted_and_reported(tmp_path, capsys, budget):
    import yaml

    from snp_service.cli import main

    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path, **{"compute.feature_budget_gb": budget})))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"compute.feature_budget_gb {budget:g})" in out
    spec = _spec(tmp_path, **{"compute.feature_budget_gb": budget})
    groups = point_groups(spec, spec.selected_points(), sum(spec.dataset.known_sizes()))  # this job's images
    assert [p for g in groups for p in g] == spec.selected_points()  # every point, each exactly once
    assert len(groups) == (1 if budget == 10_000.0 else len(spec.selected_points()))


@pytest.mark.slow
def test_extreme_feature_budgets_measure_every_point_and_give_the_default_budgets_tables(tmp_path, ray_cluster):
    """End to end (a job loading fixed weights, so every run measures the same network): the smallest
    positive budget (each point captured alone), 1e-9, and the largest allowed (every point in one
    capture) give the layers table of the default budget, value for value."""
    from polars.testing import assert_frame_equal

    from snp_service import pipeline
    from snp_service.store import Store

    weights = tmp_path / "weights.pth"
    torch.manual_seed(0)
    torch.save(_spec(tmp_path).build_model(4).state_dict(), weights)
    tables = {}
    for budget in (4.0, 5e-324, 1e-9, 10_000.0):
        spec = _spec(tmp_path, **{"model.weights": str(weights), "compute.feature_budget_gb": budget,
                                  "storage.root": str(tmp_path / f"results-{budget:g}")})
        outcome = pipeline.run(spec, progress=lambda m: None)
        layers = Store.from_spec(spec.storage).job(outcome.job_id).layers()
        assert layers["point"].to_list() == spec.selected_points()  # every point measured, once
        tables[budget] = layers.drop("seconds")
    for budget, table in tables.items():
        try:
            assert_frame_equal(table, tables[4.0])
        except AssertionError as e:
            raise AssertionError(f"compute.feature_budget_gb {budget:g}: {e}") from None
