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


# --- issue 33: survivors of prune.py under mutmut


def _pruning_fixture():
    """A seqpool readout on separable features (8 nodes, 4 labels) and matrices whose ANDC mask at 0.3
    leaves some nodes without any connection."""
    from snp_service.measure import snp_accumulate
    from snp_service.readout import train_readout
    from snp_service.snp import normalise

    x, y = _separable(n=400, nodes=8, labels=4, seed=6)
    ro = train_readout(x, y, 4, "seqpool", epochs=6, lr=1e-2)
    m = normalise(snp_accumulate(ro, x, y, 4).snp_matrices())
    m[4:] = -m[4:].abs()  # nodes 4-7: no positive maximum, no cluster, no connection
    return ro, m, x, y


def test_every_andc_row_and_curve_row_holds_what_its_column_says():
    from snp_service.prune import ANDC_COLUMNS, CURVE_COLUMNS

    ro, m, x, y = _pruning_fixture()
    rows, curve = prune_point("blocks.1.out", ro, m, x, y, x, y, 0.3, [0.2, 0.6], ["random", "magnitude"], 2, 5e-3,
                              seed=4, selection="heldout: test")
    masks = baseline_masks(andc_mask_at(m, 0.3), ro.weight, ["random", "magnitude"], 4)
    full = readout_accuracy(ro, x, y)
    assert len({r["accuracy_pruned"] for r in rows} | {full}) > 2  # the fixture separates the numbers
    for r, (method, mask) in zip(rows, masks.items()):
        assert set(r) == set(ANDC_COLUMNS)
        assert r == {"point": "blocks.1.out", "method": method, "selection": "heldout: test", "threshold": 0.3,
                     "kept_fraction": float(mask.float().mean()),
                     "nodes_without_connection": int((mask.sum(0) == 0).sum()), "accuracy_full": full,
                     "accuracy_pruned": readout_accuracy(masked(ro, mask), x, y),
                     "accuracy_finetuned": readout_accuracy(finetune(ro, mask, x, y, 2, 5e-3, 4), x, y),
                     "finetune_epochs": 2}
    assert rows[0]["nodes_without_connection"] == 5  # nodes 4-7 and node 0 (3 nodes keep one label each)
    for c, th in zip(curve, [0.2, 0.6]):
        assert set(c) == set(CURVE_COLUMNS)
        assert c == {"point": "blocks.1.out", "threshold": th, "selection": "heldout: test",
                     "kept_fraction": float(andc_mask_at(m, th).float().mean()),
                     "accuracy_pruned": readout_accuracy(masked(ro, andc_mask_at(m, th)), x, y),
                     "accuracy_full": full, "labels": 4}


def test_the_solved_path_scores_and_fine_tunes_the_linear_part():
    """solver lbfgs: the seqpool readout's pooling applied once (readout.linear_part), the masks scored
    on W alone and the fine-tunes solved: the same accuracies as the readout itself gives (pooling in
    other batches changes no prediction here), and the solved fine-tunes, not stepped ones."""
    ro, m, x, y = _pruning_fixture()
    rows, curve = prune_point("p", ro, m, x, y, x, y, 0.3, [0.2], ["random"], 2, 5e-3, seed=4, solver="lbfgs")
    masks = baseline_masks(andc_mask_at(m, 0.3), ro.weight, ["random"], 4)
    for r, mask in zip(rows, masks.values()):
        assert r["accuracy_full"] == readout_accuracy(ro, x, y)
        assert r["accuracy_pruned"] == readout_accuracy(masked(ro, mask), x, y)
        assert r["accuracy_finetuned"] == readout_accuracy(finetune(ro, mask, x, y, 2, 5e-3, 4, solver="lbfgs"), x, y)
    stepped, _ = prune_point("p", ro, m, x, y, x, y, 0.3, [0.2], ["random"], 2, 5e-3, seed=4)
    assert [r["accuracy_finetuned"] for r in rows] != [r["accuracy_finetuned"] for r in stepped]
    assert curve[0]["accuracy_pruned"] == readout_accuracy(masked(ro, andc_mask_at(m, 0.2)), x, y)


def test_the_cluster_solver_s_time_limit_reaches_every_mask(monkeypatch):
    import snp_service.prune as prune_module

    seen = []
    real = prune_module.node_clusters

    def spy(m, threshold, order, time_limit_s):
        seen.append((order, time_limit_s))
        return real(m, threshold, order, time_limit_s)

    monkeypatch.setattr(prune_module, "node_clusters", spy)
    ro, m, x, y = _pruning_fixture()
    prune_point("p", ro, m, x, y, x, y, 0.3, [0.2, 0.6], [], 0, 1e-3, order="label", time_limit_s=7.5)
    assert seen and set(seen) == {("label", 7.5)}
    seen.clear()
    andc_mask_at(m, 0.3, "diagonal", 2.5)
    assert set(seen) == {("diagonal", 2.5)} and len(seen) == len(m)
    tuned = []  # the fine-tunes get the job's seed and solver
    real_finetune = prune_module.finetune
    monkeypatch.setattr(prune_module, "finetune", lambda *a, **k: tuned.append((a[6], k)) or real_finetune(*a, **k))
    prune_point("p", ro, m, x, y, x, y, 0.3, [], ["random"], 1, 1e-3, seed=9)
    assert tuned == [(9, {"solver": "adam"})] * 2
    tuned.clear()
    rows, _ = prune_point("p", ro, m, x, y, x, y, 0.3, [], [], 1, 1e-3)  # the defaults: seed 0, selection "eval"
    assert tuned == [(0, {"solver": "adam"})] and rows[0]["selection"] == "eval"


def test_the_stepped_fine_tune_is_adam_on_the_surviving_weights_without_weight_decay():
    """finetune (adam) = fit_on_features on the masked readout's weight alone: no weight decay, the
    given seed and batch (defaults 0 and 256), the mask re-applied after every step; one epoch is a
    fine-tune too; afterwards every parameter trains again (requires_grad restored)."""
    from snp_service.readout import fit_on_features

    ro, m, x, y = _pruning_fixture()
    mask = andc_mask_at(m, 0.3)
    for epochs, seed, batch in ((1, 0, 256), (2, 3, 64)):
        want = masked(ro, mask)
        keep = mask[:, :, None].to(want.weight)
        for p in want.parameters():
            p.requires_grad_(p is want.weight)
        want.train()

        def remask():
            with torch.no_grad():
                want.weight.mul_(keep)

        torch.manual_seed(seed)
        fit_on_features(want, [want.weight], x, y, epochs, 5e-2, 0.0, seed, batch, remask)
        got = finetune(ro, mask, x, y, epochs, 5e-2, seed, batch_size=batch)
        assert torch.equal(got.weight, want.weight), (epochs, seed, batch)
        assert not torch.equal(got.weight, masked(ro, mask).weight)
        assert all(p.requires_grad for p in got.parameters())
    assert torch.equal(finetune(ro, mask, x, y, 1, 5e-2).weight,
                       finetune(ro, mask, x, y, 1, 5e-2, 0, batch_size=256, solver="adam").weight)


def test_magnitude_ties_keep_the_lower_labels_among_many():
    """40 labels of equal |W| at a node (numpy's default sort is not stable above 16 elements)."""
    w = torch.ones(40, 3, 2)
    w[:, 1] *= torch.linspace(1, 2, 40)[:, None]  # node 1: no ties, the largest last
    got = magnitude_mask(w, torch.tensor([5, 5, 17]))
    assert got[:, 0].nonzero().flatten().tolist() == list(range(5))
    assert got[:, 1].nonzero().flatten().tolist() == list(range(35, 40))
    assert got[:, 2].nonzero().flatten().tolist() == list(range(17))
    norms = torch.from_numpy(np.random.default_rng(0).integers(1, 4, size=(40, 3)).astype(np.float32))
    counts = torch.tensor([10, 20, 5])
    got = magnitude_mask(norms[:, :, None], counts)  # three distinct sizes: many ties at every node
    for n in range(3):
        want = sorted(range(40), key=lambda k: (-float(norms[k, n]), k))[:int(counts[n])]
        assert got[:, n].nonzero().flatten().tolist() == sorted(want), n


def test_selection_rows_are_distinct_and_at_least_one():
    from snp_service.prune import selection_rows

    assert len(selection_rows(100, 0.001, 0)) == 1
    rows = selection_rows(100, 0.9, 1)
    assert len(rows) == 90 and len(set(rows.tolist())) == 90


def test_unit_scores_of_the_criteria():
    from snp_service.models import create_model
    from snp_service.prune import RandomLabels, SNPCriterion, WeightMagnitude
    from snp_service.structural import ff_magnitude, head_magnitude

    block = create_model("cct_2_3x2_32", num_classes=4, img_size=32).blocks[0]
    ff, heads = WeightMagnitude().unit_scores(block, None, None, 2)
    assert np.array_equal(ff, ff_magnitude(block)) and np.array_equal(heads, head_magnitude(block))
    eta = np.arange(128, dtype=np.float64)
    ff, heads = SNPCriterion().unit_scores(block, eta, eta, 2)
    assert np.array_equal(ff, eta) and heads.tolist() == [eta[:64].mean(), eta[64:].mean()]
    assert SNPCriterion().unit_scores(block, None, None, 2) == (None, None)
    assert RandomLabels().seed == 0
