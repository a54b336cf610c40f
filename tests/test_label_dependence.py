"""The per-node test of label dependence (snp.label_dependence) calibrated on fields whose answer is
known: label-blind nodes with and without a large label-independent mean field (size), weak and
strong label dependence under a dominating mean field (power), the pathology that fooled the old
permuted-label SNR, and statistics broken on purpose, which the same checks must catch."""

import math

import numpy as np
import pytest
import torch

from snp_service.snp import (
    SNPAccumulator,
    benjamini_hochberg,
    joined_statistics,
    label_dependence,
    node_mean_statistics,
    node_statistics,
    normalise,
    point_label_dependence,
    point_statistics,
    snr_text,
)

L, X, N = 10, 400, 50
FDR = 0.05


def make_fields(rng, rank: int, mean_scale: float, effect: float, n: int = N, x: int = X,
                balanced: bool = False) -> tuple[torch.Tensor, np.ndarray]:
    """(fields (x, n, L), labels): each node's field vector is its own mean field (times mean_scale),
    label-blind variation of the given rank (rank 1: a seqpool readout, W[:, n] times one value), and
    `effect` times a node-specific label profile of the input's label. Labels unbalanced by default."""
    if balanced:
        y = np.arange(x) % L
    else:
        y = rng.choice(L, size=x, p=np.linspace(1.0, 3.0, L) / np.linspace(1.0, 3.0, L).sum())
    mean = rng.normal(size=(n, L)) * mean_scale + mean_scale
    basis = rng.normal(size=(n, rank, L))
    z = rng.normal(size=(x, n, rank))
    f = mean[None] + np.einsum("xnr,nrl->xnl", z, basis)
    if effect:
        if rank == 1:  # the label moves the node's one value: its field stays in span(W[:, n])
            u = rng.normal(size=(n, L))
            f += effect * u[np.arange(n)[None, :], y[:, None]][:, :, None] * basis[None, :, 0, :]
        else:
            profile = rng.normal(size=(n, L, L))
            f += effect * profile[np.arange(n)[None, :], y[:, None]]
    return torch.from_numpy(f), y


def pillai_p(f: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """The service's test, fed in batches as the streaming pass does (shifted second moments)."""
    acc = SNPAccumulator(f.shape[1], L)
    for i in range(0, len(y), 97):
        acc.update(f[i:i + 97], torch.from_numpy(y[i:i + 97]))
    return acc.label_dependence().p_value


def calibrate(p_of, rng, rank: int, mean_scale: float, effect: float, reps: int) -> dict:
    """Per-node rejection rate at 0.05, share of points with any BH rejection (the FWER under a
    complete null), share of nodes BH rejects (power where the nodes depend on the label)."""
    raw, anyrej, frac = [], [], []
    for _ in range(reps):
        f, y = make_fields(rng, rank, mean_scale, effect)
        p = p_of(f, y)
        rej = benjamini_hochberg(p, FDR)
        raw.append(np.mean(p < 0.05))
        anyrej.append(rej.any())
        frac.append(rej.mean())
    return {"size": float(np.mean(raw)), "fwer": float(np.mean(anyrej)), "power": float(np.mean(frac))}


def problems(p_of, seed: int = 0) -> list[str]:
    """The calibration checks, stopping at the first failure; empty when the statistic holds its size
    and has power. Monte Carlo bounds: 2,000 node tests per null case (sd of a 0.05 rate 0.005), 120
    points for the FWER (sd 0.02)."""
    rng = np.random.default_rng(seed)
    for rank in (1, 4):
        strong = calibrate(p_of, rng, rank, 1e3, 0.5, reps=10)
        if strong["power"] < 0.8:
            return [f"rank {rank}: power {strong['power']:.2f} at strong dependence under a large mean field"]
        for scale in (0.0, 1e3):
            c = calibrate(p_of, rng, rank, scale, 0.0, reps=40)
            if not 0.035 <= c["size"] <= 0.065:
                return [f"rank {rank}, mean field {scale:g}: size {c['size']:.3f}"]
        c = calibrate(p_of, rng, rank, 1e3, 0.0, reps=120)
        if c["fwer"] > FDR + 3 * math.sqrt(FDR * (1 - FDR) / 120):
            return [f"rank {rank}: BH's FWER under a complete null {c['fwer']:.3f}"]
    return []


def test_the_service_test_holds_its_size_and_has_power():
    assert problems(pillai_p) == []


def test_weak_dependence_is_found_more_often_than_chance_and_less_than_strong():
    rng = np.random.default_rng(7)
    weak = calibrate(pillai_p, rng, 1, 1e3, 0.12, reps=10)["power"]
    strong = calibrate(pillai_p, rng, 1, 1e3, 0.5, reps=10)["power"]
    assert 0.1 < weak < strong


# ---- statistics broken on purpose: each must fail the checks above


def uncentred_p(f: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Bug: the between-label sum of squares taken about zero instead of the all-input mean, so the
    node's mean field counts as label signal (F on each node's field summed over outputs)."""
    from scipy.stats import f as f_dist

    v = f.sum(dim=2).numpy()  # (X, N)
    counts = np.bincount(y, minlength=L)
    means = np.stack([v[y == k].mean(axis=0) for k in range(L)])  # (L, N)
    between = (counts[:, None] * means ** 2).sum(axis=0) / (L - 1)
    within = sum(((v[y == k] - means[k]) ** 2).sum(axis=0) for k in range(L)) / (len(y) - L)
    return f_dist.sf(between / within, L - 1, len(y) - L)


def labels_ignored_p(f: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """Bug: the labels shuffled before the test (the wrong labels reach it)."""
    return pillai_p(f, np.random.default_rng(0).permutation(y))


def has_cluster_p(f: torch.Tensor, y: np.ndarray) -> np.ndarray:
    """The old service's reading: a node with a cluster in its normalised, thresholded SNP matrix
    "recognises labels" (p 0 when it has one, 1 otherwise)."""
    acc = SNPAccumulator(f.shape[1], L)
    acc.update(f, torch.from_numpy(y))
    ns = node_statistics(normalise(acc.snp_matrices()), 0.3)
    return np.where(ns.has_cluster, 0.0, 1.0)


@pytest.mark.parametrize("broken", [uncentred_p, labels_ignored_p, has_cluster_p])
def test_the_checks_catch_a_broken_statistic(broken):
    assert problems(broken) != []


# ---- the pathology and the pieces


def test_label_specific_nodes_on_a_large_mean_field_are_found_although_their_boolean_matrix_is_a_rectangle():
    """With a dominant positive mean field every row of a node's SNP matrix is nearly the mean field,
    so after max-normalisation the Boolean matrix is a rectangle of all-ones columns whatever the label
    signal: SNR is |K| / (L - |K|) per node, the same as with permuted labels. The test sees the label."""
    rng = np.random.default_rng(3)
    f, y = make_fields(rng, 1, 0.0, 0.0, balanced=True)
    g = torch.from_numpy(rng.uniform(50.0, 100.0, size=(N, L)))  # a large positive mean field
    f = f * 2.0 + g[None]
    for n in range(N):  # node n: +1 on output n % L for inputs of label n % L, small next to the mean field
        f[torch.from_numpy(y == n % L), n, n % L] += 1.0
    acc = SNPAccumulator(N, L)
    acc.update(f, torch.from_numpy(y))
    b = normalise(acc.snp_matrices()) > 0.3
    assert bool((b == b[:, :1, :]).all())  # every row equal: a rectangle of all-ones columns
    dep = acc.label_dependence()
    reject, means = point_label_dependence(dep, FDR)
    assert reject.mean() >= 0.8 and means["label_specific_fraction"].mean() == reject.mean()
    # and a label-blind copy of the same mean field is not found
    blind = SNPAccumulator(N, L)
    blind.update(f, torch.from_numpy(np.random.default_rng(1).permutation(y)))
    assert benjamini_hochberg(blind.label_dependence().p_value, FDR).mean() <= 0.04


def test_a_seqpool_field_gives_exactly_the_one_way_anova():
    from scipy.stats import f_oneway

    rng = np.random.default_rng(2)
    f, y = make_fields(rng, 1, 1e3, 0.2, n=6)
    dep = SNPAccumulator(6, L)
    dep.update(f, torch.from_numpy(y))
    d = dep.label_dependence()
    value = (f - f.mean(dim=0)).numpy() @ np.ones(L)  # any fixed projection of a rank-1 field
    for n in range(6):
        ref = f_oneway(*[value[y == k, n] for k in range(L)])
        assert d.rank[n] == 1 and d.p_value[n] == pytest.approx(ref.pvalue, rel=1e-6)


def test_multivariate_p_values_agree_with_an_exact_permutation_test():
    rng = np.random.default_rng(4)
    f, y = make_fields(rng, 4, 10.0, 0.08, n=4, x=200)
    acc = SNPAccumulator(4, L)
    acc.update(f, torch.from_numpy(y))
    d = acc.label_dependence()
    perms = 2000
    null = np.empty((perms, 4))
    for i in range(perms):
        a = SNPAccumulator(4, L)
        a.update(f, torch.from_numpy(rng.permutation(y)))
        null[i] = a.label_dependence().pillai
    p_perm = (1 + (null >= d.pillai[None] - 1e-12).sum(axis=0)) / (1 + perms)
    assert np.abs(p_perm - d.p_value).max() < 0.03


def test_streaming_batches_and_merged_shards_give_the_same_test():
    rng = np.random.default_rng(5)
    f, y = make_fields(rng, 3, 1e4, 0.1, n=5)
    whole = SNPAccumulator(5, L)
    whole.update(f, torch.from_numpy(y))
    a, b = SNPAccumulator(5, L), SNPAccumulator(5, L)
    a.update(f[:150], torch.from_numpy(y[:150]))
    b.update(f[150:], torch.from_numpy(y[150:]))
    merged = a.merge(b).label_dependence()
    ref = whole.label_dependence()
    assert np.allclose(merged.pillai, ref.pillai, rtol=1e-8) and np.allclose(merged.p_value, ref.p_value, rtol=1e-6)


def test_dead_nodes_and_too_few_inputs():
    acc = SNPAccumulator(2, L)
    y = np.arange(20) % L
    f = torch.zeros(20, 2, L, dtype=torch.float64)
    f[:, 1] = torch.randn(20, L, dtype=torch.float64)
    acc.update(f, torch.from_numpy(y))
    d = acc.label_dependence()
    assert d.rank[0] == 0 and d.eta2[0] == 0 and d.p_value[0] == 1.0  # dead: no variance, nothing to test
    assert math.isnan(d.p_value[1])  # 20 inputs, 10 labels, rank 10: X <= g + r, untestable
    assert not benjamini_hochberg(d.p_value, 0.05).any()


def test_benjamini_hochberg_steps_up():
    p = np.array([0.001, 0.012, 0.014, 0.04, 0.5, np.nan])
    # sorted p_(i) <= i q / m with m = 6 (the nan counts as a test): 0.001 <= 0.0083, 0.012 <= 0.0167,
    # 0.014 <= 0.025, 0.04 > 0.033: the first three
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True, True, False, False, False]
    assert benjamini_hochberg(p, 0.01).tolist() == [True, False, False, False, False, False]


def test_point_statistics_carry_the_fraction_and_effect_size_with_intervals():
    rng = np.random.default_rng(6)
    f, y = make_fields(rng, 1, 1.0, 0.4, n=40)
    blind, yb = make_fields(rng, 1, 1.0, 0.0, n=40)
    acc = SNPAccumulator(80, L)
    acc.update(torch.cat([f, blind], dim=1), torch.from_numpy(y))
    dep = acc.label_dependence()
    reject, means = point_label_dependence(dep, FDR)
    ns = node_statistics(normalise(acc.snp_matrices()), 0.3)
    st = point_statistics(ns, bootstrap=300, seed=0, node_means=means)
    assert st["label_specific_fraction"] == pytest.approx(reject.mean())
    assert 0.35 <= st["label_specific_fraction"] <= 0.6  # the 40 dependent nodes of 80, hardly a blind one
    assert st["label_specific_fraction_lo"] < st["label_specific_fraction"] < st["label_specific_fraction_hi"]
    assert st["effect_size"] == pytest.approx(dep.eta2.mean())
    assert st["effect_size_lo"] < st["effect_size"] < st["effect_size_hi"]


def test_the_label_dependence_statistics_alone_equal_their_share_of_the_point_statistics():
    """The measure stage computes the label-specific fraction and effect size with their intervals
    without clusters (node_mean_statistics); joined with the cluster stage's statistics they are the
    dict one point_statistics call over both gives: same values, same intervals, same key order."""
    rng = np.random.default_rng(8)
    f, y = make_fields(rng, 1, 1.0, 0.4, n=30)
    blind, _ = make_fields(rng, 1, 1.0, 0.0, n=30)
    acc = SNPAccumulator(60, L)
    acc.update(torch.cat([f, blind], dim=1), torch.from_numpy(y))
    _, means = point_label_dependence(acc.label_dependence(), FDR)
    ns = node_statistics(normalise(acc.snp_matrices()), 0.3)
    for bootstrap in (0, 200):
        whole = point_statistics(ns, bootstrap=bootstrap, seed=3, node_means=means)
        parts = joined_statistics(point_statistics(ns, bootstrap=bootstrap, seed=3),
                                  node_mean_statistics(means, bootstrap=bootstrap, seed=3))
        assert list(parts) == list(whole)
        assert all(parts[k] == whole[k] or (parts[k] != parts[k] and whole[k] != whole[k]) for k in whole)


def test_snr_prints_infinite_and_undefined_with_the_reason():
    assert snr_text(float("inf"), float("nan"), float("nan")).startswith("SNR infinite (no noise")
    assert snr_text(float("nan"), float("nan"), float("nan")) == "SNR undefined (no node has a cluster)"
    assert "interval undefined" in snr_text(0.5, float("nan"), 0.7)
    assert snr_text(0.5, 0.4, 0.6) == "SNR 0.50 [0.40, 0.60]"
    assert "nan" not in snr_text(float("inf"), float("nan"), float("nan"))


def test_measure_point_tests_each_node_on_the_true_evaluation_labels(tmp_path):
    """The pipeline's wiring (measure.measure_point), against the literal computation: features with
    a large per-node offset and unbalanced labels (60 / 25 / 10 / 5 per hundred); strong, weak and
    label-blind nodes; evaluation images distinct from the training images. Each node's p-value is
    the one-way ANOVA of its pooled value on the evaluation labels (a seqpool field has rank 1), the
    label-specific fraction is the Benjamini-Hochberg share at analysis.fdr, the effect size the mean
    eta2."""
    from scipy.stats import f_oneway, false_discovery_control

    from snp_service.measure import measure_point
    from snp_service.models import PointInfo
    from snp_service.spec import spec_from_dict
    from tests.conftest import tiny_job

    rng = np.random.default_rng(7)
    nodes, positions, labels = 12, 4, 4
    effect = np.array([1.5] * 4 + [0.25] * 4 + [0.0] * 4)  # strong, weak, blind
    offset = rng.normal(0, 50, size=(1, nodes, 1))

    def split(x):
        y = rng.choice(labels, size=x, p=[0.6, 0.25, 0.1, 0.05])
        centre = rng.normal(size=(labels, nodes))
        f = rng.normal(size=(x, nodes, positions)) + offset + (centre[y] * effect)[:, :, None]
        return f.astype(np.float16), y

    train, train_y = split(600)
    evaluation, eval_y = split(300)
    analysis = spec_from_dict(tiny_job(tmp_path, **{"analysis": {"readout": "seqpool", "readout_epochs": 3,
                                                                 "bootstrap": 0, "fdr": 0.2}})).analysis
    info = PointInfo(name="p", kind="block", nodes=nodes, positions=positions)
    r = measure_point(info, train, train_y, evaluation, eval_y, labels, analysis)

    with torch.no_grad():
        pooled = r.readout.node_activations(torch.from_numpy(evaluation.astype(np.float32)))[:, :, 0].double().numpy()
    p = np.array([f_oneway(*[pooled[eval_y == k, n] for k in range(labels)]).pvalue for n in range(nodes)])
    eta2 = np.array([sum((eval_y == k).sum() * (pooled[eval_y == k, n].mean() - pooled[:, n].mean()) ** 2
                         for k in range(labels)) / ((pooled[:, n] - pooled[:, n].mean()) ** 2).sum()
                     for n in range(nodes)])
    reject = false_discovery_control(p, method="bh") <= analysis.fdr
    assert 0 < reject.sum() < nodes  # the fixture has nodes on both sides
    # and nodes between the default FDR and this job's: a test at another FDR would count otherwise
    assert (false_discovery_control(p, method="bh") <= 0.05).sum() < reject.sum()
    np.testing.assert_allclose(r.dependence["p_value"], p, rtol=1e-3)  # measured: before any threshold (issue 27)
    assert r.dependence["label_specific"] == reject.tolist()
    assert r.row["label_specific_fraction"] == reject.mean()
    assert r.row["effect_size"] == pytest.approx(eta2.mean(), rel=1e-3)
    assert r.row["eval_images"] == len(eval_y)


# --- issue 33: every output of the label-dependence test against a reference computed from the samples


def _manova_reference(f: np.ndarray, y: np.ndarray, rel_tol: float = 1e-10):
    """Pillai's trace test of one node from its X samples f (X, L) and labels y, textbook formulas:
    H between-label, T total SSCP about the grand mean, V = tr(H T^+) on T's span (rank r),
    s = min(r, g - 1), m = (|r - (g - 1)| - 1) / 2, n = (X - g - r - 1) / 2, df1 = s (2m + s + 1),
    df2 = s (2n + s + 1), F = (2n + s + 1) / (2m + s + 1) * V / (s - V)."""
    from scipy.stats import f as f_dist

    X = len(y)
    grand = f.mean(0)
    T = (f - grand).T @ (f - grand)
    groups = np.unique(y)
    H = sum((y == k).sum() * np.outer(f[y == k].mean(0) - grand, f[y == k].mean(0) - grand) for k in groups)
    w, v = np.linalg.eigh(T)
    keep = w > rel_tol * w.max()
    r = int(keep.sum())
    T_plus = (v[:, keep] / w[keep]) @ v[:, keep].T
    V = float(np.trace(H @ T_plus))
    g = len(groups)
    s = min(r, g - 1)
    m, n = (abs(r - (g - 1)) - 1) / 2, (X - g - r - 1) / 2
    df1, df2 = s * (2 * m + s + 1), s * (2 * n + s + 1)
    F = (2 * n + s + 1) / (2 * m + s + 1) * V / (s - V)
    return {"pillai": V, "eta2": V / s, "rank": r, "df1": df1, "df2": df2, "f_stat": F, "p_value": f_dist.sf(F, df1, df2)}


def test_the_streamed_test_equals_the_textbook_manova_of_the_samples():
    """Nodes with label effects of several sizes, a large label-independent mean field (which must
    cancel), a rank-deficient field (one output a combination of two others) and a label absent from
    the evaluation images; streamed in batches of unequal size: pillai, eta2, rank, df1, df2, F and p
    of each node equal the reference computed from the samples."""
    rng = np.random.default_rng(4)
    X, N, L = 300, 4, 5
    y = rng.integers(0, 4, X)  # label 4 never occurs: g = 4 of L = 5
    effects = rng.normal(size=(N, L, L))
    f = rng.normal(size=(X, N, L)) + np.array([0.0, 0.2, 0.5, 1.5])[None, :, None] * effects[:, y].transpose(1, 0, 2)
    f += 1e4 * rng.normal(size=(1, N, L))  # a label-independent mean field per node and output
    f[:, 3, 4] = f[:, 3, 0] + 2 * f[:, 3, 1]  # node 3's field spans 4 of its 5 outputs
    acc = SNPAccumulator(N, L)
    for idx in np.split(np.arange(X), [7, 100, 180]):
        acc.update(torch.from_numpy(f[idx]), torch.from_numpy(y[idx]))
    dep = acc.label_dependence()
    for n in range(N):
        ref = _manova_reference(f[:, n], y)
        got = {"pillai": dep.pillai[n], "eta2": dep.eta2[n], "rank": dep.rank[n], "df1": dep.df1[n],
               "df2": dep.df2[n], "f_stat": dep.f_stat[n], "p_value": dep.p_value[n]}
        for k, want in ref.items():
            assert got[k] == pytest.approx(want, rel=1e-6, abs=1e-300), (n, k, got[k], want)
    assert dep.rank.tolist() == [5, 5, 5, 4]
    assert dep.p_value[0] > 1e-3 and dep.p_value[3] < 1e-30  # no effect vs a large one
    # the function itself from plain sums (no shift: second moments about zero), a node at a scale
    # of 1e-3 beside nodes at 1e4 (its rank is its own), and a label seen exactly once (it counts in g)
    y2 = y.copy()
    y2[0] = 4
    f2 = f.copy()
    f2[:, 1] *= 1e-7  # node 1: fields of size ~1e-3 (variance far below 1)
    sums = torch.zeros(N, L, L, dtype=torch.float64)
    sums.index_add_(1, torch.from_numpy(y2), torch.from_numpy(f2).permute(1, 0, 2))
    counts = torch.bincount(torch.from_numpy(y2), minlength=L).double()
    d = torch.from_numpy(f2).permute(1, 0, 2)
    plain = label_dependence(sums, d.transpose(1, 2) @ d, counts)
    for n in (0, 1, 2):  # node 3's 1e4 offsets swamp a second moment about zero: compared above, with a shift
        ref = _manova_reference(f2[:, n], y2)
        assert plain.rank[n] == ref["rank"] and plain.df1[n] == ref["df1"] and plain.df2[n] == ref["df2"]
        assert plain.pillai[n] == pytest.approx(ref["pillai"], rel=1e-4), n


def test_the_edges_of_the_label_dependence_test():
    """A field that the label determines exactly (pillai = s: p = 0, not a float-rounded F); one
    label present (s = 0: eta2 0 and p 1); fewer error degrees of freedom than dimensions (p nan);
    Benjamini-Hochberg at exactly the adjusted p (rejected: <=), on no tests, and with nan kept."""
    y = np.arange(40) % 4
    f = np.eye(4)[y][:, None, :] * 3.0 + 10.0  # (40, 1, 4): the label itself, one-hot, plus a shift
    acc = SNPAccumulator(1, 4)
    acc.update(torch.from_numpy(f), torch.from_numpy(y))
    dep = acc.label_dependence()
    assert dep.rank[0] == 3 and dep.pillai[0] == pytest.approx(3.0) and dep.eta2[0] == pytest.approx(1.0)
    assert dep.p_value[0] == 0.0
    one = SNPAccumulator(1, 3)
    one.update(torch.randn(20, 1, 3, dtype=torch.float64), torch.zeros(20, dtype=torch.long))
    d1 = one.label_dependence()
    assert (d1.eta2[0], d1.p_value[0]) == (0.0, 1.0)
    few = SNPAccumulator(1, 6)
    yy = torch.arange(9) % 3
    few.update(torch.randn(9, 1, 6, dtype=torch.float64), yy)  # X - g - r = 9 - 3 - 6 = 0
    assert np.isnan(few.label_dependence().p_value[0])
    just = SNPAccumulator(1, 6)
    just.update(torch.randn(10, 1, 6, dtype=torch.float64), torch.arange(10) % 3)  # 10 - 3 - 6 = 1: a test
    assert 0.0 < just.label_dependence().p_value[0] <= 1.0
    p = np.array([0.01, 0.02, 0.03, 0.5])  # BH-adjusted: 0.04, 0.04, 0.04, 0.5
    assert benjamini_hochberg(p, 0.04).tolist() == [True, True, True, False]
    assert benjamini_hochberg(p, 0.039).tolist() == [False] * 4
    assert benjamini_hochberg(np.array([]), 0.05).tolist() == []
    assert benjamini_hochberg(np.array([0.001, np.nan]), 0.05).tolist() == [True, False]
    assert benjamini_hochberg([0.001], 0.05).dtype == bool and benjamini_hochberg([0.001], 0.05).tolist() == [True]
    assert benjamini_hochberg([0.01, 0.5], 0.02).tolist() == [True, False]  # adjusted 0.02 (exact) <= 0.02
