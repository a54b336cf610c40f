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
