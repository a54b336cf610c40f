import numpy as np
import pytest
import torch

from snp_service.prune import (andc_mask, andc_mask_at, baseline_masks, finetune, magnitude_mask, masked,
                               prune_point, random_mask)
from snp_service.readout import readout_accuracy


def test_andc_mask_from_hand_built_clusters():
    clusters = [[[0, 1]], [], [[2], [0]]]  # node 0: {0,1}; node 1: none; node 2: {2}, {0}
    m = andc_mask(clusters, 4)
    assert m.shape == (4, 3)
    assert m[:, 0].tolist() == [True, True, False, False]
    assert not m[:, 1].any()
    assert m[:, 2].tolist() == [True, False, True, False]


def test_andc_mask_from_matrices_uses_the_threshold():
    m = torch.zeros(2, 3, 3, dtype=torch.float64)
    m[0, 0, 0] = m[0, 1, 1] = m[0, 0, 1] = m[0, 1, 0] = 1.0  # node 0: cluster {0,1}
    m[1, 2, 2] = 0.5  # node 1: {2} at th 0.3, nothing at th 0.6
    assert andc_mask_at(m, 0.3).T.tolist() == [[True, True, False], [False, False, True]]
    assert andc_mask_at(m, 0.6).T.tolist() == [[True, True, False], [False, False, False]]


def test_baselines_keep_the_same_count_per_node():
    g = torch.Generator().manual_seed(0)
    andc = torch.rand(10, 16, generator=g) < 0.3
    w = torch.randn(10, 16, 3, generator=g)
    masks = baseline_masks(andc, w, ["random", "magnitude"], seed=0)
    for name, mk in masks.items():
        assert torch.equal(mk.sum(0), andc.sum(0)), name
    assert torch.equal(random_mask(andc.sum(0), 10, 3), random_mask(andc.sum(0), 10, 3))


def test_magnitude_keeps_largest_weights_ties_lower_label():
    w = torch.tensor([[[3.0]], [[1.0]], [[3.0]], [[2.0]]])  # (L=4, N=1, P=1)
    assert magnitude_mask(w, torch.tensor([2]))[:, 0].tolist() == [True, False, True, False]
    assert magnitude_mask(w, torch.tensor([1]))[:, 0].tolist() == [True, False, False, False]


def _separable(n=400, nodes=6, labels=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, labels, n)
    x = rng.normal(size=(n, nodes, 4)).astype(np.float32) * 0.3
    for k in range(labels):
        x[y == k, 2 * k: 2 * k + 2] += 2.0  # nodes 2k, 2k+1 carry label k
    return x.astype(np.float16), y


def test_finetune_keeps_the_mask_and_prune_point_reports_all_methods():
    from snp_service.readout import train_readout
    from snp_service.measure import snp_accumulate
    from snp_service.snp import normalise

    x, y = _separable()
    ro = train_readout(x, y, 3, "seqpool", epochs=10, lr=1e-2)
    m = normalise(snp_accumulate(ro, x, y, 3).snp_matrices())
    andc = andc_mask_at(m, 0.3)
    tuned = finetune(ro, andc, x, y, epochs=2, lr=1e-3)
    assert torch.all(tuned.weight[~andc] == 0)
    assert torch.equal(tuned.attention_pool.weight, ro.attention_pool.weight)  # pooling frozen
    assert readout_accuracy(masked(ro, torch.ones_like(andc)), x, y) == readout_accuracy(ro, x, y)
    rows, curve = prune_point("p", ro, m, x, y, x, y, 0.3, [0.2, 0.5, 0.9], ["random", "magnitude"], 1, 1e-3)
    assert [r["method"] for r in rows] == ["andc", "random", "magnitude"]
    assert len({round(r["kept_fraction"], 9) for r in rows}) == 1
    kept = [c["kept_fraction"] for c in curve]
    assert kept == sorted(kept, reverse=True)  # higher threshold keeps no more connections


def test_masks_are_chosen_on_the_selection_images_and_the_rows_say_so():
    """ANDC's mask comes from the matrices it is given (the selection images), never from the
    evaluation split that scores it."""
    from snp_service.measure import snp_accumulate
    from snp_service.prune import selection_rows
    from snp_service.readout import train_readout
    from snp_service.snp import normalise

    x, y = _separable(n=600)
    ro = train_readout(x, y, 3, "seqpool", epochs=10, lr=1e-2)
    sel = selection_rows(len(y), 0.25, seed=3)
    assert len(sel) == 150 and np.array_equal(sel, selection_rows(len(y), 0.25, seed=3))
    assert not np.array_equal(sel, selection_rows(len(y), 0.25, seed=4))
    m_sel = normalise(snp_accumulate(ro, x, y, 3, rows=sel).snp_matrices())
    other = torch.zeros_like(m_sel)  # a selection that puts every node on label 0 only
    other[:, 0, 0] = 1.0
    rows, _ = prune_point("p", ro, other, x, y, x, y, 0.3, [], ["random"], 0, 1e-3, selection="heldout: test")
    assert rows[0]["selection"] == "heldout: test"
    assert rows[0]["kept_fraction"] == pytest.approx(1 / 3)  # one label per node: the given matrices chose
    rows_sel, _ = prune_point("p", ro, m_sel, x, y, x, y, 0.3, [], [], 0, 1e-3)
    assert rows_sel[0]["kept_fraction"] != rows[0]["kept_fraction"]
