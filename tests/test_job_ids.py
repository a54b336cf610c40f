"""Job ids are content hashes of what changes results: a refactor must not change any. These ids
were computed before the structure change of issue 16 (old code: study.variants, sweep.trial_spec,
compare.variants) and are pinned here, so a finished job is still found and reused.
Re-pinned once by the label-dependence change (issue 25), which is not a refactor: the analysis
section gained `fdr` and `candidate_order` and lost `null_permutations`, so every job's snp results
differ and its id with them (the train stage's key is unchanged: trained networks are still reused)."""

import yaml

from snp_service import sweep
from snp_service.spec import load_spec, spec_from_dict
from tests.conftest import REPO


def test_the_quickstart_and_its_derived_jobs_keep_their_ids(monkeypatch):
    monkeypatch.chdir(REPO)  # the dataset root counts by its path relative to the working directory
    s = load_spec(REPO / "jobs" / "quickstart.yaml")
    assert s.job_id() == "quickstart-c108a585f438"
    assert [v.job_id() for v in s.heads_jobs([2, 4])] == [
        "quickstart-h2-e42151761526", "quickstart-h4-a2ce627af507"]
    assert [sweep.trial_spec(s, o).job_id() for o in ({"num_heads": 4, "threshold": 0.5}, {"lr": 0.01})] == [
        "quickstart-n4-t0.5-e3835dfa06fd", "quickstart-l0.01-cbb93b89117d"]
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    d["pruning"] = {"enabled": True}
    d["compare"] = {"seeds": [0, 1], "models": [{"label": "vgg", "model": {"name": "vgg11_bn"},
                                                 "train": {"lr": 0.01}}, {"label": "cct"}]}
    assert [v.job_id() for _, _, v in spec_from_dict(d).compare_jobs()] == [
        "quickstart-vgg-s0-080f02387c18", "quickstart-cct-s0-73582a0302b3", "quickstart-vgg-s1-2934375f2398",
        "quickstart-cct-s1-82abea948e14"]


def test_settings_that_change_results_only_by_noise_or_placement_keep_ids_and_stage_keys(monkeypatch):
    """train.compile, compute.* (GPUs per actor, feature budget): same job id, same stage keys."""
    from snp_service.spec import STAGE_INPUTS, stage_key

    monkeypatch.chdir(REPO)
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    base = spec_from_dict(d)
    d["train"]["compile"] = True
    d["compute"] = {**d["compute"], "snp_gpus_per_actor": 0.5, "feature_budget_gb": 1.0}
    other = spec_from_dict(d)
    assert other.job_id() == base.job_id() == "quickstart-c108a585f438"
    a, b = base.model_dump(mode="json"), other.model_dump(mode="json")
    assert all(stage_key(a, s) == stage_key(b, s) for s in STAGE_INPUTS)


def test_the_label_blind_control_changes_the_id_and_the_keys_only_when_on(monkeypatch):
    """dataset.random_labels: false (the default, or written out) keeps every id and stage key; true
    is another job whose every stage runs afresh (its network learns other labels)."""
    from snp_service.spec import STAGE_INPUTS, stage_key

    monkeypatch.chdir(REPO)
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    base = spec_from_dict(d)
    d["dataset"]["random_labels"] = False
    same = spec_from_dict(d)
    d["dataset"]["random_labels"] = True
    blind = spec_from_dict(d)
    assert same.job_id() == base.job_id() == "quickstart-c108a585f438" != blind.job_id()
    a, b, c = (s.model_dump(mode="json") for s in (base, same, blind))
    assert all(stage_key(a, s) == stage_key(b, s) != stage_key(c, s) for s in STAGE_INPUTS if s != "load")


def test_the_cluster_solvers_time_limit_enters_the_id_and_the_analysis_keys_only_off_its_default(monkeypatch):
    from snp_service.spec import stage_key

    monkeypatch.chdir(REPO)
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    base = spec_from_dict(d)
    d["analysis"] = {"cluster_time_limit_s": 1.0}
    same = spec_from_dict(d)
    d["analysis"] = {"cluster_time_limit_s": 10.0}
    longer = spec_from_dict(d)
    assert same.job_id() == base.job_id() == "quickstart-c108a585f438" != longer.job_id()
    a, b, c = (s.model_dump(mode="json") for s in (base, same, longer))
    assert stage_key(a, "snp") == stage_key(b, "snp") != stage_key(c, "snp")
    assert stage_key(a, "train") == stage_key(c, "train")  # the trained network is reused


def test_ids_and_stage_keys_of_finished_jobs_forms_are_pinned(monkeypatch):
    """Issue 28: job ids and stage keys come from one rule (spec.identity_content). These values were
    computed by the code before it (main at fcaee0e, where job_id and stage_key each normalised the
    spec): the quickstart with settings that enter the id off their defaults, and the stage keys of
    the forms stored jobs have: a text dataset, model.weights counted by its SHA-256, and a spec.json
    written before the workdir, compute and the readout solver's and cluster solver's fields existed."""
    import copy

    from snp_service.spec import stage_key

    monkeypatch.chdir(REPO)
    d = yaml.safe_load((REPO / "jobs" / "quickstart.yaml").read_text())
    ids = {}
    for label, (section, field, value) in {"num_workers": ("compute", "num_workers", 2),
                                           "eval_every": ("train", "eval_every", 2),
                                           "lbfgs": ("analysis", "readout_solver", "lbfgs"),
                                           "random_labels": ("dataset", "random_labels", True)}.items():
        changed = copy.deepcopy(d)
        changed.setdefault(section, {})[field] = value
        ids[label] = spec_from_dict(changed).job_id()
    assert ids == {"num_workers": "quickstart-f4ca3599938f", "eval_every": "quickstart-b4b200708e1a",
                   "lbfgs": "quickstart-29741038d585", "random_labels": "quickstart-7a487d6522d5"}
    base = spec_from_dict(d).model_dump(mode="json")
    text = copy.deepcopy(base)
    text["dataset"] = {**text["dataset"], "name": "text", "synthetic": None, "subset": "banking77", "max_length": 32}
    text["model"] = {**text["model"], "name": "text_cct_2_k2"}
    weights = copy.deepcopy(base)
    weights["model"]["weights"] = "/elsewhere/model.pth"
    stored = {k: v for k, v in base.items() if k not in ("workdir", "compute")}
    # without a workdir a root hashes as the absolute path it is: one that is the same in every checkout
    stored["dataset"] = {**stored["dataset"], "root": "/data/quickstart"}
    stored["analysis"] = {k: v for k, v in stored["analysis"].items()
                          if k not in ("readout_solver", "readout_pool_epochs", "cluster_time_limit_s")}
    stages = ("data", "train", "load", "evaluate", "measure", "cluster", "heads", "prune", "report", "snp")
    keys = {name: " ".join(stage_key(spec_json, s, digest)[:8] for s in stages)
            for name, spec_json, digest in (("quickstart", base, None), ("text", text, None),
                                            ("weights", weights, "0" * 64), ("stored", stored, None))}
    assert keys == {
        "quickstart": "5a4171b1 78b8219f 1c1bfd8a 78b8219f 3d46f9c1 0acdf152 272c8566 cd94c306 6a3a134e 0acdf152",
        "text": "4f7153b1 d8cc4702 333d88c4 d8cc4702 07403691 dec2c753 05727441 669f5518 974de63d dec2c753",
        "weights": "5a4171b1 5acbac68 3e5602d3 5acbac68 94090a7f 52252ef0 fd88c8a3 e0a88bf0 ca86b696 52252ef0",
        "stored": "4ac02b60 743f3cf1 1c1bfd8a 743f3cf1 8a04a8d7 6de2c269 3324a803 bb965ec0 54fda082 6de2c269"}
