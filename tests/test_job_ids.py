"""Job ids are content hashes of what changes results: a refactor must not change any. These ids
were computed before the structure change of issue 16 (old code: study.variants, sweep.trial_spec,
compare.variants) and are pinned here, so a finished job is still found and reused."""

import yaml

from snp_service import sweep
from snp_service.spec import load_spec, spec_from_dict
from tests.conftest import REPO


def test_the_quickstart_and_its_derived_jobs_keep_their_ids(monkeypatch):
    monkeypatch.chdir(REPO)  # the dataset root counts by its path relative to the working directory
    s = load_spec(REPO / "jobs" / "quickstart.yaml")
    assert s.job_id() == "quickstart-b0c9e520d390"
    assert [v.job_id() for v in s.heads_jobs([2, 4])] == [
        "quickstart-h2-96942e6c9017", "quickstart-h4-48241947e745"]
    assert [sweep.trial_spec(s, o).job_id() for o in ({"num_heads": 4, "threshold": 0.5}, {"lr": 0.01})] == [
        "quickstart-n4-t0.5-6c5b86303157", "quickstart-l0.01-5be5dea89bdd"]
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    d["pruning"] = {"enabled": True}
    d["compare"] = {"seeds": [0, 1], "models": [{"label": "vgg", "model": {"name": "vgg11_bn"},
                                                 "train": {"lr": 0.01}}, {"label": "cct"}]}
    assert [v.job_id() for _, _, v in spec_from_dict(d).compare_jobs()] == [
        "quickstart-vgg-s0-aff768fa5d71", "quickstart-cct-s0-2fd66c5a1892", "quickstart-vgg-s1-2ba7b87c4906",
        "quickstart-cct-s1-b218b0c928ea"]


def test_settings_that_change_results_only_by_noise_or_placement_keep_ids_and_stage_keys(monkeypatch):
    """train.compile, compute.* (GPUs per actor, feature budget): same job id, same stage keys."""
    from snp_service.pipeline import STAGE_INPUTS, stage_key

    monkeypatch.chdir(REPO)
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    base = spec_from_dict(d)
    d["train"]["compile"] = True
    d["compute"] = {**d["compute"], "snp_gpus_per_actor": 0.5, "feature_budget_gb": 1.0}
    other = spec_from_dict(d)
    assert other.job_id() == base.job_id() == "quickstart-b0c9e520d390"
    a, b = base.model_dump(mode="json"), other.model_dump(mode="json")
    assert all(stage_key(a, s) == stage_key(b, s) for s in STAGE_INPUTS)
