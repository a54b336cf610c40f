"""The SNP core against the literal definition and on hand-built matrices with known clusters."""

import itertools
import math

import numpy as np
import pytest
import torch

from snp_service.clusters import clusters
from snp_service.snp import (
    SNPAccumulator,
    fields,
    fields_literal,
    node_statistics,
    normalise,
    point_statistics,
)

# (X inputs, N nodes, P positions): a conv map, a `flatten` transformer readout, a `seqpool` one
POINT_KINDS = {"conv_map": (40, 16, 9), "flatten_tokens": (30, 12, 64), "seqpool": (50, 128, 1)}


@pytest.mark.parametrize("kind", POINT_KINDS)
def test_one_pass_fields_equal_literal_silencing(kind):
    g = torch.Generator().manual_seed(1)
    X, N, P = POINT_KINDS[kind]
    acts = torch.randn(X, N, P, generator=g, dtype=torch.float64)
    w = torch.randn(7, N, P, generator=g, dtype=torch.float64)
    fast, ref = fields(acts, w), fields_literal(acts, w)
    assert (fast - ref).abs().max() / ref.abs().max() <= 1e-5
    # and the fields of all nodes add up to the full readout's logits
    torch.testing.assert_close(fast.sum(1), acts.reshape(X, -1) @ w.reshape(7, -1).T)


def test_seqpool_snp_matrix_is_rank_one():
    g = torch.Generator().manual_seed(0)
    pooled, y = torch.randn(200, 5, 1, generator=g, dtype=torch.float64), torch.arange(200) % 4
    w = torch.randn(4, 5, 1, generator=g, dtype=torch.float64)
    acc = SNPAccumulator(5, 4)
    acc.update(fields(pooled, w), y)
    m = acc.snp_matrices()
    assert all(torch.linalg.matrix_rank(m[n]) == 1 for n in range(5))


def test_streaming_and_sharded_sums_are_exact():
    g = torch.Generator().manual_seed(2)
    f, y = torch.randn(300, 6, 5, generator=g), torch.randint(0, 5, (300,), generator=g)
    whole = SNPAccumulator(6, 5)
    whole.update(f, y)
    a, b = SNPAccumulator(6, 5), SNPAccumulator(6, 5)
    for i in range(0, 300, 64):
        (a if i < 128 else b).update(f[i:i + 64], y[i:i + 64])
    merged = a.merge(b)
    torch.testing.assert_close(merged.snp_matrices(), whole.snp_matrices(), rtol=1e-12, atol=1e-12)
    expected = torch.stack([f[y == i].double().mean(0) for i in range(5)], dim=1)  # (N, L_true, L_out)
    torch.testing.assert_close(whole.snp_matrices(), expected)


def test_centred_variant_ignores_a_constant_offset():
    g = torch.Generator().manual_seed(3)
    pooled, y = torch.randn(100, 4, 1, generator=g, dtype=torch.float64), torch.arange(100) % 5
    w = torch.randn(5, 4, 1, generator=g, dtype=torch.float64)
    a, b = SNPAccumulator(4, 5), SNPAccumulator(4, 5)
    a.update(fields(pooled, w), y)
    b.update(fields(pooled + 3.0, w), y)
    torch.testing.assert_close(a.snp_matrices(centred=True), b.snp_matrices(centred=True))
    assert not torch.allclose(a.snp_matrices(), b.snp_matrices())


def test_node_label_accuracy_counts_the_nodes_own_argmax():
    f = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]], [[3.0, 0.0]]])  # (X=3, N=1, L=2)
    acc = SNPAccumulator(1, 2)
    acc.update(f, torch.tensor([0, 0, 1]))
    assert acc.node_label_accuracy().tolist() == [[0.5, 0.0]]


def _m(rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_normalise_only_by_a_positive_maximum():
    pos, neg = _m([[2.0, -1.0], [0.5, 1.0]]), _m([[-2.0, -1.0], [-0.5, -4.0]])
    out = normalise(torch.stack([pos, neg]))
    torch.testing.assert_close(out[0], pos / 2)
    torch.testing.assert_close(out[1], neg)  # signs never flipped
    assert clusters(out[1], 0.3) == []


def test_two_disjoint_blocks():
    m = torch.zeros(5, 5, dtype=torch.float64)
    m[:2, :2] = 1.0
    m[3:, 3:] = 0.8
    assert clusters(m, 0.3) == [[0, 1], [3, 4]]
    ns = node_statistics(m[None], 0.3)
    assert (ns.cluster_size[0], ns.n_clusters[0], ns.signal[0], ns.noise[0]) == (4, 2, 8, 0)


def test_ties_are_broken_by_label_then_greedy_membership():
    # 0-1 and 1-2 are mutual, 0-2 is not: equal diagonals, so label 0 opens the first cluster
    m = _m([[1, 1, 0], [1, 1, 1], [0, 1, 1]])
    assert clusters(m, 0.3) == [[0, 1], [2]]
    # raise label 2's diagonal: now 2 opens first and takes 1
    m2 = m.clone()
    m2[2, 2] = 2.0
    assert clusters(normalise(m2[None])[0], 0.3) == [[1, 2], [0]]


def test_one_directional_link_is_noise_not_cluster():
    m = _m([[1.0, 0.9, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.1]])
    assert clusters(m, 0.3) == [[0], [1]]
    ns = node_statistics(m[None], 0.3)
    assert (ns.cluster_size[0], ns.signal[0], ns.noise[0]) == (2, 2, 1)


def test_all_zero_node_and_empty_diagonal_have_no_cluster():
    zero = torch.zeros(3, 3, dtype=torch.float64)
    off = _m([[0.0, 1.0, 1.0], [1.0, 0.1, 0.0], [0.0, 0.0, 0.0]])  # diagonal under th
    good = torch.eye(3, dtype=torch.float64)
    ns = node_statistics(normalise(torch.stack([zero, off, good])), 0.3)
    assert ns.has_cluster.tolist() == [False, False, True]
    assert ns.noise.tolist() == [0, 3, 0]
    stats = point_statistics(ns, bootstrap=0)
    assert stats["frac_no_cluster"] == pytest.approx(2 / 3)
    assert stats["mean_noise"] == 0  # nodes without a cluster are left out of the noise mean
    assert stats["snr"] == math.inf and math.isnan(stats["snr_lo"])


def test_point_statistics_and_seeded_bootstrap():
    g = torch.Generator().manual_seed(4)
    m = normalise(torch.rand(64, 6, 6, generator=g, dtype=torch.float64) - 0.2)
    ns = node_statistics(m, 0.5)
    s1, s2 = point_statistics(ns, 500, seed=7), point_statistics(ns, 500, seed=7)
    assert s1 == s2
    has = ns.has_cluster
    assert s1["mean_cluster_size"] == pytest.approx(ns.cluster_size[has].mean())
    assert s1["snr"] == pytest.approx(ns.signal[has].mean() / ns.noise[has].mean())
    assert s1["noise_per_label"] == pytest.approx(np.mean(ns.noise[has] / ns.cluster_size[has]))
    for k in ("mean_cluster_size", "mean_noise", "snr", "frac_no_cluster"):
        assert s1[f"{k}_lo"] <= s1[k] <= s1[f"{k}_hi"], k
    assert point_statistics(ns, 500, seed=8) != s1


# ---- issue 15: honest statistics -------------------------------------------------------------

def test_a_dead_node_is_never_credited_with_label_0():
    f = torch.zeros(4, 2, 3)  # node 0 dead (field exactly zero); node 1 always votes label 0
    f[:, 1, 0] = 1.0
    acc = SNPAccumulator(2, 3)
    acc.update(f, torch.tensor([0, 0, 1, 2]))
    assert acc.node_label_accuracy()[0].tolist() == [0.0, 0.0, 0.0]
    assert acc.node_label_accuracy()[1].tolist() == [1.0, 0.0, 0.0]
    assert acc.node_accuracy().tolist() == [0.0, 0.5]


def _linked(n, pairs):
    m = torch.eye(n, dtype=torch.float64)
    for a, b in pairs:
        m[a, b] = m[b, a] = 1.0
    return m


def test_a_clique_is_not_split_by_a_link_into_it():
    # a 0-1 link plus the clique {1, 2, 3}: the greedy rule gave {0, 1}, {2, 3} (signal 8)
    m = _linked(4, [(0, 1), (1, 2), (1, 3), (2, 3)])
    assert clusters(m, 0.3) == [[0], [1, 2, 3]]
    ns = node_statistics(m[None], 0.3)
    assert (ns.signal[0], ns.noise[0]) == (10, 2)


def _brute_best_signal(b: np.ndarray) -> int:
    """Largest sum |S|^2 over all partitions of the candidates into mutual cliques (exhaustive)."""
    cand = [j for j in range(len(b)) if b[j, j]]
    mutual = b & b.T

    def best(rest):
        if not rest:
            return 0
        first, others = rest[0], rest[1:]
        top = 0
        for k in range(len(others) + 1):
            for combo in itertools.combinations(others, k):
                s = (first,) + combo
                if all(mutual[a, c] for a in s for c in s):
                    top = max(top, len(s) ** 2 + best([x for x in others if x not in combo]))
        return top

    return best(cand)


def test_clusters_reach_the_best_partition_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(150):
        L = int(rng.integers(3, 8))
        m = torch.from_numpy(rng.random((L, L)) * (rng.random((L, L)) < 0.7))
        cs = clusters(normalise(m[None])[0], 0.3)
        b = (normalise(m[None])[0] > 0.3).numpy()
        flat = [j for c in cs for j in c]
        assert sorted(flat) == [j for j in range(L) if b[j, j]]  # a partition of the candidates
        assert all(b[a, c] for s in cs for a in s for c in s)  # every block all ones
        assert sum(len(s) ** 2 for s in cs) == _brute_best_signal(b)


def _signal(cs) -> int:
    return sum(len(s) ** 2 for s in cs)


def test_the_integer_program_reaches_the_brute_force_best_partition_on_random_components():
    """milp_partition (used above EXACT_MAX_LABELS) against exhaustive search and the subset dynamic
    programme on components small enough for both."""
    from snp_service.clusters import best_partition, milp_partition

    rng = np.random.default_rng(3)
    for _ in range(60):
        c, p = int(rng.integers(3, 10)), rng.uniform(0.3, 0.9)
        upper = np.triu(rng.random((c, c)) < p, 1)
        b = upper | upper.T | np.eye(c, dtype=bool)
        comp = list(range(c))
        cs = milp_partition(comp, b, 10.0)
        assert cs is not None and sorted(j for s in cs for j in s) == comp  # a partition
        assert all(b[a, d] for s in cs for a in s for d in s)  # of all-ones blocks
        assert _signal(cs) == _brute_best_signal(b) == _signal(best_partition(comp, b))


def test_the_integer_program_partitions_a_component_inside_a_larger_label_set():
    """A component is a subset of the labels, in no particular order (as clusters_of passes them):
    the program reads the links among the component's labels only and returns those labels."""
    from snp_service.clusters import milp_partition

    rng = np.random.default_rng(5)
    for _ in range(30):
        L, c = int(rng.integers(9, 14)), int(rng.integers(4, 8))
        upper = np.triu(rng.random((L, L)) < 0.6, 1)
        b = upper | upper.T | np.eye(L, dtype=bool)
        comp = [int(j) for j in rng.permutation(L)[:c]]
        cs = milp_partition(comp, b, 10.0)
        assert cs is not None and sorted(j for s in cs for j in s) == sorted(comp)
        assert all(b[a, d] for s in cs for a in s for d in s)
        sub = b[np.ix_(comp, comp)]
        assert _signal(cs) == _brute_best_signal(sub)


def test_the_integer_program_asks_the_solver_for_a_proved_optimum_within_the_time_left(monkeypatch):
    """Each solve is bounded by the time left of `time_limit_s` and demands a zero optimality gap (a
    solution HiGHS has not proved optimal is not an exact partition); binary variables, bounds 0-1."""
    import scipy.optimize

    from snp_service.clusters import milp_partition

    calls = []
    real = scipy.optimize.milp

    def spy(c, **kwargs):
        calls.append(kwargs)
        return real(c, **kwargs)

    monkeypatch.setattr(scipy.optimize, "milp", spy)
    b = (_bridged_cliques(2) > 0.3).numpy()
    cs = milp_partition(list(range(8)), b, 30.0)
    assert _signal(cs) == _brute_best_signal(b)
    assert calls
    for kw in calls:
        assert set(kw["options"]) == {"time_limit", "mip_rel_gap"} and kw["options"]["mip_rel_gap"] == 0.0
        assert 0.0 < kw["options"]["time_limit"] <= 30.0
        assert (kw["bounds"].lb, kw["bounds"].ub) == (0, 1) and np.all(kw["integrality"] == 1)


def _bridged_cliques(blocks: int) -> torch.Tensor:
    """One linked component of 4 * blocks labels on which the greedy rule fails: per block a link
    4k-(4k+1) into the clique {4k+1, 4k+2, 4k+3}, and a link (4k+3)-(4k+4) to the next block."""
    pairs = []
    for k in range(blocks):
        a = 4 * k
        pairs += [(a, a + 1), (a + 1, a + 2), (a + 1, a + 3), (a + 2, a + 3)] + ([(a + 3, a + 4)] if k < blocks - 1 else [])
    return _linked(4 * blocks, pairs)


def test_a_component_above_the_dynamic_programmes_limit_is_partitioned_exactly():
    from snp_service.clusters import EXACT_MAX_LABELS, clusters_of, greedy_clusters

    m = _bridged_cliques(4)  # 16 labels, one component, not a clique
    assert len(m) > EXACT_MAX_LABELS
    b = (m > 0.3).numpy()
    cs, greedy = clusters_of(m, 0.3, order="label")
    assert not greedy
    assert sorted(j for s in cs for j in s) == list(range(16)) and all(b[a, d] for s in cs for a in s for d in s)
    assert _signal(cs) == _brute_best_signal(b) == 4 * 10  # {4k}, {4k+1, 4k+2, 4k+3} per block
    assert _signal(greedy_clusters(list(range(16)), b & b.T)) == 4 * 8 < _signal(cs)  # what the fallback gives
    ns = node_statistics(m[None], 0.3, order="label")
    assert (ns.signal[0], ns.noise[0], bool(ns.greedy[0])) == (40, int(b.sum()) - 40, False)


def test_the_greedy_fallback_runs_only_when_the_solver_runs_out_of_time():
    from snp_service.clusters import clusters_of, greedy_clusters

    m = _bridged_cliques(4)
    cs, greedy = clusters_of(m, 0.3, order="label", time_limit_s=1e-9)
    b = (m > 0.3).numpy()
    assert greedy and cs == sorted(sorted(s) for s in greedy_clusters(list(range(16)), b & b.T))
    assert node_statistics(m[None], 0.3, "label", time_limit_s=1e-9).greedy.tolist() == [True]
    assert node_statistics(m[None], 0.3, "label").greedy.tolist() == [False]


def test_the_exact_partition_maximises_the_sum_of_squared_sizes_not_another_power():
    """A 9-label component (found by search) where the partition with the largest sum of cubed
    sizes has a smaller sum of squares (25) than the best (27): the dynamic programme must score
    squares."""
    from snp_service.clusters import best_partition

    pairs = [(0, 1), (0, 2), (0, 4), (0, 7), (1, 2), (1, 3), (1, 5), (1, 6), (1, 8), (2, 3), (2, 4), (2, 6), (2, 7),
             (3, 6), (3, 7), (3, 8), (4, 5), (4, 8), (5, 6), (5, 7), (6, 7), (7, 8)]
    b = np.eye(9, dtype=bool)
    for a, c in pairs:
        b[a, c] = b[c, a] = True
    cs = best_partition(list(range(9)), b)
    assert _signal(cs) == _brute_best_signal(b) == 27


def test_clusters_passes_its_time_limit_on_and_refuses_an_unknown_order():
    """clusters() hands its solver time limit to clusters_of (a limit it dropped would let the solver
    run to the default); an unknown candidate order is refused by name; `greedy` is a bool."""
    from snp_service.clusters import CANDIDATE_ORDERS, clusters_of, greedy_clusters

    m = _bridged_cliques(4)
    b = (m > 0.3).numpy()
    assert clusters(m, 0.3, "label", time_limit_s=1e-9) == sorted(sorted(s) for s in greedy_clusters(list(range(16)), b & b.T))
    assert _signal(clusters(m, 0.3, "label")) == 40
    with pytest.raises(ValueError, match=r"candidate order 'sideways': expected one of") as err:
        clusters_of(m, 0.3, order="sideways")
    assert str(CANDIDATE_ORDERS) in str(err.value)
    assert clusters_of(m, 0.3, order="label")[1] is False  # a solved component
    assert clusters_of(_linked(4, [(0, 1), (1, 2)]), 0.3)[1] is False  # exact by the dynamic programme only


def test_bca_interval_agrees_with_scipy_on_a_skewed_mean():
    from scipy.stats import bootstrap

    from snp_service.snp import bca_interval

    x = np.random.default_rng(1).exponential(size=80)
    boot = x[np.random.default_rng(2).integers(0, 80, size=(20000, 80))].mean(axis=1)
    jack = np.array([np.delete(x, i).mean() for i in range(80)])
    lo, hi = bca_interval(x.mean(), boot, jack, 0.95)
    ref = bootstrap((x,), np.mean, n_resamples=20000, method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert lo == pytest.approx(ref.low, rel=0.03) and hi == pytest.approx(ref.high, rel=0.03)
    # BCa is not the percentile interval: for a right-skewed mean it shifts right
    plo, phi = np.quantile(boot, [0.025, 0.975])
    assert hi > phi and lo > plo


def test_an_interval_with_undefined_resamples_is_undefined_not_silently_narrowed():
    # 40 nodes, one with a cluster: many resamples hold no node with a cluster (statistic nan)
    m = torch.zeros(40, 3, 3, dtype=torch.float64)
    m[0] = torch.eye(3, dtype=torch.float64)
    stats = point_statistics(node_statistics(m, 0.3), bootstrap=200, seed=0)
    assert stats["mean_cluster_size"] == 3
    assert math.isnan(stats["mean_cluster_size_lo"]) and math.isnan(stats["mean_cluster_size_hi"])
    assert not math.isnan(stats["frac_no_cluster_lo"])  # defined in every resample


def test_intervals_print_through_one_function_and_an_undefined_one_prints_nothing():
    from snp_service.snp import interval_text, point_line

    assert interval_text(0.1234, 0.5, 3) == " [0.123, 0.500]"
    assert interval_text(float("nan"), 0.5) == interval_text(None, 0.5) == ""
    row = {"readout_accuracy": 0.5, "label_specific_fraction": 0.25, "label_specific_fraction_lo": 0.1,
           "label_specific_fraction_hi": 0.4, "fdr": 0.05, "effect_size": 0.1234, "effect_size_lo": float("nan"),
           "effect_size_hi": 0.2, "mean_cluster_size": 2.0, "mean_noise": 1.0, "snr": 1.5, "snr_lo": 1.0,
           "snr_hi": 2.0, "frac_no_cluster": 0.0}
    line = point_line(row)
    assert "label-specific 0.25 [0.10, 0.40] (FDR 0.05)" in line and "eta2 0.123  " in line


def test_the_normalise_mode_decodes_in_one_place():
    from snp_service.snp import NORMALISATIONS, normalisation_flags

    assert [normalisation_flags(m) for m in NORMALISATIONS] == [(False, False), (True, False), (False, True)]
    with pytest.raises(ValueError, match="normalisation 'maximum'"):
        normalisation_flags("maximum")


# --- issue 33: edges the suite never reached


def test_a_value_exactly_at_the_threshold_is_not_a_one():
    """B = M > th, strictly (METHOD.md 2.6): an entry equal to the threshold is a zero, so a label
    whose diagonal equals it is no candidate and a link at it is no link."""
    from snp_service.clusters import boolean

    th = 0.5
    m = torch.tensor([[1.0, th, 0.0], [th, 0.8, 0.0], [0.0, 0.0, th]], dtype=torch.float64)
    assert boolean(m, th).tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    assert clusters(m, th) == [[0], [1]]  # not {0, 1} (linked only at th), and no {2}
    ns = node_statistics(m[None], th)
    assert ns.signal.tolist() == [2] and ns.noise.tolist() == [0]


def test_a_linked_group_above_the_exact_limit_gets_only_all_ones_clusters():
    """A star of 12 labels (0 linked with each other label, no other links) is not a clique and is
    too large for the exact partition: the fallback rule must still return all-ones blocks."""
    from snp_service.clusters import EXACT_MAX_LABELS, clusters_of

    L = EXACT_MAX_LABELS + 2
    m = torch.zeros(L, L, dtype=torch.float64)
    m.fill_diagonal_(1.0)
    m[0, 0] = 2.0  # the hub first in diagonal order
    m[0, 1:] = m[1:, 0] = 0.9
    mn = normalise(m[None])[0]
    b = (mn > 0.3).numpy()
    # the greedy fallback (a solver given no time) and the exact integer program: both all-ones blocks
    for limit, want_greedy in ((0.0, True), (30.0, False)):
        found, greedy = clusters_of(mn, 0.3, time_limit_s=limit)
        assert greedy == want_greedy
        for s in found:
            assert b[np.ix_(s, s)].all(), s  # every block all ones
        assert sorted(i for s in found for i in s) == list(range(L))  # a partition of the candidates
        assert sum(len(s) ** 2 for s in found) == 4 + (L - 2)  # a star's best: one pair, the rest alone
    assert clusters_of(mn, 0.3, time_limit_s=0.0)[0][0] == [0, 1]  # greedy: the hub takes its first linked label


def test_ties_with_theta_in_the_bootstrap_count_half():
    """BCa's bias correction counts replicates equal to theta as half below: with as many
    replicates above as below and a block tied at theta, z0 = 0, so (with no acceleration) the
    interval is the percentile interval itself."""
    from snp_service.snp import bca_interval

    boot = np.concatenate([np.arange(40.0), np.full(20, 40.0), np.arange(41.0, 81.0)])
    lo, hi = bca_interval(40.0, boot, np.array([1.0]), 0.95)
    assert (lo, hi) == tuple(np.quantile(boot, [0.025, 0.975], method="inverted_cdf"))


def test_centring_with_unbalanced_labels_subtracts_the_mean_over_inputs():
    """Centred M[n, i, k] = mean over inputs of label i of f[x, n, k] minus the mean of f[x, n, k]
    over all inputs (not the mean of the label means): literal, on 90 / 9 / 1 inputs per label."""
    g = torch.Generator().manual_seed(4)
    y = torch.cat([torch.zeros(90), torch.ones(9), torch.full((1,), 2.0)]).long()
    f = torch.randn(100, 2, 3, generator=g, dtype=torch.float64) + torch.tensor([5.0, -1.0, 0.5])
    f[y == 2] += 4.0
    acc = SNPAccumulator(2, 3)
    acc.update(f, y)
    expected = torch.stack([f[y == i].mean(dim=0) - f.mean(dim=0) for i in range(3)], dim=1)  # (N, L, L)
    torch.testing.assert_close(acc.snp_matrices(centred=True), expected)


# --- issue 33: the survivors of snp.py under mutmut (normalisation, BCa, intervals over nodes, the
# accumulator's merge and updates, the console line)


def test_normalise_divides_by_a_positive_maximum_and_afcc_by_any_non_zero_one():
    small = torch.tensor([[[0.5, -1.0], [0.25, 0.0]]], dtype=torch.float64)  # maximum 0.5 (below 1)
    negative = torch.tensor([[[-2.0, -1.0], [-4.0, -3.0]]], dtype=torch.float64)  # maximum -1
    zero = torch.zeros(1, 2, 2, dtype=torch.float64)
    two = small * 4  # maximum 2
    assert torch.equal(normalise(small), small / 0.5) and torch.equal(normalise(two), two / 2)
    assert torch.equal(normalise(negative), negative) and torch.equal(normalise(zero), zero)
    assert torch.equal(normalise(two, afcc=True), two / 2)
    assert torch.equal(normalise(negative, afcc=True), negative / -1.0)  # the AFCC code flips the signs
    assert torch.equal(normalise(zero, afcc=True), zero)


def _bca_by_formula(theta, boot, jack, confidence):
    from statistics import NormalDist

    nd, b = NormalDist(), len(boot)
    prop = ((boot < theta).sum() + 0.5 * (boot == theta).sum()) / b
    z0 = nd.inv_cdf(min(max(prop, 0.5 / b), 1 - 0.5 / b))
    a = 0.0
    if len(jack) > 2 and np.isfinite(jack).all():
        d = jack.mean() - jack
        a = (d ** 3).sum() / (6 * (d ** 2).sum() ** 1.5) if (d ** 2).sum() > 0 else 0.0
    alpha = (1 - confidence) / 2
    q = [nd.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in (nd.inv_cdf(alpha), nd.inv_cdf(1 - alpha))]
    return tuple(float(v) for v in np.quantile(boot, q, method="inverted_cdf"))


def test_bca_interval_is_efrons_formula_at_its_edges():
    """Exact values (Efron 1987) where the bias correction is clipped (theta below or above every
    replicate), with a skewed jackknife (acceleration), two or three jackknife values, a constant or
    infinite jackknife (no acceleration), ties at theta; nan where theta or a replicate is not a number,
    and for no replicates; one replicate is an interval."""
    from snp_service.snp import bca_interval

    boot = np.arange(1, 201) / 10.0
    skewed = np.array([1.0, 2.0, 3.0, 10.0, 0.5])
    cases = [(0.05, skewed), (25.0, skewed), (10.0, skewed), (10.0, np.array([1.0, 4.0])),
             (10.0, np.array([1.0, 2.0, 9.0])), (10.0, np.full(6, 3.0)), (10.0, np.array([1.0, np.inf, 2.0])),
             (5.0, skewed)]
    for theta, jack in cases:
        got = bca_interval(theta, boot, jack, 0.9)
        assert got == _bca_by_formula(theta, boot, jack, 0.9), (theta, jack)
    few = np.arange(1, 21) / 10.0  # 20 replicates: the clip at 0.5 / 20 moves the interval's ends
    for theta in (0.05, 3.0):
        assert bca_interval(theta, few, skewed, 0.9) == _bca_by_formula(theta, few, skewed, 0.9)
    tied = np.array([1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert bca_interval(2.0, tied, skewed, 0.8) == _bca_by_formula(2.0, tied, skewed, 0.8)
    for theta, b in ((np.inf, boot), (np.nan, boot), (1.0, np.array([1.0, np.nan, 2.0])), (1.0, np.array([]))):
        assert all(np.isnan(bca_interval(theta, b, skewed, 0.95)))
    assert bca_interval(1.0, np.array([1.5]), skewed, 0.95) == (1.5, 1.5)


def test_intervals_over_nodes_are_bca_of_seeded_node_resamples_and_the_leave_one_outs():
    """A node statistic's interval, by hand: the point value on all nodes, `bootstrap` multinomial node
    resamples from the seed, the n leave-one-out values (n = 600: more than one chunk of 512), BCa of
    those; no interval for one node or no resamples; an interval from two nodes or one resample."""
    from snp_service.snp import bca_interval, node_mean_statistics

    v = np.random.default_rng(0).exponential(size=600)  # skewed: the acceleration matters
    got = node_mean_statistics({"x": v}, bootstrap=300, confidence=0.9, seed=5)
    w = np.random.default_rng(5).multinomial(600, np.full(600, 1 / 600), size=300)
    boot = w @ v / 600
    jack = (v.sum() - v) / 599
    assert got["x"] == pytest.approx(v.mean(), rel=1e-12)
    lo, hi = bca_interval(v.mean(), boot, jack, 0.9)
    assert (got["x_lo"], got["x_hi"]) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert (got["x_lo"], got["x_hi"]) != bca_interval(v.mean(), boot, np.full(600, v.mean()), 0.9)
    one = node_mean_statistics({"x": v[:1]}, bootstrap=300)
    assert one["x"] == v[0] and np.isnan(one["x_lo"]) and np.isnan(one["x_hi"])
    assert all(np.isnan(node_mean_statistics({"x": v}, bootstrap=0)[k]) for k in ("x_lo", "x_hi"))
    assert np.isfinite(node_mean_statistics({"x": v[:2] + [0, 1]}, bootstrap=50)["x_lo"])
    assert np.isfinite(node_mean_statistics({"x": v}, bootstrap=1)["x_hi"])
    assert node_mean_statistics({"x": v}, bootstrap=50) == node_mean_statistics({"x": v}, bootstrap=50, seed=0)


def test_merging_accumulators_with_different_shifts_equals_one_stream():
    """Sharded accumulation (actors): each shard's second moments are about its own shift (its first
    batch's mean field); merged, the sums, counts, second moments, hits and the test equal one
    accumulator over the whole stream; merging into an empty accumulator takes the other's shift."""
    rng = np.random.default_rng(3)
    X, N, L = 120, 3, 4
    f = torch.from_numpy(rng.normal(size=(X, N, L)) + 50.0 * rng.normal(size=(1, N, L)))
    f[:60] += 7.0  # the shards' first batches have very different means
    y = torch.from_numpy(rng.integers(0, L, X))
    whole = SNPAccumulator(N, L)
    whole.update(f, y)
    a, b = SNPAccumulator(N, L), SNPAccumulator(N, L)
    a.update(f[:60], y[:60])
    b.update(f[60:75], y[60:75])  # b's shift is its first batch's mean, not the mean of all it saw
    b.update(f[75:], y[75:])
    merged = SNPAccumulator(N, L).merge(a).merge(b)
    assert torch.equal(merged.shift, a.shift)
    d = (f - merged.shift).permute(1, 0, 2)
    torch.testing.assert_close(merged.second, d.transpose(1, 2) @ d, rtol=1e-10, atol=1e-6)
    for name in ("sums", "counts", "correct"):
        torch.testing.assert_close(getattr(merged, name), getattr(whole, name), rtol=1e-12, atol=1e-9)
    # second moments about different shifts: compare them about the same point (the total SSCP)
    dm, dw = merged.label_dependence(), whole.label_dependence()
    np.testing.assert_allclose(dm.pillai, dw.pillai, rtol=1e-9)
    np.testing.assert_allclose(dm.p_value, dw.p_value, rtol=1e-7)
    assert merged.correct.sum() > 0


def test_a_batch_of_one_is_counted_and_a_dead_node_predicts_nothing():
    acc = SNPAccumulator(2, 3)
    f = torch.tensor([[[-5.0, -6.0, -7.0], [0.0, 0.0, 0.0]]], dtype=torch.float64)  # node 1 dead (all zero)
    acc.update(f, torch.tensor([0]))
    assert acc.counts.tolist() == [1.0, 0.0, 0.0]
    assert acc.correct[:, 0].tolist() == [1.0, 0.0]  # node 0 predicts label 0; the dead node predicts nothing
    assert acc.node_accuracy().tolist() == [1.0, 0.0]


def test_the_console_line_shows_intervals_at_their_digits_and_greedy_only_when_used():
    from snp_service.snp import point_line

    row = {"readout_accuracy": 0.91234, "label_specific_fraction": 0.5, "label_specific_fraction_lo": 0.25,
           "label_specific_fraction_hi": 0.75, "fdr": 0.05, "effect_size": 0.12345, "effect_size_lo": 0.1,
           "effect_size_hi": 0.15, "mean_cluster_size": 3.456, "mean_noise": 2.0, "snr": 1.5, "snr_lo": 1.0,
           "snr_hi": 2.0, "frac_no_cluster": 0.125}
    base = point_line(row)
    assert "label-specific 0.50 [0.25, 0.75] (FDR 0.05)  eta2 0.123 [0.100, 0.150]" in base
    assert "greedy" not in base and base.endswith("no-cluster 0.12")
    assert point_line({**row, "greedy_fraction": 0.0}) == base
    assert point_line({**row, "greedy_fraction": 0.25}) == base + "  greedy 0.25"
    assert point_line({**row, "greedy_fraction": 1.0}) == base + "  greedy 1.00"


def test_point_statistics_name_every_mean_and_take_snr_as_a_ratio_of_means():
    """Two nodes with clusters (noise 1 and 0: mean noise 0.5, below 1) and one without: every
    statistic by hand; no node with a cluster: the means and SNR are nan, not inf."""
    from snp_service.snp import NodeStatistics

    ns = NodeStatistics(cluster_size=np.array([3, 2, 0]), n_clusters=np.array([1, 2, 0]),
                        signal=np.array([9, 2, 0]), noise=np.array([1, 0, 2]),
                        clusters=[[[0, 1, 2]], [[0], [1]], []], greedy=np.zeros(3, dtype=bool))
    st = point_statistics(ns, bootstrap=0)
    want = {"mean_cluster_size": 2.5, "mean_n_clusters": 1.5, "mean_signal": 5.5, "mean_noise": 0.5,
            "noise_per_label": (1 / 3 + 0) / 2, "snr": 11.0, "frac_no_cluster": 1 / 3}
    for k, v in want.items():
        assert st[k] == pytest.approx(v, rel=1e-12), k
    none = NodeStatistics(cluster_size=np.zeros(2, dtype=int), n_clusters=np.zeros(2, dtype=int),
                          signal=np.zeros(2, dtype=int), noise=np.array([2, 0]), clusters=[[], []],
                          greedy=np.zeros(2, dtype=bool))
    st0 = point_statistics(none, bootstrap=0)
    assert np.isnan(st0["snr"]) and np.isnan(st0["mean_signal"]) and st0["frac_no_cluster"] == 1.0


def test_the_documented_defaults_of_the_statistics_functions(monkeypatch):
    """interval_text prints two digits, the bootstrap takes 1,000 resamples at 95% from seed 0, and SNP
    matrices are uncentred unless asked: callers that rely on the defaults get what the docs say."""
    from snp_service.snp import NodeStatistics, interval_text, node_mean_statistics, snp_matrices_from

    assert interval_text(0.12345, 0.5) == " [0.12, 0.50]"
    v = np.random.default_rng(1).exponential(size=40)
    import snp_service.snp as snp_module

    asked = []
    real = snp_module._with_intervals
    monkeypatch.setattr(snp_module, "_with_intervals",
                        lambda stats, n, b, c, seed: asked.append((b, c, seed)) or real(stats, n, b, c, seed))
    ns = NodeStatistics(cluster_size=np.arange(1, 41), n_clusters=np.ones(40, dtype=int), signal=np.arange(1, 41) ** 2,
                        noise=np.arange(40) % 7, clusters=[[[0]]] * 40, greedy=np.zeros(40, dtype=bool))
    node_mean_statistics({"x": v})
    point_statistics(ns)
    assert asked == [(1000, 0.95, 0), (1000, 0.95, 0)]
    sums = torch.rand(2, 3, 3, dtype=torch.float64)
    counts = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    assert torch.equal(snp_matrices_from(sums, counts), sums / counts[None, :, None])
    acc = SNPAccumulator(1, 2)
    acc.update(torch.tensor([[[2.0, 1.0]]], dtype=torch.float64), torch.tensor([0]))  # label 0 seen once, predicted
    assert acc.node_label_accuracy().tolist() == [[1.0, 0.0]]


def test_a_component_of_exactly_the_exact_limit_breaks_ties_by_the_candidate_order():
    """Up to and including EXACT_MAX_LABELS labels the dynamic programme partitions a component, and
    its deterministic tie-break decides between equally good partitions: a 10-label cycle has two
    perfect matchings, and the programme's enumeration (larger subsets first, then the subset holding
    the later labels) takes {0, 9}; the integer program, one label above the limit, takes the other."""
    from snp_service.clusters import EXACT_MAX_LABELS, clusters_of

    assert EXACT_MAX_LABELS == 10
    m = _linked(10, [(i, (i + 1) % 10) for i in range(10)])
    cs, greedy = clusters_of(m, 0.3, order="label")
    assert cs == [[0, 9], [1, 2], [3, 4], [5, 6], [7, 8]] and greedy is False
