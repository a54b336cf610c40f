import numpy as np
import pytest
import torch

from snp_service.heads import analyse_heads, head_matrices, label_sets, mean_pairwise_jaccard, null_overlap
from snp_service.readout import Readout
from snp_service.snp import SNPAccumulator, fields


def test_head_matrix_is_the_field_of_the_head_alone():
    """Sum of a head's dimensions' raw matrices == SNP of the readout silenced outside the head."""
    g = torch.Generator().manual_seed(0)
    X, N, L, H = 64, 8, 5, 2
    acts = torch.randn(X, N, 1, generator=g, dtype=torch.float64)
    w = torch.randn(L, N, 1, generator=g, dtype=torch.float64)
    labels = torch.arange(X) % L
    acc = SNPAccumulator(N, L)
    acc.update(fields(acts, w), labels)
    heads = head_matrices(acc.snp_matrices(), H)
    for h in range(H):
        silenced = torch.zeros_like(w)
        silenced[:, h * 4:(h + 1) * 4] = w[:, h * 4:(h + 1) * 4]
        out = acts.flatten(1) @ silenced.flatten(1).T  # (X, L): the readout with only head h
        lit = torch.stack([out[labels == i].mean(0) for i in range(L)])
        torch.testing.assert_close(heads[h], lit, rtol=1e-10, atol=1e-12)


def test_jaccard_by_hand():
    a = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], dtype=bool)  # pair (0,1): 1/3; pairs with empty: 0
    # unions: (0,1)=3, (0,2)=2, (1,2)=2 -> jaccards 1/3, 0, 0
    assert np.isclose(mean_pairwise_jaccard(a), (1 / 3) / 3)
    assert np.isnan(mean_pairwise_jaccard(np.zeros((2, 4), dtype=bool)))


def test_null_is_seeded_and_keeps_sizes():
    sizes = np.array([3, 2, 4])
    a = null_overlap(sizes, 10, 500, seed=1)
    b = null_overlap(sizes, 10, 500, seed=1)
    c = null_overlap(sizes, 10, 500, seed=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # E[J] for random sets is positive and below 1; disjoint observation lies far below it
    assert 0.05 < a.mean() < 0.5


def _block_raw(assign: list[list[int]], L: int, dims: int) -> torch.Tensor:
    """Raw node matrices where head h's dimensions recognise exactly the labels assign[h]."""
    H = len(assign)
    raw = torch.zeros(H * dims, L, L, dtype=torch.float64)
    for h, labels in enumerate(assign):
        for n in range(h * dims, (h + 1) * dims):
            for a in labels:
                for b in labels:
                    raw[n, a, b] = 1.0
    return raw


def test_disjoint_heads_are_specialised():
    assign = [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    r = analyse_heads("blocks.0.attn.heads", _block_raw(assign, 10, 2), 4, 0.3, draws=2000, seed=0)
    assert r.summary["status"] == "ok"
    assert r.summary["observed_jaccard"] == 0.0
    assert r.summary["overlap_deficit"] > 0.1 and r.summary["p_value"] < 0.05 and r.summary["p_min"] < 0.05
    assert "z" not in r.summary  # the null is discrete: no z-score
    assert r.heads_labels.sum(1).tolist() == [3, 3, 2, 2]
    assert r.summary["labels_without_head"] == 0 and r.summary["mean_heads_per_label"] == 1.0
    assert label_sets([[[0, 1]], []], 3).tolist() == [[True, True, False], [False, False, False]]


def test_heads_covering_everything_are_undefined_not_a_number():
    r = analyse_heads("p", _block_raw([list(range(6))] * 3, 6, 2), 3, 0.3, draws=500)
    assert r.summary["status"] == "undefined" and "single value" in r.summary["reason"]
    assert np.isnan(r.summary["overlap_deficit"]) and np.isnan(r.summary["p_value"])


def test_one_head_with_labels_is_undefined():
    r = analyse_heads("p", _block_raw([[0, 1], []], 4, 2), 2, 0.3, draws=500)
    assert r.summary["status"] == "undefined" and "at least two" in r.summary["reason"]


def test_seqpool_readout_weights_feed_heads():
    # smoke: analyse_heads accepts raw matrices shaped like a real MHA point (N = heads x head_dim)
    ro = Readout(8, 4, 3, "seqpool")
    acts = ro.node_activations(torch.randn(30, 8, 4)).double()
    acc = SNPAccumulator(8, 3)
    acc.update(fields(acts, ro.weight.double()), torch.arange(30) % 3)
    r = analyse_heads("p", acc.snp_matrices(), 2, 0.3, draws=200)
    assert r.head_matrices.shape == (2, 3, 3) and r.summary["heads"] == 2


@pytest.mark.parametrize("assign, L", [
    ([list(range(10)), list(range(9))], 10),  # sizes [10, 9]: the overlap is always 0.9
    ([list(range(7)), list(range(10)), list(range(10)), list(range(10))], 10),  # [7, 10, 10, 10]
])
def test_a_null_with_one_value_is_undefined_even_when_its_float_sd_is_not_zero(assign, L):
    """The null's sd is ~1e-16 here, not 0.0: degeneracy is decided from its distinct values."""
    r = analyse_heads("p", _block_raw(assign, L, 2), len(assign), 0.3, draws=2000)
    assert r.summary["status"] == "undefined" and "single value" in r.summary["reason"]
    assert np.isnan(r.summary["p_value"]) and np.isnan(r.summary["overlap_deficit"])


@pytest.mark.parametrize("sizes", [(7, 8), (8, 9), (9, 9), (7, 9)])
def test_two_heads_of_7_to_9_labels_of_10_cannot_reject_and_say_so(sizes):
    assign = [list(range(sizes[0])), list(range(10 - sizes[1], 10))]
    r = analyse_heads("p", _block_raw(assign, 10, 2), 2, 0.3, draws=5000, level=0.05)
    s = r.summary
    assert s["p_min"] >= 0.05 and s["status"] == "uninformative" and "cannot reject" in s["reason"]
    assert s["p_value"] >= s["p_min"]


def test_p_min_is_the_mass_of_the_nulls_smallest_value():
    # 2 heads x 3 labels of 6: the overlap is 0 (disjoint) with probability 1 / C(6, 3) = 0.05
    r = analyse_heads("p", _block_raw([[0, 1, 2], [3, 4, 5]], 6, 2), 2, 0.3, draws=20_000, seed=1)
    assert r.summary["p_min"] == pytest.approx(0.05, abs=0.006)
    assert r.summary["p_value"] == r.summary["p_min"]  # observed is the smallest possible overlap
    for level, status in ((0.1, "ok"), (0.01, "uninformative")):
        assert analyse_heads("p", _block_raw([[0, 1, 2], [3, 4, 5]], 6, 2), 2, 0.3, draws=20_000, seed=1,
                             level=level).summary["status"] == status


# --- issue 33: edges the suite never reached


def test_two_empty_heads_are_undefined():
    r = analyse_heads("p", _block_raw([[], []], 4, 2), 2, 0.3, draws=200)
    s = r.summary
    assert s["status"] == "undefined" and s["reason"].startswith("0 head(s) with a non-empty label set")
    assert np.isnan(s["p_value"]) and np.isnan(s["observed_jaccard"]) and r.null is None


def test_p_min_equal_to_the_level_is_uninformative():
    """p_min >= level: at p_min == level the test cannot reject (p <= level would need p < p_min).
    Two heads of 5 labels of 10 are disjoint in 1 of C(10, 5) = 252 draws: with 19 draws (seeded)
    none is, so p_min = 1 / 20; the level is set to exactly that."""
    raw = _block_raw([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], 10, 2)
    r = analyse_heads("p", raw, 2, 0.3, draws=19, seed=0)
    p_min = r.summary["p_min"]
    assert p_min == 1 / 20
    assert analyse_heads("p", raw, 2, 0.3, draws=19, seed=0, level=p_min).summary["status"] == "uninformative"
    assert analyse_heads("p", raw, 2, 0.3, draws=19, seed=0, level=p_min * 1.01).summary["status"] == "ok"


# --- the specialisation test's parts, each against its definition (issue 33: mutants of label_profiles,
# coherence, specialisation_test and least_overlap passed every test that reached them)


def test_label_profiles_are_standardised_diagonals_above_each_outputs_mean():
    """D_n[i] = M_n[i, i] - mean_j M_n[j, i], centred and scaled to unit sd over labels: by hand on
    one node; blind to a label-independent shift of an output (a constant added to a column); a
    flat profile gives zeros; profile @ profile.T / L is the Pearson correlation of the profiles."""
    from snp_service.heads import label_profiles

    m = torch.tensor([[[4.0, 1.0, 0.0], [2.0, 3.0, 1.0], [0.0, 2.0, 5.0]]], dtype=torch.float64)
    d = np.array([4.0 - 2.0, 3.0 - 2.0, 5.0 - 2.0])  # diagonal minus column means (2, 2, 2)
    want = (d - d.mean()) / d.std()
    np.testing.assert_allclose(label_profiles(m)[0], want, rtol=1e-12)
    shifted = m + torch.tensor([10.0, -3.0, 7.0], dtype=torch.float64)[None, None, :]  # per output
    np.testing.assert_allclose(label_profiles(shifted)[0], want, rtol=1e-12)
    flat = torch.ones(1, 3, 3, dtype=torch.float64) + torch.eye(3, dtype=torch.float64)
    assert np.array_equal(label_profiles(flat)[0], np.zeros(3))
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(6, 7, 7, generator=g, dtype=torch.float64)
    z = label_profiles(raw)
    dd = (torch.diagonal(raw, dim1=1, dim2=2) - raw.mean(dim=1)).numpy()
    np.testing.assert_allclose(z @ z.T / 7, np.corrcoef(dd), atol=1e-12)


def _coherence_by_pairs(corr, heads):
    n = len(heads)
    within = [corr[a, b] for a in range(n) for b in range(n) if a != b and heads[a] == heads[b]]
    between = [corr[a, b] for a in range(n) for b in range(n) if heads[a] != heads[b]]
    return np.mean(within) - np.mean(between)


def test_coherence_is_within_minus_between_mean_correlation_over_pairs():
    from snp_service.heads import coherence

    rng = np.random.default_rng(1)
    a = rng.normal(size=(9, 9))
    corr = (a + a.T) / 2 + 5 * np.eye(9)  # symmetric, a large diagonal that must be left out
    assignments = np.array([[0, 0, 0, 1, 1, 1, 2, 2, 2], [2, 0, 1, 0, 2, 1, 1, 2, 0], [0, 0, 1, 1, 1, 1, 2, 2, 2]])
    got = coherence(corr, assignments, 3)
    want = [_coherence_by_pairs(corr, h) for h in assignments]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _profile_raw(profiles: np.ndarray) -> torch.Tensor:
    """Raw node matrices whose label profiles are the given rows (on the diagonal; zero elsewhere)."""
    n, L = profiles.shape
    raw = torch.zeros(n, L, L, dtype=torch.float64)
    raw[:, torch.arange(L), torch.arange(L)] = torch.from_numpy(profiles)
    return raw


def test_specialisation_statistic_p_value_and_null_follow_their_definitions():
    from snp_service.heads import coherence, label_profiles, specialisation_test

    rng = np.random.default_rng(2)
    raw = _profile_raw(rng.normal(size=(8, 12)))
    out, null = specialisation_test(raw, 2, draws=300, seed=4)
    z = label_profiles(raw)
    corr = z @ z.T / 12
    heads = np.arange(8) // 4
    assert out["specialisation"] == pytest.approx(_coherence_by_pairs(corr, heads), rel=1e-12)
    assert null.shape == (300,) and out["specialisation_null_mean"] == pytest.approx(null.mean(), rel=1e-12)
    assert out["specialisation_p"] == (1 + (null >= out["specialisation"] - 1e-12).sum()) / 301
    assert out["specialisation_p_min"] == 1 / 301 and out["specialisation_status"] == "ok"
    same, _ = specialisation_test(raw, 2, draws=300, seed=4)
    other = specialisation_test(raw, 2, draws=300, seed=5)[1]
    assert same == out and not np.array_equal(other, null)
    # every null draw is the coherence of some split of the 8 dimensions into two heads of 4 (sizes kept):
    # all 70 such splits enumerated; the draws' mean is near their mean
    import itertools

    splits = np.array([[0 if d in first else 1 for d in range(8)] for first in itertools.combinations(range(8), 4)])
    exact = coherence(corr, splits, 2)
    assert np.isin(np.round(null, 10), np.round(exact, 10)).all()
    assert len(np.unique(np.round(null, 10))) > 20
    assert abs(null.mean() - exact.mean()) < 4 * exact.std() / np.sqrt(300)


@pytest.mark.parametrize("heads, dims, reason", [(1, 8, "1 head(s) of 8 dimension(s)"),
                                                 (4, 1, "4 head(s) of 1 dimension(s)")])
def test_specialisation_is_undefined_with_one_head_or_one_dimension_per_head(heads, dims, reason):
    from snp_service.heads import specialisation_test

    raw = _profile_raw(np.random.default_rng(0).normal(size=(heads * dims, 5)))
    out, null = specialisation_test(raw, heads, draws=50, seed=0)
    assert null is None and out["specialisation_status"] == "undefined"
    assert out["specialisation_reason"].startswith(reason) and "two heads of two dimensions" in out["specialisation_reason"]
    assert all(np.isnan(out[k]) for k in ("specialisation", "specialisation_p", "specialisation_p_min"))


def test_specialisation_size_on_label_blind_heads_and_power_on_specialised_ones():
    """Calibration: dimensions with independent random profiles (no head structure; with and without
    a large label-independent shift of every output) reject at 0.05 about 5% of the time (size, over
    300 networks: within the binomial 99.9% band); heads whose dimensions share a profile of their own
    (4 heads of 4, plus noise) reject every time (power), at p_min."""
    from snp_service.heads import specialisation_test

    rng = np.random.default_rng(7)
    rejections = {"blind": 0, "blind, shifted": 0}
    for i in range(300):
        profiles = rng.normal(size=(8, 10))
        for name, shift in (("blind", 0.0), ("blind, shifted", 50.0)):
            raw = _profile_raw(profiles) + shift * torch.from_numpy(rng.normal(size=(8, 1, 10)))  # per node and output
            out, _ = specialisation_test(raw, 4, draws=199, seed=i)
            rejections[name] += out["specialisation_p"] <= 0.05
    for name, r in rejections.items():
        assert 3 <= r <= 32, (name, r)  # Binomial(300, 0.05): mean 15, 99.9% within [4, 29]
    for i in range(20):
        own = rng.normal(size=(4, 10))
        profiles = np.repeat(own, 4, axis=0) + 0.3 * rng.normal(size=(16, 10))
        out, _ = specialisation_test(_profile_raw(profiles), 4, draws=199, seed=i)
        assert out["specialisation_p"] == out["specialisation_p_min"] == 1 / 200


def test_least_overlap_spreads_the_labels_largest_set_first():
    """By hand: sizes [5, 2, 2] of 6 labels: {0..4}, then {5, 0} (least used, then lowest), then {1, 2}:
    Jaccards 1/6, 2/5 and 0; two heads: the least possible overlap; the order of the sizes does not matter."""
    from snp_service.heads import least_overlap

    assert least_overlap(np.array([5, 2, 2]), 6) == pytest.approx((1 / 6 + 2 / 5 + 0) / 3, rel=1e-12)
    assert least_overlap(np.array([2, 5, 2]), 6) == least_overlap(np.array([2, 2, 5]), 6) == least_overlap(np.array([5, 2, 2]), 6)
    assert least_overlap(np.array([3, 3]), 6) == 0.0
    assert least_overlap(np.array([4, 4]), 6) == pytest.approx(2 / 6, rel=1e-12)  # 2 shared of 6 in the union
    assert least_overlap(np.array([7, 9]), 10) == pytest.approx(6 / 10, rel=1e-12)


def test_the_heads_summary_and_per_head_table_follow_their_definitions():
    """Every column of the heads row and of the per-head table, on overlapping label sets of unequal
    sizes (3 heads: {0, 1, 2}, {2, 3, 4, 5}, {5, 6} of 9 labels; labels 7, 8 in no head), against its
    definition in the module's docstring."""
    from snp_service.heads import least_overlap
    from snp_service.snp import node_statistics, normalise

    assign, L, draws = [[0, 1, 2], [2, 3, 4, 5], [5, 6]], 9, 400
    raw = _block_raw(assign, L, 2)
    r = analyse_heads("blocks.1.attn.heads", raw, 3, 0.3, draws=draws, seed=3, level=0.2)
    s = r.summary
    jac = (1 / 6 + 0 / 5 + 1 / 5) / 3  # pairs (0,1): {2} of 6; (0,2): none of 5; (1,2): {5} of 5
    assert s["observed_jaccard"] == pytest.approx(jac, rel=1e-12)
    assert (s["point"], s["heads"], s["labels"], s["threshold"], s["null_draws"], s["level"]) == \
        ("blocks.1.attn.heads", 3, 9, 0.3, draws, 0.2)
    assert s["mean_labels_per_head"] == pytest.approx(3.0) and s["mean_heads_per_label"] == pytest.approx(9 / 9)
    assert s["labels_without_head"] == 2
    null = r.null
    assert np.array_equal(null, null_overlap(np.array([3, 4, 2]), L, draws, 3))
    assert (s["null_mean"], s["null_sd"]) == (pytest.approx(null.mean(), rel=1e-12), pytest.approx(null.std(), rel=1e-12))
    assert s["overlap_deficit"] == pytest.approx(null.mean() - jac, rel=1e-12)
    assert s["p_value"] == (1 + (null <= jac + 1e-9).sum()) / (1 + draws)
    floor = min(least_overlap(np.array([3, 4, 2]), L), null.min())
    assert s["p_min"] == (1 + (null <= floor + 1e-9).sum()) / (1 + draws)
    assert (s["status"], s["reason"]) == ("ok", "")
    assert r.heads_labels.astype(int).tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0, 0],
                                                   [0, 0, 0, 0, 0, 1, 1, 0, 0]]
    m = normalise(head_matrices(raw, 3))
    torch.testing.assert_close(r.head_matrices, m, rtol=0, atol=0)
    ns = node_statistics(m, 0.3)
    assert r.head_stats == {"head": [0, 1, 2], "labels": [3, 4, 2], "n_clusters": ns.n_clusters.tolist(),
                            "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
                            "label_set": ["0,1,2", "2,3,4,5", "5,6"]}
    assert s["specialisation_status"] == "ok" and r.specialisation_null.shape == (draws,)


def test_the_heads_analysis_passes_normalisation_order_and_time_limit_to_the_clusters(monkeypatch):
    import snp_service.heads as heads_module

    seen = {}
    real = heads_module.node_statistics

    def spy(m, threshold, order, time_limit_s):
        seen.update(order=order, time_limit_s=time_limit_s, m=m)
        return real(m, threshold, order, time_limit_s)

    monkeypatch.setattr(heads_module, "node_statistics", spy)
    raw = torch.randn(6, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    raw[:2] = -raw[:2].abs()  # head 0's matrix has a negative maximum: the AFCC normalisation flips its signs
    r = analyse_heads("p", raw, 3, 0.3, draws=50, afcc=True, order="label", time_limit_s=7.5)
    assert (seen["order"], seen["time_limit_s"]) == ("label", 7.5)
    from snp_service.snp import normalise

    torch.testing.assert_close(seen["m"], normalise(head_matrices(raw, 3), afcc=True), rtol=0, atol=0)
    assert not torch.equal(seen["m"], normalise(head_matrices(raw, 3), afcc=False))
    assert r.summary["threshold"] == 0.3


def test_the_undefined_and_uninformative_reasons_say_what_happened():
    s = analyse_heads("p", _block_raw([[0], []], 4, 2), 2, 0.3, draws=100).summary
    assert s["reason"] == "1 head(s) with a non-empty label set; overlap needs at least two"
    ok = analyse_heads("p", _block_raw([[0, 1], [2]], 4, 2), 2, 0.3, draws=100).summary
    assert set(s) == set(ok)  # the same columns whatever the status, NaN where undefined
    assert all(np.isnan(s[k]) for k in ("null_mean", "null_sd", "overlap_deficit", "p_value", "p_min"))
    s = analyse_heads("p", _block_raw([list(range(10)), list(range(9))], 10, 2), 2, 0.3, draws=100).summary
    assert s["reason"] == ("the null model takes a single value (0.900): label-set sizes [10, 9] of 10 labels admit "
                           "one overlap; use more labels, more heads or a higher threshold")
    s = analyse_heads("p", _block_raw([list(range(7)), list(range(2, 10))], 10, 2), 2, 0.3, draws=200, seed=0).summary
    assert s["status"] == "uninformative"
    assert s["reason"] == (f"at label-set sizes [7, 8] of 10 labels the smallest attainable p is {s['p_min']:.3f} "
                           ">= 0.05: the test cannot reject")


def test_jaccard_leaves_out_pairs_with_an_empty_union_and_keeps_unions_of_one():
    a = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=bool)
    # pairs (0,1): 1/2; (0,2), (0,3), (1,2), (1,3): 0; (2,3): empty union, left out -> 0.5 / 5
    assert mean_pairwise_jaccard(a) == pytest.approx(0.1, rel=1e-12)
    assert mean_pairwise_jaccard(np.array([[1, 0], [1, 0]], dtype=bool)) == 1.0  # a union of one label
    batch = np.stack([a, np.zeros_like(a)])
    got = mean_pairwise_jaccard(batch)
    assert got[0] == pytest.approx(0.1, rel=1e-12) and np.isnan(got[1])


def test_the_nulls_are_the_same_draws_however_they_are_chunked():
    """null_overlap and the specialisation null draw their randomness in chunks (memory); the draws
    are those of one seeded stream read in order, so they equal the draws made in one piece: a
    chunking fault (a chunk skipped, overlapped or sized wrongly) changes them. Sizes chosen so that
    both use several chunks (10 heads x 200 labels: chunks of 1,000; 128 dimensions: chunks of 244)."""
    from snp_service.heads import coherence, label_profiles, specialisation_test

    sizes, L, draws = np.array([20, 30, 40, 10, 50, 60, 5, 15, 25, 35]), 200, 2500
    rng = np.random.default_rng(9)
    ranks = rng.random((draws, 10, L)).argsort(-1).argsort(-1)
    np.testing.assert_array_equal(null_overlap(sizes, L, draws, 9), mean_pairwise_jaccard(ranks < sizes[None, :, None]))
    raw = _profile_raw(np.random.default_rng(1).normal(size=(128, 6)))
    out, null = specialisation_test(raw, 4, draws=600, seed=2)
    z = label_profiles(raw)
    heads = np.arange(128) // 32
    perm = np.argsort(np.random.default_rng(2).random((600, 128)), axis=1)
    np.testing.assert_allclose(null, coherence(z @ z.T / 6, heads[perm], 4), rtol=1e-12)


def test_the_specialisation_columns_are_always_all_there():
    from snp_service.heads import specialisation_test

    keys = {"specialisation", "specialisation_null_mean", "specialisation_p", "specialisation_p_min",
            "specialisation_status", "specialisation_reason"}
    ok, _ = specialisation_test(_profile_raw(np.random.default_rng(0).normal(size=(6, 5))), 2, draws=20, seed=0)
    undefined, _ = specialisation_test(_profile_raw(np.random.default_rng(0).normal(size=(6, 5))), 6, draws=20, seed=0)
    assert set(ok) == set(undefined) == keys
    assert ok["specialisation_reason"] == "" and np.isnan(undefined["specialisation_null_mean"])
    assert undefined["specialisation_reason"] == ("6 head(s) of 1 dimension(s): needs two heads of two dimensions "
                                                  "or more")


def test_label_profiles_are_scale_free_and_a_profile_flat_up_to_rounding_is_zero():
    from snp_service.heads import label_profiles

    g = torch.Generator().manual_seed(3)
    raw = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)
    for scale in (1e-12, 1e-6, 1e6):
        np.testing.assert_allclose(label_profiles(raw * scale), label_profiles(raw), rtol=1e-9, atol=1e-9)
    flat = torch.zeros(1, 3, 3, dtype=torch.float64)
    flat[0, [0, 1, 2], [0, 1, 2]] = torch.tensor([1e6, 1e6 + 1e-9, 1e6 + 2e-9], dtype=torch.float64)
    assert np.array_equal(label_profiles(flat)[0], np.zeros(3))  # differences at the float rounding of 1e6
    np.testing.assert_allclose(label_profiles(raw.float()), label_profiles(raw.float().double()), rtol=0, atol=0)
    # flatness is judged per node, against that node's own size: a varying node far smaller than the others
    # keeps its profile
    mixed = torch.cat([raw[:2] * 1e6, raw[2:] * 1e-9])
    np.testing.assert_allclose(label_profiles(mixed), label_profiles(raw), rtol=1e-6, atol=1e-6)


def test_the_heads_analysis_is_seeded_computes_in_float64_and_names_its_point():
    raw = _block_raw([[0, 1, 2], [2, 3, 4, 5], [5, 6]], 9, 2) + 0.01 * torch.randn(
        6, 9, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    raw[:2] = -raw[:2].abs()  # head 0 with a negative maximum: the AFCC normalisation (off by default) differs
    a = analyse_heads("p", raw, 3, 0.3, draws=200)
    b = analyse_heads("p", raw, 3, 0.3, draws=200, seed=0, afcc=False)
    assert not torch.equal(a.head_matrices, analyse_heads("p", raw, 3, 0.3, draws=200, afcc=True).head_matrices)
    assert np.array_equal(a.null, b.null) and np.array_equal(a.specialisation_null, b.specialisation_null)
    assert a.summary == b.summary and (a.point, a.num_heads) == ("p", 3)
    c = analyse_heads("p", raw, 3, 0.3, draws=200, seed=1)
    assert not np.array_equal(a.specialisation_null, c.specialisation_null)
    f = analyse_heads("p", raw.float(), 3, 0.3, draws=200)
    assert f.head_matrices.dtype == torch.float64
    assert analyse_heads("p", raw, 3, 0.3).summary["null_draws"] == 10_000  # the documented default
    torch.testing.assert_close(f.head_matrices, normalise_heads(raw.float().double(), 3), rtol=0, atol=0)


def normalise_heads(raw, h):
    from snp_service.snp import normalise

    return normalise(head_matrices(raw, h))


def test_heads_of_one_label_each_are_two_non_empty_heads():
    s = analyse_heads("p", _block_raw([[0], [1]], 4, 2), 2, 0.3, draws=300, seed=0).summary
    assert s["status"] != "undefined" and s["observed_jaccard"] == 0.0 and s["mean_labels_per_head"] == 1.0


def test_heads_that_do_not_divide_the_nodes_are_refused_by_name():
    with pytest.raises(ValueError, match=r"^10 nodes do not split into 3 heads$"):
        head_matrices(torch.zeros(10, 4, 4), 3)
