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


# --- issue 33: comparisons that fail when a baseline, a fine-tune or a curve is wired wrongly


def test_the_random_baseline_is_a_draw_of_its_own_not_the_andc_mask():
    """Same count per node as ANDC, but other labels: over 40 nodes keeping 1-3 of 10 labels, a
    uniform draw equal to ANDC everywhere has probability below 1e-40."""
    g = torch.Generator().manual_seed(1)
    andc = torch.zeros(10, 40, dtype=torch.bool)
    for n in range(40):
        andc[torch.randperm(10, generator=g)[:1 + n % 3], n] = True
    masks = baseline_masks(andc, torch.randn(10, 40, 1, generator=g), ["random"], seed=5)
    assert torch.equal(masks["random"].sum(0), andc.sum(0))
    assert not torch.equal(masks["random"], andc)
    assert torch.equal(masks["random"], random_mask(andc.sum(0), 10, 5))  # the seeded draw itself
    assert not torch.equal(masks["random"], random_mask(andc.sum(0), 10, 6))


def _mislabelled_readout():
    """A readout whose weights were scrambled after training: its masked accuracy is poor, and ten
    epochs of fine-tuning change it."""
    from snp_service.measure import snp_accumulate
    from snp_service.readout import train_readout
    from snp_service.snp import normalise

    x, y = _separable(n=300)
    ro = train_readout(x, y, 3, "seqpool", epochs=10, lr=1e-2)
    m = normalise(snp_accumulate(ro, x, y, 3).snp_matrices())
    with torch.no_grad():
        ro.weight.copy_(ro.weight[[1, 2, 0]])  # every label reads another label's nodes
    return ro, m, x, y


def test_accuracy_finetuned_is_the_accuracy_after_fine_tuning():
    ro, m, x, y = _mislabelled_readout()
    rows, _ = prune_point("p", ro, m, x, y, x, y, 0.3, [], [], 10, 5e-2, seed=0)
    andc = andc_mask_at(m, 0.3)
    before = readout_accuracy(masked(ro, andc), x, y)
    after = readout_accuracy(finetune(ro, andc, x, y, 10, 5e-2, 0), x, y)
    assert after != before  # the fixture is one where fine-tuning changes the accuracy
    assert rows[0]["accuracy_pruned"] == before
    assert rows[0]["accuracy_finetuned"] == after
    rows0, _ = prune_point("p", ro, m, x, y, x, y, 0.3, [], [], 0, 1e-2, seed=0)
    assert np.isnan(rows0[0]["accuracy_finetuned"])  # no fine-tune: no number


def test_the_curve_follows_its_own_thresholds():
    """Each curve row is the ANDC mask at that row's threshold, not at the table's."""
    m = torch.zeros(3, 4, 4, dtype=torch.float64)
    for n in range(3):
        m[n].fill_diagonal_(1.0)
        m[n, 1, 1] = 0.45  # label 1 kept only below 0.45
        m[n, 2, 2] = 0.25  # label 2 kept only below 0.25
    ro = _readout_of(4, 3)
    x = np.random.default_rng(0).normal(size=(64, 3, 2)).astype(np.float16)
    y = np.arange(64) % 4
    thresholds = [0.1, 0.3, 0.5]
    _, curve = prune_point("p", ro, m, x, y, x, y, 0.3, thresholds, [], 0, 1e-3)
    assert [c["threshold"] for c in curve] == thresholds
    assert [c["kept_fraction"] for c in curve] == [1.0, 3 / 4, 2 / 4]
    for c, th in zip(curve, thresholds):
        mask = andc_mask_at(m, th)
        assert c["accuracy_pruned"] == readout_accuracy(masked(ro, mask), x, y)


def _readout_of(labels, nodes):
    from snp_service.readout import Readout

    torch.manual_seed(0)
    return Readout(nodes, 1, labels, "seqpool").eval()


def test_heldout_selection_reads_the_training_subset_never_the_evaluation_matrices(tmp_path):
    """actors.prune_point_work with selection_split heldout: the matrices that choose the masks are
    those of the seeded training subset, whatever evaluation matrices it is handed."""
    from snp_service.actors import prune_point_work
    from snp_service.measure import snp_accumulate
    from snp_service.prune import selection_rows
    from snp_service.readout import Features, train_readout
    from snp_service.spec import spec_from_dict
    from tests.conftest import tiny_job

    x, y = _separable(n=400)
    ro = train_readout(x, y, 3, "seqpool", epochs=10, lr=1e-2)
    spec = spec_from_dict(tiny_job(tmp_path, **{"pruning": {"enabled": True, "selection_split": "heldout",
                                                            "selection_fraction": 0.25, "seed": 2,
                                                            "baselines": [], "finetune_epochs": 0,
                                                            "curve_thresholds": [0.5]}}))
    raw_eval = torch.zeros(6, 3, 3, dtype=torch.float64)
    raw_eval[:, 0, 0] = 1.0  # evaluation matrices that would keep label 0 alone on every node
    feats = Features({"p": x}, y)
    out = prune_point_work(spec, "p", ro, raw_eval, feats, feats, 3, andc=True)
    rows = selection_rows(len(y), 0.25, 2)
    expected = snp_accumulate(ro, x, y, 3, rows=rows)
    np.testing.assert_array_equal(out["selection_raw"], expected.snp_matrices().numpy().astype("float32"))
    np.testing.assert_array_equal(out["selection_eta2"], expected.label_dependence().eta2.astype("float32"))
    assert out["selection"].startswith("heldout") and out["rows"][0]["selection"] == out["selection"]
    assert out["rows"][0]["kept_fraction"] != pytest.approx(1 / 3)  # not the evaluation matrices' mask
    evaluated = prune_point_work(spec.model_copy(update={"pruning": spec.pruning.model_copy(
        update={"selection_split": "eval"})}), "p", ro, raw_eval, feats, feats, 3, andc=True)
    assert evaluated["rows"][0]["kept_fraction"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("kind", ["seqpool", "flatten"])
def test_masked_accuracies_in_one_pass_equal_each_masked_readout(kind):
    """The one-pass scoring (fields summed over each mask's kept nodes) gives, for every mask and for
    the unmasked readout, the accuracy of that masked readout run on the features; features with a
    per-node offset (as real activations have) and masks that remove most connections, where the
    scored accuracies differ from each other."""
    from snp_service.readout import masked_accuracies, train_readout

    x, y = _separable(n=500, nodes=8, labels=4, seed=2)
    x = (x.astype(np.float32) + np.linspace(-1.0, 3.0, 8, dtype=np.float32)[None, :, None]).astype(np.float16)
    ro = train_readout(x, y, 4, kind, epochs=5, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(4, 8, generator=g) < p for p in (0.9, 0.5, 0.2, 0.05)]
    got = masked_accuracies(ro, [None, *masks], x, y, batch_size=96)
    want = [readout_accuracy(ro, x, y)] + [readout_accuracy(masked(ro, m), x, y) for m in masks]
    assert got == want
    assert len(set(want)) >= 3  # the fixture separates the masks: a scorer ignoring them would fail
