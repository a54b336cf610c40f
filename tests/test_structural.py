import numpy as np
import pytest
import torch
from snp_service.spec import ModelSpec
from snp_service.structural import cost, keep_indices, magnitude_scores, masked_cct, plan, prune_cct


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = ModelSpec(name="cct_2_3x2_32", num_heads=4, embedding_dim=64).build(10, 32).eval()
    return m


def test_keep_indices_removes_lowest_ties_lower_index_first():
    assert keep_indices(np.array([1.0, 0.0, 0.0, 2.0]), 2) == [0, 3]
    assert keep_indices(np.array([1.0, 1.0, 1.0]), 1) == [1, 2]


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_removal_is_exact(model, attention):
    for blk in model.blocks:
        blk.attn.kind = attention
    keep_ff = {0: [0, 3, 5, 9, 20, 63], 1: list(range(0, 64, 2))}
    keep_heads = {0: [1, 3], 1: [2]}
    x = torch.randn(5, 3, 32, 32)
    pruned, ref = prune_cct(model, keep_ff, keep_heads), masked_cct(model, keep_ff, keep_heads)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(pruned(x), model(x), atol=1e-5)  # something was removed
    assert pruned.blocks[0].mlp.linear1.out_features == 6 and pruned.blocks[1].attn.num_heads == 1
    assert pruned.blocks[0].attn.qkv.out_features == 3 * 2 * 16


def test_plan_and_cost_shrink(model):
    keep_ff, keep_heads = plan(model, 0.5, *magnitude_scores(model))
    assert all(len(v) == 32 for v in keep_ff.values()) and all(len(v) == 2 for v in keep_heads.values())
    pruned = prune_cct(model, keep_ff, keep_heads)
    before, after = cost(model, 32, batches=(2,), repeats=1), cost(pruned, 32, batches=(2,), repeats=1)
    assert after["params"] < before["params"] and after["macs_per_image"] < before["macs_per_image"]
    snp_ff = {0: np.arange(64.0), 1: np.arange(64.0)[::-1].copy()}
    keep_ff2, keep_heads2 = plan(model, 0.25, snp_ff, {0: np.array([0.0, 1.0, 2.0, 3.0])})
    assert keep_ff2[0] == list(range(16, 64)) and keep_ff2[1] == list(range(48))
    assert keep_heads2 == {0: [1, 2, 3]}


def test_a_quarter_of_two_heads_removes_one():
    from snp_service.units import units_removed

    assert units_removed(0.25, 2) == 1  # round(0.5) == 0 removed none
    assert [units_removed(0.5, n) for n in (1, 2, 3, 4)] == [1, 1, 2, 2]
    assert units_removed(0.0, 7) == 0


def test_plan_at_a_quarter_removes_one_of_two_heads(model):
    two = ModelSpec(name="cct_2_3x2_32", num_heads=2, embedding_dim=64).build(10, 32)
    _, keep_heads = plan(two, 0.25, *magnitude_scores(two))
    assert all(len(v) == 1 for v in keep_heads.values())


def test_structural_work_on_a_worker_prunes_and_times_on_its_device(tmp_path, cache_env):
    """actors.structural_network, the prune stage's structural work, called in this process (what the
    Ray task runs): the unpruned network first, then each plan's smaller network, timed on the device."""
    from snp_service.actors import evaluate_network, structural_network
    from snp_service.spec import spec_from_dict
    from tests.conftest import tiny_job

    spec = spec_from_dict(tiny_job(tmp_path, **{"model.num_heads": 4, "pruning.structural_fraction": 0.5,
                                                "train.precision": "fp32"}))
    torch.manual_seed(0)
    net = spec.model.build(4, 32).eval()
    keep_ff, keep_heads = plan(net, 0.5, *magnitude_scores(net))
    rows = structural_network(spec.model_dump(mode="json"), net.state_dict(), {"magnitude": (keep_ff, keep_heads)}, 1)
    assert [r["method"] for r in rows] == ["none", "magnitude"]
    assert all(r["latency_device"] == "cpu" and r["latency_ms_b128"] > 0 for r in rows)
    assert rows[1]["params"] < rows[0]["params"] and rows[1]["heads_removed"] == 2
    ev = evaluate_network(spec.model_dump(mode="json"), net.state_dict(), 1)
    assert ev["accuracy"] == rows[0]["accuracy"] and ev["device"] == "cpu"  # fp32 both: the same evaluation
    assert int(ev["confusion"].sum()) == 64


# --- issue 33: removal and scores with realistic weights (non-zero biases, distinct q/k/v rows)


@pytest.fixture
def biased():
    """The CCT with every bias drawn non-zero (a trained network's are; the initial ones are 0)."""
    torch.manual_seed(1)
    m = ModelSpec(name="cct_2_3x2_32", num_heads=4, embedding_dim=64).build(10, 32).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return m


@pytest.mark.parametrize("attention", ["sdpa", "reference"])
def test_removal_is_exact_with_non_zero_biases(biased, attention):
    for blk in biased.blocks:
        blk.attn.kind = attention
    assert all(b.abs().min() > 0 for n, b in biased.named_parameters() if n.endswith("bias"))
    keep_ff = {0: [2, 7, 40, 41], 1: list(range(1, 64, 3))}
    keep_heads = {0: [0, 2], 1: [3]}
    x = torch.randn(4, 3, 32, 32)
    pruned, ref = prune_cct(biased, keep_ff, keep_heads), masked_cct(biased, keep_ff, keep_heads)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), ref(x), rtol=1e-5, atol=1e-5)
    l1 = pruned.blocks[1].mlp.linear1
    torch.testing.assert_close(l1.bias, biased.blocks[1].mlp.linear1.bias[keep_ff[1]], rtol=0, atol=0)


def test_head_magnitude_reads_v_rows_and_proj_columns(biased):
    """|v rows of head h| x |proj columns of head h|, literally; q and k rows scaled far apart so a
    score reading them instead gives other numbers."""
    from snp_service.structural import ff_magnitude, head_magnitude

    blk = biased.blocks[0]
    attn = blk.attn
    h, d = attn.num_heads, attn.head_dim
    with torch.no_grad():
        attn.qkv.weight[:h * d] *= torch.arange(1, h * d + 1, dtype=torch.float32)[:, None]  # q rows
        attn.qkv.weight[h * d:2 * h * d] *= 7.0  # k rows
    w = attn.qkv.weight.detach().double()
    expected = [float(w[2 * h * d + i * d: 2 * h * d + (i + 1) * d].norm()
                      * attn.proj.weight.detach().double()[:, i * d:(i + 1) * d].norm()) for i in range(h)]
    np.testing.assert_allclose(head_magnitude(blk), expected, rtol=1e-6)
    mlp = blk.mlp
    ff = [float(mlp.linear1.weight.detach()[j].double().norm() * mlp.linear2.weight.detach()[:, j].double().norm())
          for j in range(mlp.linear1.out_features)]
    np.testing.assert_allclose(ff_magnitude(blk), ff, rtol=1e-6)


def test_the_snp_unit_score_of_a_head_is_the_mean_eta2_of_its_dimensions():
    from snp_service.prune import SNPCriterion

    eta2 = np.array([0.9, 0.1, 0.0, 0.0, 0.3, 0.3, 0.05, 0.6])  # 4 heads of 2 dimensions
    ff, heads = SNPCriterion().unit_scores(None, eta2[:4], eta2, 4)
    np.testing.assert_array_equal(heads, [0.5, 0.0, 0.3, 0.325])
    np.testing.assert_array_equal(ff, eta2[:4])


def test_cost_counts_one_input_and_a_text_model_gets_its_own_input():
    """MACs are per input (a batch of one, not two); a text model is costed on its own word ids of
    the requested batch (its example_input), an image model on random images."""
    from snp_service.models import create_model
    from snp_service.structural import cost, count_macs, example_input

    img = create_model("cct_2_3x2_32", num_classes=4, img_size=32).eval()
    one = count_macs(img, torch.randn(1, 3, 32, 32))
    assert count_macs(img, torch.randn(2, 3, 32, 32)) == 2 * one
    assert cost(img, 32, batches=(2,), repeats=1)["macs_per_image"] == one
    text = create_model("text_cct_2_k2", 5, 24, vocab_size=60).eval()
    ids = example_input(text, 3, 32)
    assert ids.dtype == torch.long and ids.shape == (3, text.seq_len) and torch.equal(ids, text.example_input(3))
    assert example_input(img, 3, 32).shape == (3, 3, 32, 32)
    assert cost(text, 32, batches=(2,), repeats=1)["macs_per_image"] == count_macs(text, text.example_input(1))
