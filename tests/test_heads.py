import numpy as np
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
    assert r.summary["z"] > 2 and r.summary["p_value"] < 0.05
    assert r.heads_labels.sum(1).tolist() == [3, 3, 2, 2]
    assert r.summary["labels_without_head"] == 0 and r.summary["mean_heads_per_label"] == 1.0
    assert label_sets([[[0, 1]], []], 3).tolist() == [[True, True, False], [False, False, False]]


def test_heads_covering_everything_are_undefined_not_a_number():
    r = analyse_heads("p", _block_raw([list(range(6))] * 3, 6, 2), 3, 0.3, draws=500)
    assert r.summary["status"] == "undefined" and "no spread" in r.summary["reason"]
    assert np.isnan(r.summary["z"]) and np.isnan(r.summary["p_value"])


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
