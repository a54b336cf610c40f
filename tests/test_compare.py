"""The unified study (snp_service.compare): the spec's compare section, the pure tables, and one
small end-to-end comparison of a CNN and a CCT with two seeds through the real pipeline."""

import copy
import math

import polars as pl
import pytest
import yaml

from snp_service import compare, studies
from snp_service.errors import SpecError, StoreError
from snp_service.spec import load_spec, spec_from_dict
from tests.conftest import REPO, SHARED_CIFAR10, tiny_job

VGG = {"label": "vgg", "model": {"name": "vgg11_bn"}, "train": {"optimizer": "sgd", "lr": 0.05},
       "measure": {"points": ["features.2", "features.13", "features.27"]}}


def _compare_job(tmp, seeds=(0, 1), **extra) -> dict:
    job = tiny_job(tmp, **{"analysis.readout_epochs": 3, "analysis.bootstrap": 50, "heads.null_draws": 200,
                           "train.epochs": 2, **extra})
    job["compare"] = {"seeds": list(seeds), "models": [copy.deepcopy(VGG), {"label": "cct"}]}  # tests edit it
    return job


def test_compare_section_expands_into_one_job_per_model_and_seed(tmp_path):
    spec = spec_from_dict(_compare_job(tmp_path, seeds=(3, 5)))
    runs = spec.compare_jobs()
    assert [(label, seed) for label, seed, _ in runs] == [("vgg", 3), ("cct", 3), ("vgg", 5), ("cct", 5)]
    vgg, cct = runs[0][2], runs[1][2]
    assert vgg.name == "tiny-vgg-s3" and vgg.model.name == "vgg11_bn" and vgg.train.optimizer == "sgd"
    assert vgg.train.seed == 3 and vgg.train.epochs == 2  # merged field by field: the rest is the base's
    assert vgg.selected_points() == ["features.2", "features.13", "features.27"]
    assert cct.model == spec.model and cct.compare is None
    assert len({v.job_id() for _, _, v in runs}) == 4
    # the comparison does not change the base job's own id
    plain = _compare_job(tmp_path)
    plain.pop("compare")
    assert spec_from_dict(plain).job_id() == spec.job_id()


@pytest.mark.parametrize("change, message", [
    (lambda j: j["compare"]["models"].append({"label": "vgg"}), "labels must be unique"),
    (lambda j: j["compare"].update(seeds=[1, 1]), "seeds must be unique"),
    (lambda j: j["compare"]["models"][1].update(analysis={"threshold": 0.5}), "shared by every model"),
    (lambda j: j["compare"]["models"][0].update(pruning={"structural_fraction": 0.5}),
     "compare model 'vgg' (seed 0)"),
    (lambda j: j["compare"]["models"][0].update(model={"name": "resnet51"}), "unknown model 'resnet51'"),
    (lambda j: j.update(sweep={"threshold": [0.2, 0.4]}), "compare and sweep exclude each other"),
])
def test_bad_compare_sections_are_refused_naming_the_problem(tmp_path, change, message):
    job = _compare_job(tmp_path)
    change(job)
    with pytest.raises(SpecError, match="compare") as e:
        spec_from_dict(job, "job.yaml")
    assert message in str(e.value)


@pytest.mark.skipif(not SHARED_CIFAR10.exists(), reason="needs the real CIFAR-10 archive in ../shared/datasets")
def test_the_shipped_unified_job_is_valid_and_pairs_a_cnn_with_a_cct():
    spec = load_spec(REPO / "jobs" / "unified_cifar10.yaml")
    runs = spec.compare_jobs()
    assert {v.model.name for _, _, v in runs} == {"vgg11_bn", "cct_2_3x2_32"}
    assert spec.compare.seeds == [0, 1, 2] and len(runs) == 6
    assert len({(v.dataset, v.analysis.threshold) for _, _, v in runs}) == 1


def _layers(snr, lo, hi, points=("a", "b", "c"), kind="conv", readout="flatten", effect=None):
    n = len(points)
    kinds = kind if isinstance(kind, list) else [kind] * n
    readouts = readout if isinstance(readout, list) else [readout] * n
    effect = [float(v) for v in (effect if effect is not None else snr)]
    return pl.DataFrame({"point": list(points), "kind": kinds, "readout": readouts, "readout_accuracy": [0.5] * n,
                         "label_specific_fraction": [0.9] * n, "effect_size": effect,
                         "effect_size_lo": [v - 0.01 for v in effect], "effect_size_hi": [v + 0.01 for v in effect],
                         "mean_cluster_size": [2.0] * n, "mean_noise": [1.0] * n, "noise_per_label": [0.5] * n,
                         "snr": snr, "frac_no_cluster": [0.1] * n, "greedy_fraction": [0.0] * n, "snr_lo": lo,
                         "snr_hi": hi, "mean_node_accuracy": [0.2] * n})


def test_depth_table_places_points_between_0_and_1_in_forward_order():
    t = compare.depth_table("m", 0, _layers([1, 2], [0, 1], [2, 3], points=("b", "d")), ["a", "b", "c", "d", "e"], "CNN")
    assert t["relative_depth"].to_list() == [0.25, 0.75]
    assert t["family"].to_list() == ["CNN", "CNN"] and t["seed"].to_list() == [0, 0]
    with pytest.raises(StoreError, match="not points of the model"):
        compare.depth_table("m", 0, _layers([1], [0], [2], points=("z",)), ["a", "b"], "CNN")


def test_aggregate_gives_mean_and_spread_over_seeds():
    pts = ["a", "b", "c"]
    runs = pl.concat([compare.depth_table("m", 0, _layers([1.0, 2.0, 3.0], [0.9, 1.9, 2.9], [1.1, 2.1, 3.1]), pts, "CCT"),
                      compare.depth_table("m", 1, _layers([2.0, 2.0, 5.0], [1.9, 1.9, 4.9], [2.1, 2.1, 5.1]), pts, "CCT")])
    agg = compare.aggregate(runs)
    assert agg["seeds"].to_list() == [2, 2, 2]
    assert agg["snr"].to_list() == [1.5, 2.0, 4.0]
    assert agg["snr_sd"].to_list() == pytest.approx([math.sqrt(0.5), 0.0, math.sqrt(2.0)])
    # the interval is for the mean over seeds (t, 1 degree of freedom), never averaged bootstrap endpoints
    assert "snr_lo" not in agg.columns
    half = 12.706204736174707 * math.sqrt(0.5) / math.sqrt(2)
    assert agg["snr_seed_lo"][0] == pytest.approx(1.5 - half) and agg["snr_seed_hi"][0] == pytest.approx(1.5 + half)
    one = compare.aggregate(runs.filter(pl.col("seed") == 0))
    assert all(math.isnan(v) for v in one["snr_seed_lo"].to_list())  # one seed: no interval is invented


def _runs(per_seed):
    return pl.concat([compare.depth_table("m", s, _layers(*args), ["a", "b", "c"], "CNN")
                      for s, args in enumerate(per_seed)])


def test_trend_is_a_test_over_networks_of_the_effect_size():
    """Page's L over seeds (networks): the verdict reads the effect size, never the SNR, and one
    network gets no trend test however separated its node-bootstrap intervals are."""
    up = ([1.0, 1.5, 2.0], [0.8, 1.2, 1.8], [1.2, 1.8, 2.2])
    one = compare.trends(_runs([up])).row(0, named=True)
    assert one["trend"] == "one network: no trend test" and one["networks"] == 1 and math.isnan(one["trend_p"])
    t = compare.trends(_runs([up] * 3)).row(0, named=True)  # one kind: no separate "all" row
    # every network ranks a < b < c: the exact two-sided p is 2 / (3!)^3
    assert t["networks"] == 3 and t["trend_p"] == pytest.approx(2 / 216) and t["trend"] == "rises"
    assert t["trend_p_min"] == pytest.approx(2 / 216) and (t["first"], t["last"]) == ("a", "c")
    down = ([2.0, 1.5, 1.0], [1.8, 1.2, 0.8], [2.2, 1.8, 1.2])
    t = compare.trends(_runs([down] * 3)).row(0, named=True)
    assert t["trend"] == "falls" and t["spearman_rho_snr"] == pytest.approx(-1.0)
    # the SNR rises in every seed but the effect size does not move the same way in each: no trend
    mixed = [(*up, "abc", [0.1, 0.2, 0.3]), (*up, "abc", [0.3, 0.2, 0.1]), (*up, "abc", [0.2, 0.3, 0.1])]
    runs = pl.concat([compare.depth_table("m", s, _layers(*a[:3], effect=a[4]), ["a", "b", "c"], "CNN")
                      for s, a in enumerate(mixed)])
    t = compare.trends(runs).row(0, named=True)
    assert t["trend"] == "no trend detected" and t["trend_p"] > 0.05


def test_a_trend_test_that_cannot_reach_the_level_says_uninformative():
    two = ([1.0, 2.0], [0.9, 1.9], [1.1, 2.1], ("a", "b"))
    runs = pl.concat([compare.depth_table("m", s, _layers(*two), ["a", "b"], "CNN") for s in range(3)])
    t = compare.trends(runs).row(0, named=True)  # a sign test over 3 networks: p_min = 2 / 2^3 = 0.25
    assert t["trend_p_min"] == pytest.approx(0.25) and t["trend"] == "uninformative"
    runs = pl.concat([compare.depth_table("m", s, _layers(*two), ["a", "b"], "CNN") for s in range(6)])
    t = compare.trends(runs).row(0, named=True)
    assert t["trend_p"] == pytest.approx(2 / 64) and t["trend"] == "rises"


def test_andc_and_heads_summaries_average_over_seeds():
    andc = pl.DataFrame({"model": ["m", "m"], "seed": [0, 1], "point": ["p", "p"], "method": ["andc", "andc"],
                         "selection": ["heldout: 10 training images"] * 2,
                         "kept_fraction": [0.2, 0.4], "accuracy_full": [0.8, 0.6], "accuracy_pruned": [0.7, 0.6],
                         "accuracy_finetuned": [0.8, 0.62]})
    s = compare.andc_summary(andc).row(0, named=True)
    assert s["kept_fraction"] == pytest.approx(0.3) and s["change_pruned"] == pytest.approx(-5.0)
    assert s["change_finetuned"] == pytest.approx(1.0) and s["seeds"] == 2
    heads = pl.DataFrame({"model": ["m"] * 3, "seed": [0, 1, 2], "point": ["p"] * 3, "mean_labels_per_head": [3.0] * 3,
                          "mean_heads_per_label": [1.5] * 3, "observed_jaccard": [0.1, 0.2, None],
                          "null_mean": [0.3, 0.3, None], "overlap_deficit": [0.2, 0.1, None],
                          "p_value": [0.01, 0.5, None], "p_min": [0.001, 0.4, None], "level": [0.05] * 3,
                          "status": ["ok", "uninformative", "undefined"],
                          "specialisation_p": [0.5, 0.01, 0.02], "specialisation_status": ["ok", "ok", "undefined"]})
    h = compare.heads_summary(heads).row(0, named=True)
    assert (h["seeds"], h["informative"], h["undefined"], h["uninformative"]) == (3, 1, 1, 1)
    assert (h["avoiding_seeds"], h["specialised_seeds"]) == (1, 1)  # an undefined test counts for neither
    # only the informative seed is averaged: an uninformative or undefined test is no evidence either way
    assert h["overlap_deficit"] == pytest.approx(0.2) and h["observed_jaccard"] == pytest.approx(0.1)
    assert h["p_min_max"] == pytest.approx(0.4)


def test_trends_never_compare_a_flatten_point_with_a_seqpool_point():
    # a conv point (flatten readout, high SNR) then transformer points (seqpool): the old "all points"
    # verdict said `falls` from the conv point; within the seqpool points the SNR rises
    one = ([3.0, 1.0, 2.0], [2.8, 0.8, 1.8], [3.2, 1.2, 2.2])
    runs = pl.concat([compare.depth_table("m", s, _layers(*one, kind=["conv", "ff", "ff"],
                                                          readout=["flatten", "seqpool", "seqpool"]),
                                          ["a", "b", "c"], "CCT") for s in range(6)])
    assert runs["readout"].to_list()[:3] == ["flatten", "seqpool", "seqpool"]
    t = compare.trends(runs)
    assert set(t["readout"].to_list()) == {"seqpool"}  # one flatten point: no trend of its own
    row = t.row(0, named=True)
    assert (row["first"], row["last"], row["trend"]) == ("b", "c", "rises")
    assert "readout" in compare.aggregate(runs).columns


def test_spearman_uses_average_ranks_and_leaves_nan_out():
    import numpy as np

    assert compare.spearman(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, np.nan, 2.0, 3.0])) == pytest.approx(1.0)
    # ties get average ranks: y = [1, 1, 2] against x = [0, 1, 2] is not a perfect ordering
    assert compare.spearman(np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 2.0])) == pytest.approx(math.sqrt(3) / 2)


@pytest.mark.slow
def test_unified_study_end_to_end_and_compare_command(tmp_path, ray_cluster, capsys):
    """A VGG and a tiny CCT, two seeds each, through `snp-service run`; then `snp-service compare` on
    the stored job ids gives the same per-layer table."""
    from snp_service import cli

    job = _compare_job(tmp_path, **{"pruning.enabled": True, "pruning.finetune_epochs": 1,
                                    "pruning.curve_thresholds": [0.3]})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    assert cli.main(["run", str(tmp_path / "job.yaml")]) == 0
    out = capsys.readouterr().out
    assert "compare: run 4/4: cct seed 1" in out and "comparison: " in out
    study_dirs = list((tmp_path / "results" / studies.STUDIES).iterdir())
    assert len(study_dirs) == 1
    d = study_dirs[0]
    layers = pl.read_parquet(d / "compare" / "layers.parquet")
    assert set(layers["model"]) == {"vgg", "cct"} and set(layers["seeds"]) == {2}
    assert layers.filter(pl.col("model") == "vgg")["point"].to_list() == ["features.2", "features.13", "features.27"]
    assert layers["relative_depth"].min() >= 0 and layers["relative_depth"].max() <= 1
    assert set(layers.filter(pl.col("model") == "cct")["kind"]) == {"conv", "mha", "ff", "block"}
    acc = pl.read_parquet(d / "compare" / "accuracy_summary.parquet")
    assert acc["seeds"].to_list() == [2, 2] and acc["family"].to_list() == ["CNN", "CCT"]
    assert (d / "report" / "figures" / "compare_depth.png").stat().st_size > 10_000
    page = (d / "report" / "report.html").read_text()
    for heading in ("Per-layer measures along relative depth", "Does label dependence rise", "ANDC pruning",
                    "Attention heads"):
        assert heading in page
    trends = pl.read_parquet(d / "compare" / "trends.parquet")
    assert set(trends["networks"]) == {2} and trends["trend"].str.len_chars().min() > 0
    assert layers["label_specific_fraction"].is_not_null().all() and layers["effect_size"].is_not_null().all()
    runs = pl.read_parquet(d / "compare" / "accuracy.parquet")["job_id"].to_list()
    # the same comparison from the stored jobs (labels become the model names)
    assert cli.main(["compare", *runs, "--store", str(tmp_path / "results"), "--name", "again"]) == 0
    again = sorted((tmp_path / "results" / studies.STUDIES).glob("again-compare-*"))
    t = pl.read_parquet(again[0] / "compare" / "layers.parquet")
    assert t["snr"].to_list() == layers["snr"].to_list()
    assert set(t["model"]) == {"vgg11_bn", "cct_2_3x2_32"}


@pytest.mark.slow
def test_a_text_cct_beside_an_image_cct_end_to_end(tmp_path, ray_cluster, cache_env):
    """issue 32 item 5: one comparison of an image CCT and a text CCT (different datasets, said in the
    tables and the summary, not refused)."""
    from snp_service.store import FILES
    from tests.text_data import write_text_dataset

    root = write_text_dataset(tmp_path / "t")
    job = _compare_job(tmp_path, seeds=(0,))
    job["compare"]["models"] = [{"label": "cct"}, {
        "label": "text", "model": {"name": "text_cct_2_k2", "num_layers": 1, "embedding_dim": 32, "num_heads": 4},
        "dataset": {"name": "text", "root": str(root), "subset": "tiny", "max_length": 16, "num_workers": 0,
                    "tokenizer": {"vocab_size": 64, "min_frequency": 1}}}]
    outcome = studies.run_comparison(spec_from_dict(job), progress=lambda m: None)
    acc = outcome.tables["accuracy_summary"]
    assert acc["family"].to_list() == ["CCT", "text CCT"]
    assert acc["dataset"].to_list()[1].startswith("text/tiny") and acc["dataset"][0] != acc["dataset"][1]
    layers = outcome.tables["layers"]
    text = layers.filter(pl.col("model") == "text")
    assert text["point"].to_list()[0] == "tokenizer.0" and text["relative_depth"].max() == 1.0
    assert text["effect_size"].is_not_null().all()
    summary = (tmp_path / "results" / studies.STUDIES / outcome.uri.rsplit("/", 1)[-1] / FILES["summary"]).read_text()
    assert "models on different datasets" in summary and "| text CCT | text/tiny" in summary


def test_jobs_at_other_thresholds_or_readouts_are_refused_and_one_models_seeds_share_their_data(tmp_path):
    a = spec_from_dict(tiny_job(tmp_path)).model_dump(mode="json")
    b = spec_from_dict(tiny_job(tmp_path / "other")).model_dump(mode="json")
    c = spec_from_dict(tiny_job(tmp_path, **{"analysis.threshold": 0.5})).model_dump(mode="json")
    run = lambda spec, jid, label="m": compare.Run(label, 0, jid, "", spec)  # noqa: E731
    compare.check_comparable([run(a, "a"), run(a, "a2")])
    assert not compare.different_datasets([run(a, "a"), run(a, "a2")])
    with pytest.raises(StoreError, match="seeds of model 'm' on different datasets"):
        compare.check_comparable([run(a, "a"), run(b, "b")])
    # two models on two datasets (a text model beside image models, issue 32): allowed, and said
    compare.check_comparable([run(a, "a"), run(b, "b", "other")])
    assert compare.different_datasets([run(a, "a"), run(b, "b", "other")])
    with pytest.raises(StoreError, match="differ in analysis.threshold"):
        compare.check_comparable([run(a, "a"), run(c, "c", "other")])
    d = spec_from_dict(tiny_job(tmp_path, **{"analysis.readout": "flatten"})).model_dump(mode="json")
    with pytest.raises(StoreError, match="differ in analysis.readout"):
        compare.check_comparable([run(a, "a"), run(d, "d", "other")])


def test_dataset_label_names_the_data_and_what_of_it_was_used():
    label = compare.dataset_label
    assert label({"dataset": {"name": "imagefolder", "root": "/x/cifar10-jpg.tar.gz", "max_per_class": 800,
                              "eval_max_per_class": 300}}) == "imagefolder (cifar10-jpg.tar.gz, 800 train per class, " \
                                                              "300 eval per class)"
    assert label({"dataset": {"name": "text", "root": "s3://b/text.tar.gz/", "subset": "banking77",
                              "random_labels": True}}) == "text/banking77 (text.tar.gz, random labels)"
    assert label({"dataset": {"name": "synthetic", "root": ""}}) == "synthetic"
    from snp_service.spec import input_size

    assert input_size({"name": "text", "max_length": 48, "image_size": 32}) == 48
    assert input_size({"name": "cifar10", "image_size": 32}) == 32


def test_a_text_model_can_stand_beside_image_models_in_a_compare_section(tmp_path):
    """issue 32 item 5: a compare model with its own (text) dataset section, replaced whole."""
    from tests.text_data import write_text_dataset

    root = write_text_dataset(tmp_path / "t")
    job = _compare_job(tmp_path, seeds=(0,))
    job["compare"]["models"].append({
        "label": "text", "model": {"name": "text_cct_2_k2", "num_layers": 1, "embedding_dim": 32, "num_heads": 4},
        "dataset": {"name": "text", "root": str(root), "subset": "tiny", "max_length": 16, "num_workers": 0,
                    "tokenizer": {"vocab_size": 64, "min_frequency": 1}}})
    spec = spec_from_dict(job)
    runs = {label: v for label, _, v in spec.compare_jobs()}
    assert runs["text"].dataset.name == "text" and runs["text"].dataset.max_length == 16
    assert runs["cct"].dataset == spec.dataset and runs["vgg"].dataset == spec.dataset
    assert runs["text"].model.name == "text_cct_2_k2"


def test_accuracy_summary_gives_mean_sd_and_range_over_seeds():
    """Quick cover of accuracy_summary (before, only the slow end-to-end test reached it: the mutation
    run found its mutants untested)."""
    import numpy as np

    acc = pl.DataFrame({"model": ["vgg", "vgg", "vgg", "cct"], "family": ["cnn"] * 3 + ["cct"],
                        "network": ["vgg11_bn"] * 3 + ["cct_2"], "dataset": ["d"] * 4, "seed": [0, 1, 2, 0],
                        "epochs": [3, 3, 3, 5],
                        "accuracy": [0.5, 0.6, 0.8, 0.7]})
    s = compare.accuracy_summary(acc).rows(named=True)
    assert [r["model"] for r in s] == ["vgg", "cct"]
    vgg = s[0]
    assert vgg["seeds"] == 3 and vgg["epochs"] == 3 and vgg["accuracy"] == pytest.approx(np.mean([0.5, 0.6, 0.8]))
    assert vgg["accuracy_sd"] == pytest.approx(np.std([0.5, 0.6, 0.8], ddof=1))
    assert (vgg["accuracy_min"], vgg["accuracy_max"]) == (0.5, 0.8)
    assert s[1]["seeds"] == 1 and s[1]["accuracy_sd"] is None  # one seed: no spread


def test_the_refusal_names_the_reference_job_every_differing_field_and_its_values():
    """The whole message (mutants of check_comparable that garbled it, named the wrong job, or compared
    the wrong fields survived the tests above): the third job differs from the first in two of the
    shared analysis fields."""
    run = lambda spec, jid, label: compare.Run(label, 0, jid, "", spec)  # noqa: E731
    a = {"dataset": {"name": "x"}, "analysis": {"threshold": 0.3, "normalise": "max", "readout": "seqpool", "fdr": 0.05}}
    b = {"dataset": {"name": "y"}, "analysis": {"threshold": 0.5, "normalise": "max", "readout": "flatten", "fdr": 0.1}}
    with pytest.raises(StoreError) as e:
        compare.check_comparable([run(a, "ref", "m"), run(a, "same", "m"), run(b, "other", "n")])
    assert str(e.value) == ("jobs ref and other differ in analysis.threshold, readout (0.3 vs 0.5, 'seqpool' vs "
                            "'flatten'); a comparison needs the same threshold, normalisation and readout kind")


# --- issue 33: trend_test's verdicts and exact p-values (mutation survivors) ---------------------------


def _trend(rows, level=compare.TREND_LEVEL) -> dict:
    import numpy as np

    return compare.trend_test(np.array(rows, dtype=float), level)


def _assert_untested(r: dict, networks: int, trend: str) -> None:
    assert set(r) == {"networks", "trend_p", "trend_p_min", "trend"}
    assert (r["networks"], r["trend"]) == (networks, trend)
    assert math.isnan(r["trend_p"]) and math.isnan(r["trend_p_min"])


def test_trend_test_without_a_test_says_why_with_every_field():
    _assert_untested(_trend([[0.1, 0.2, 0.3]]), 1, "one network: no trend test")
    _assert_untested(_trend([[0.1, 0.2], [0.1, float("nan")], [0.3, 0.4]]), 3,
                     "undefined: a network has no value at some point")
    two = _trend([[0.1, 0.2, 0.3], [0.2, 0.3, 0.4]])  # two networks are tested (p_min 2 / 3!^2)
    assert two["trend_p_min"] == pytest.approx(2 / 36) and two["trend"] == "uninformative"


def test_the_two_point_sign_test_gives_exact_binomial_p_values():
    """Two points: an exact sign test over networks, ties left out, two-sided p clipped at 1."""
    rises = _trend([[0.1, 0.2]] * 6)  # 6 of 6 rise: p = 2 / 2^6
    assert (rises["trend_p"], rises["trend_p_min"], rises["trend"]) == (2 / 64, 2 / 64, "rises")
    falls = _trend([[0.2, 0.1]] * 6)
    assert (falls["trend_p"], falls["trend"]) == (2 / 64, "falls")
    tied = _trend([[0.1, 0.2]] * 6 + [[0.3, 0.3]])  # the tie is not a network that rose
    assert (tied["trend_p"], tied["trend_p_min"], tied["trend"]) == (2 / 64, 2 / 128, "rises")
    flat = _trend([[0.3, 0.3]] * 6)  # nothing to test: p 1
    assert (flat["trend_p"], flat["trend"]) == (1.0, "no trend detected")
    balanced = _trend([[0.1, 0.2]] * 3 + [[0.2, 0.1]] * 3)  # each one-sided p 42/64: twice is over 1
    assert balanced["trend_p"] == 1.0
    six_of_seven = _trend([[0.1, 0.2]] * 6 + [[0.2, 0.1]])  # P(X >= 6 | 7) = 8/128; p = 1/8
    assert six_of_seven["trend_p"] == 0.125 and six_of_seven["trend"] == "no trend detected"


def test_trend_verdicts_at_the_level_itself():
    """p equal to the level is not below it; p_min equal to the level makes the design uninformative."""
    six_of_seven = _trend([[0.1, 0.2]] * 6 + [[0.2, 0.1]], level=0.125)
    assert six_of_seven["trend"] == "no trend detected"
    five = _trend([[0.1, 0.2]] * 5, level=2 / 32)  # p_min = 2 / 2^5, the level
    assert five["trend"] == "uninformative"
    assert _trend([[0.1, 0.2]] * 5, level=0.07)["trend"] == "rises"


# --- issue 33: the summaries keep every group apart, in order, with every column (mutation survivors) --


def _grid(n_models=12):
    """Models m00.. (more groups than a hash order would keep by chance) x points p, q."""
    return [(f"m{i:02d}", p) for i in range(n_models) for p in ("q", "p")]


def test_accuracy_summary_keeps_each_model_apart_in_order_with_every_column():

    models = [f"m{i:02d}" for i in range(30)][::-1]
    acc = pl.DataFrame({"model": models * 2, "family": ["cnn"] * 60, "network": models * 2, "dataset": ["d"] * 60,
                        "seed": [0] * 30 + [1] * 30, "epochs": [2] * 60,
                        "accuracy": [i / 100 for i in range(30)] + [i / 100 + 0.1 for i in range(30)]})
    s = compare.accuracy_summary(acc)
    assert s.columns == ["model", "family", "network", "dataset", "seeds", "epochs", "accuracy", "accuracy_sd",
                         "accuracy_min", "accuracy_max"]
    assert s["model"].to_list() == models and s["seeds"].to_list() == [2] * 30
    assert s["accuracy"].to_list() == pytest.approx([i / 100 + 0.05 for i in range(30)])


def test_andc_summary_keeps_models_points_methods_and_selections_apart_in_order():

    rows = []
    for g, (model, point) in enumerate(_grid()):
        for method in ("andc", "random"):
            for selection in ("heldout: 10 training images", "eval"):
                for seed, kept in ((0, 0.1), (1, 0.2), (2, 0.6)):
                    rows.append({"model": model, "seed": seed, "point": point, "method": method,
                                 "selection": selection, "kept_fraction": kept + g, "accuracy_full": 0.5,
                                 "accuracy_pruned": 0.4, "accuracy_finetuned": 0.45})
    s = compare.andc_summary(pl.DataFrame(rows))
    assert s.columns == ["model", "point", "method", "selection", "seeds", "kept_fraction", "kept_fraction_sd",
                         "accuracy_full", "accuracy_full_sd", "change_pruned", "change_pruned_sd", "change_finetuned",
                         "change_finetuned_sd"]
    assert s.height == len(_grid()) * 4 and s["seeds"].to_list() == [3] * s.height
    keys = [(r["model"], r["point"], r["method"], r["selection"]) for r in s.rows(named=True)]
    assert keys == list(dict.fromkeys((r["model"], r["point"], r["method"], r["selection"]) for r in rows))
    assert s["kept_fraction"].to_list() == pytest.approx([0.3 + g for g in range(len(_grid())) for _ in range(4)])
    assert s["kept_fraction_sd"].to_list() == pytest.approx([math.sqrt(0.07)] * s.height)  # sd over seeds, ddof 1
    assert s["change_pruned"].to_list() == pytest.approx([-10.0] * s.height)


def test_heads_summary_counts_at_the_level_and_without_specialisation_columns():

    base = {"mean_labels_per_head": 3.0, "mean_heads_per_label": 1.5, "observed_jaccard": 0.1, "null_mean": 0.3,
            "overlap_deficit": 0.2, "p_min": 0.001, "level": 0.05}
    rows = []
    for g, (model, point) in enumerate(_grid()):
        rows += [{**base, "model": model, "point": point, "seed": 0, "status": "ok", "p_value": 0.01,
                  "specialisation_status": "ok", "specialisation_p": 0.01, "mean_labels_per_head": 3.0 + g},
                 {**base, "model": model, "point": point, "seed": 1, "status": "ok", "p_value": 0.05,
                  "specialisation_status": "ok", "specialisation_p": 0.05},  # p at the level: not below it
                 {**base, "model": model, "point": point, "seed": 2, "status": "uninformative", "p_value": 0.01,
                  "specialisation_status": "ok", "specialisation_p": 0.02, "observed_jaccard": 0.9},
                 {**base, "model": model, "point": point, "seed": 3, "status": "undefined", "p_value": 0.01,
                  "specialisation_status": "undefined", "specialisation_p": 0.01}]
    heads = pl.DataFrame(rows)
    h = compare.heads_summary(heads)
    assert h.columns == ["model", "point", "seeds", "informative", "undefined", "uninformative",
                         "mean_labels_per_head", "mean_heads_per_label", "observed_jaccard", "null_mean",
                         "overlap_deficit", "p_min_max", "avoiding_seeds", "specialised_seeds"]
    assert [(r["model"], r["point"]) for r in h.rows(named=True)] == _grid()
    assert h["avoiding_seeds"].to_list() == [1] * h.height  # an ok seed below the level; not at it, not uninformative
    assert h["specialised_seeds"].to_list() == [2] * h.height  # ok and below: seeds 0 and 2
    assert h["observed_jaccard"].to_list() == pytest.approx([0.1] * h.height)  # informative seeds only
    assert h["mean_labels_per_head"].to_list() == pytest.approx([3.0 + g / 4 for g in range(len(_grid()))])
    old = compare.heads_summary(heads.drop("specialisation_status", "specialisation_p"))  # jobs before that test
    assert old.columns == h.columns and old["specialised_seeds"].to_list() == [0] * h.height
    no_status = compare.heads_summary(heads.drop("specialisation_status"))  # p without a status: not counted
    assert no_status["specialised_seeds"].to_list() == [0] * h.height


def test_depth_table_has_every_column_and_fills_a_measure_an_older_job_lacks_with_nulls():
    full = compare.depth_table("m", 3, _layers([1.0, 2.0], [0.5, 1.5], [1.5, 2.5], points=("a", "c")),
                               ["a", "b", "c"], "CNN")
    cols = ["model", "family", "seed", "point", "kind", "readout", "relative_depth", *compare.MEASURES,
            "snr_lo", "snr_hi", "effect_size_lo", "effect_size_hi"]
    assert full.columns == cols
    assert full.row(1, named=True) | {} == {**full.row(1, named=True), "model": "m", "family": "CNN", "seed": 3,
                                            "point": "c", "relative_depth": 1.0, "snr": 2.0, "snr_lo": 1.5,
                                            "snr_hi": 2.5, "effect_size_lo": 1.99, "effect_size_hi": 2.01}
    assert full.schema["relative_depth"] == pl.Float64
    old = _layers([1.0, 2.0], [0.5, 1.5], [1.5, 2.5], points=("a", "c")).drop(
        "effect_size_lo", "effect_size_hi", "mean_node_accuracy")  # a job written before those columns
    t = compare.depth_table("m", 3, old, ["a", "b", "c"], "CNN")
    assert t.columns == cols
    for c in ("effect_size_lo", "effect_size_hi", "mean_node_accuracy"):
        assert t.schema[c] == pl.Float64 and t[c].null_count() == 2, c
    assert t["snr"].to_list() == [1.0, 2.0]


def test_aggregate_orders_models_and_depths_and_names_every_column():
    runs = pl.concat([compare.depth_table(m, s, _layers([3.0, 1.0 + s], [0, 0], [9, 9], points=("c", "a")),
                                          ["a", "b", "c"], "CNN") for m in ("zeta", "alpha") for s in (0, 1)])
    out = compare.aggregate(runs)
    assert out.columns == ["model", "family", "point", "kind", "readout", "relative_depth", "seeds",
                           *[n for c in compare.MEASURES for n in (c, f"{c}_sd")],
                           *[f"{c}_seed_{end}" for c in compare.SEED_INTERVALS for end in ("lo", "hi")]]
    assert set(out.columns) >= set(compare.aggregated_columns())  # what the report picks, in its own order
    assert [(r["model"], r["point"]) for r in out.rows(named=True)] == [("alpha", "a"), ("alpha", "c"),
                                                                          ("zeta", "a"), ("zeta", "c")]
    a = out.row(0, named=True)
    assert (a["seeds"], a["snr"], a["snr_sd"]) == (2, 1.5, pytest.approx(math.sqrt(0.5)))
    assert a["snr_seed_lo"] < 1.5 < a["snr_seed_hi"] and out.schema["snr_seed_lo"] == pl.Float64


def test_comparison_tables_are_built_from_the_runs_own_tables():
    layers = [compare.depth_table(m, s, _layers([1.0, 2.0 + s, 3.0], [0] * 3, [9] * 3), ["a", "b", "c"], "CNN")
              for m in ("x", "y") for s in (0, 1, 2)]
    accuracy = [{"model": m, "family": "CNN", "network": m, "dataset": "d", "seed": s, "epochs": 1, "accuracy": 0.5}
                for m in ("x", "y") for s in (0, 1, 2)]
    tables = compare.comparison_tables(layers, accuracy, [], [])
    assert set(tables) == {"runs", "layers", "trends", "accuracy", "accuracy_summary"}  # no pruning, no heads
    runs = pl.concat(layers)
    assert tables["runs"].equals(runs) and tables["layers"].equals(compare.aggregate(runs))
    assert tables["trends"].equals(compare.trends(runs)) and tables["accuracy"].equals(pl.DataFrame(accuracy))
    assert tables["accuracy_summary"]["seeds"].to_list() == [3, 3]
    andc = [pl.DataFrame({"model": [m], "seed": [0], "point": ["a"], "method": ["andc"], "selection": ["eval"],
                          "kept_fraction": [0.5], "accuracy_full": [0.5], "accuracy_pruned": [0.4],
                          "accuracy_finetuned": [0.45]}) for m in ("x", "y")]
    heads = [pl.DataFrame({"model": [m], "seed": [0], "point": ["a"], "mean_labels_per_head": [2.0],
                           "mean_heads_per_label": [1.0], "observed_jaccard": [0.1], "null_mean": [0.2],
                           "overlap_deficit": [0.1], "p_value": [0.5], "p_min": [0.01], "level": [0.05],
                           "status": ["ok"]}) for m in ("x", "y")]
    both = compare.comparison_tables(layers, accuracy, andc, heads)
    assert both["andc"].equals(compare.andc_summary(pl.concat(andc)))
    assert both["heads"].equals(compare.heads_summary(pl.concat(heads)))


def test_dataset_label_names_the_data_and_how_much_of_it_was_used():
    assert compare.dataset_label({"dataset": {"name": "imagefolder", "root": "/data/sets/SVHN-X/"}}) == \
        "imagefolder (SVHN-X)"
    assert compare.dataset_label({"dataset": {"name": "synthetic", "root": None, "max_per_class": 5}}) == \
        "synthetic (5 train per class)"
    assert compare.dataset_label({"dataset": {"name": "text", "subset": "banking77", "root": "s3://b/p/texts.tar.gz",
                                              "eval_max_per_class": 3, "random_labels": True}}) == \
        "text/banking77 (texts.tar.gz, 3 eval per class, random labels)"
    assert compare.dataset_label({"dataset": {"name": "synthetic"}}) == "synthetic"


def test_relative_depth_and_spearman_at_their_edges():
    assert compare.relative_depth(["a"]) == {"a": 0.0}
    assert compare.relative_depth(["a", "b"]) == {"a": 0.0, "b": 1.0}
    import numpy as np

    x = np.array([0.0, 0.5, 1.0, 0.25])
    assert compare.spearman(x, np.array([1.0, 3.0, 4.0, 2.0])) == pytest.approx(1.0)
    assert compare.spearman(x, np.array([4.0, 2.0, 1.0, 3.0])) == pytest.approx(-1.0)
    assert compare.spearman(x, np.array([1.0, 3.0, float("nan"), 2.0])) == pytest.approx(1.0)  # a nan pair dropped
    for y in ([2.0, 2.0, 2.0, 2.0], [1.0, 2.0, float("nan"), float("nan")]):  # constant; fewer than 3 pairs
        assert math.isnan(compare.spearman(x, np.array(y)))
    assert math.isnan(compare.spearman(np.ones(4), np.array([1.0, 3.0, 4.0, 2.0])))  # constant depth
    tied = compare.spearman(x, np.array([1.0, 3.0, 4.0, 1.0]))  # y[0] tied, not constant
    assert tied == pytest.approx(0.9486832980505138)


def test_trends_rows_per_model_in_order_with_an_all_points_group_and_every_column():
    kinds = ["conv", "ff", "ff"]
    runs = pl.concat([compare.depth_table(m, s, _layers([1.0, 2.0 + s / 10, 3.0], [0] * 3, [9] * 3, kind=kinds,
                                                        effect=[0.1, 0.2 + s / 100, 0.3 + s / 100]),
                                          ["a", "b", "c"], "CCT")
                      for m in ("zeta", "alpha") for s in range(6)])
    t = compare.trends(runs)
    assert t.columns == ["model", "readout", "kind", "points", "first", "last", "effect_first", "effect_last",
                         "networks", "trend_p", "trend_p_min", "trend", "snr_first", "snr_last", "spearman_rho_snr"]
    rows = t.rows(named=True)
    assert [(r["model"], r["kind"], r["points"], r["first"], r["last"]) for r in rows] == [
        ("zeta", "all flatten points", 3, "a", "c"), ("zeta", "ff", 2, "b", "c"),
        ("alpha", "all flatten points", 3, "a", "c"), ("alpha", "ff", 2, "b", "c")]  # conv: one point, no row
    ff = rows[1]
    assert (ff["effect_first"], ff["effect_last"]) == (pytest.approx(0.225), pytest.approx(0.325))
    assert (ff["snr_first"], ff["snr_last"]) == (pytest.approx(2.25), 3.0)
    assert rows[0]["trend"] == "rises" and rows[0]["networks"] == 6
    assert (rows[0]["effect_first"], rows[0]["effect_last"]) == (pytest.approx(0.1), pytest.approx(0.325))
    assert (rows[0]["snr_first"], rows[0]["snr_last"]) == (1.0, 3.0)
    one_kind = compare.trends(runs.filter(pl.col("kind") == "ff"))  # one kind: no "all points" row repeating it
    assert one_kind["kind"].to_list() == ["ff", "ff"]
    strict = compare.trends(runs, level=1e-9)  # the level reaches the verdicts
    assert set(strict["trend"]) == {"uninformative"}


def test_comparison_tables_join_runs_whose_columns_are_all_null_in_one_run():
    """A run whose SNR intervals or heads statistics are all missing stores those columns without a
    type (polars' Null): the runs are still joined (relaxed to the other runs' types)."""
    typed = compare.depth_table("x", 0, _layers([1.0, 2.0, 3.0], [0.5] * 3, [9.0] * 3), ["a", "b", "c"], "CNN")
    untyped = compare.depth_table("x", 1, _layers([1.5, 2.5, 3.5], [None] * 3, [None] * 3), ["a", "b", "c"], "CNN")
    assert untyped.schema["snr_lo"] == pl.Null
    accuracy = [{"model": "x", "family": "CNN", "network": "x", "dataset": "d", "seed": s, "epochs": 1,
                 "accuracy": 0.5} for s in (0, 1)]
    heads = [pl.DataFrame({"model": ["x"], "seed": [s], "point": ["a"], "mean_labels_per_head": [2.0],
                           "mean_heads_per_label": [1.0], "observed_jaccard": [j], "null_mean": [j],
                           "overlap_deficit": [j], "p_value": [j], "p_min": [j], "level": [0.05],
                           "status": [status]})
             for s, j, status in ((0, 0.1, "ok"), (1, None, "undefined"))]
    andc = [pl.DataFrame({"model": ["x"], "seed": [s], "point": ["a"], "method": ["andc"], "selection": ["eval"],
                          "kept_fraction": [0.5], "accuracy_full": [0.5], "accuracy_pruned": [0.4],
                          "accuracy_finetuned": [f]}) for s, f in ((0, 0.45), (1, None))]
    tables = compare.comparison_tables([typed, untyped], accuracy, andc, heads)
    assert tables["runs"].schema["snr_lo"] == pl.Float64 and tables["runs"]["snr_lo"].null_count() == 3
    assert tables["heads"]["observed_jaccard"].to_list() == [pytest.approx(0.1)]
    assert tables["andc"]["change_finetuned"].to_list() == [pytest.approx(-5.0)]


def test_the_aggregated_columns_the_report_shows():
    cols = compare.aggregated_columns()
    assert cols[:2] == [compare.MEASURES[0], f"{compare.MEASURES[0]}_sd"]
    for c in compare.SEED_INTERVALS:
        i = cols.index(c)
        assert cols[i:i + 4] == [c, f"{c}_sd", f"{c}_seed_lo", f"{c}_seed_hi"]
    assert len(cols) == 2 * len(compare.MEASURES) + 2 * len(compare.SEED_INTERVALS)
    assert compare.dataset_label({"dataset": {"name": "synthetic", "max_per_class": 5, "eval_max_per_class": 2}}) \
        == "synthetic (5 train per class, 2 eval per class)"
