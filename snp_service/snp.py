"""Single-nodal performance (METHOD.md sections 2.4-2.8 and 2b): fields, SNP matrices, the per-node
test of label dependence, and per-node / per-point statistics with bootstrap intervals over nodes
(the Boolean matrix and its clusters: snp_service.clusters).

Pure tensor code: no Ray, no I/O, no globals. Shapes, by the paper's names:
  X inputs, N nodes of the point, P positions per node (H*W for a conv map, tokens for a
  `flatten` transformer readout, 1 for a `seqpool` readout over pooled values), L labels.
  activations a[x, n, p], readout weight W[k, n, p] (bias-free), field f[x, n, k].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch

from snp_service.clusters import CLUSTER_TIME_LIMIT_S, boolean, clusters_of


def fields(acts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """f[x, n, k] = sum_p W[k, n, p] a[x, n, p] for every node at once (METHOD.md 2.4).

    The field is linear in the readout, so one contraction gives all nodes' fields."""
    return torch.einsum("xnp,knp->xnk", acts, weight)


def fields_literal(acts: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The definition itself, as a reference: for each node, silence every other node's readout
    weights and run the readout (a Linear over the flattened point)."""
    X, N, P = acts.shape
    L = weight.shape[0]
    flat = acts.reshape(X, N * P)
    out = acts.new_empty(X, N, L)
    for n in range(N):
        silenced = torch.zeros_like(weight)
        silenced[:, n] = weight[:, n]
        out[:, n] = flat @ silenced.reshape(L, N * P).T
    return out


_NORMAL = NormalDist()  # the standard normal (stdlib: the pure core needs no scipy)


@dataclass
class SNPAccumulator:
    """Streaming sums over evaluation inputs, so memory does not grow with their number.

    Two accumulators over disjoint data merge exactly (`merge`), which is how shards reduce.
    Sums are float64 so the order of accumulation does not matter to the result's precision.
    Besides the SNP sums it keeps each node's second moments of its field vector, taken about a
    per-node shift (the first batch's mean field), so a large label-independent mean field does not
    cancel the precision of the label-dependence test (`label_dependence`).
    """

    num_nodes: int
    num_labels: int
    sums: torch.Tensor = field(init=False)  # (N, L_true, L_out): sum of f over inputs of each true label
    counts: torch.Tensor = field(init=False)  # (L,): inputs per true label
    correct: torch.Tensor = field(init=False)  # (N, L): inputs of label i whose node argmax is i
    second: torch.Tensor = field(init=False)  # (N, L_out, L_out): sum of (f - shift)(f - shift)^T
    shift: torch.Tensor | None = field(init=False, default=None)  # (N, L_out)

    def __post_init__(self) -> None:
        N, L = self.num_nodes, self.num_labels
        self.sums = torch.zeros(N, L, L, dtype=torch.float64)
        self.counts = torch.zeros(L, dtype=torch.float64)
        self.correct = torch.zeros(N, L, dtype=torch.float64)
        self.second = torch.zeros(N, L, L, dtype=torch.float64)

    def update(self, f: torch.Tensor, labels: torch.Tensor) -> None:
        # fields may come from any device; the sums stay float64 on the CPU
        f, labels = f.detach().to("cpu", torch.float64), labels.to("cpu", torch.long)
        if len(labels) == 0:
            return
        self.sums.index_add_(1, labels, f.permute(1, 0, 2))
        self.counts += torch.bincount(labels, minlength=self.num_labels).to(torch.float64)
        if self.shift is None:
            self.shift = f.mean(dim=0)
        d = (f - self.shift).permute(1, 0, 2)  # (N, X, L)
        self.second += d.transpose(1, 2) @ d
        # a node whose field is equal on every output (a dead node: exactly zero) makes no
        # prediction; argmax would credit it with label 0
        predicts = f.amax(dim=2) > f.amin(dim=2)
        hit = ((f.argmax(dim=2) == labels[:, None]) & predicts).to(torch.float64)  # (X, N)
        self.correct.index_add_(1, labels, hit.T)

    def merge(self, other: SNPAccumulator) -> SNPAccumulator:
        if other.shift is not None:
            if self.shift is None:
                self.shift = other.shift.clone()
            # other's second moments about its shift, moved to ours: with d = K_o - K and
            # s = sum(f - K_o): sum (f-K)(f-K)^T = S_o + d s^T + s d^T + n d d^T
            d = other.shift - self.shift
            s = other.sums.sum(dim=1) - other.counts.sum() * other.shift
            self.second += (other.second + d[:, :, None] * s[:, None, :] + s[:, :, None] * d[:, None, :]
                            + other.counts.sum() * d[:, :, None] * d[:, None, :])
        self.sums += other.sums
        self.counts += other.counts
        self.correct += other.correct
        return self

    def snp_matrices(self, centred: bool = False) -> torch.Tensor:
        """M[n, i, k]: mean field of node n on output k over inputs of true label i (METHOD.md 2.5).

        centred: subtract each (node, output)'s mean field over all inputs first (METHOD.md 2b)."""
        return snp_matrices_from(self.sums, self.counts, centred)

    def node_label_accuracy(self) -> torch.Tensor:
        """(N, L): how often node n alone (argmax over k of its field) gets label i right (METHOD.md
        2.8). A node whose field is equal on every output makes no prediction and is never right."""
        return self.correct / self.counts.clamp(min=1)[None, :]

    def node_accuracy(self) -> torch.Tensor:
        """(N,): node n's own accuracy over all evaluation inputs (chance: 1 / L)."""
        return self.correct.sum(dim=1) / self.counts.sum().clamp(min=1)

    def label_dependence(self) -> LabelDependence:
        """Each node's test of label dependence on these inputs (see `LabelDependence`)."""
        return label_dependence(self.sums, self.second, self.counts, self.shift)


@dataclass
class LabelDependence:
    """Per node (arrays of length N): does the node's field depend on the evaluation label?

    Null: the node's field vector f[x, n, :] is independent of the true label of x (the readout was
    trained on other images, so this holds for a node that learnt nothing about labels, whatever its
    mean field). Statistic: Pillai's trace V of the one-way MANOVA of the field vector on the true
    label, V = tr(H T^+) with H the between-label and T the total sums of squares and products of the
    field about its all-input mean; T^+ acts on the field's own span (rank r: 1 for a `seqpool`
    readout, where the field is W[:, n] times one pooled value, so V is exactly the ANOVA eta^2 of
    that value). A label-independent shift of the fields (the node's mean field) cancels in H and T,
    so the test cannot see it. Effect size: eta2 = V / s, s = min(r, g - 1) (g labels present), the
    share of the field's variance the label explains, 0 to 1, comparable between points of one
    readout kind. p-value: Pillai's F approximation (exact when s = 1: the one-way ANOVA F-test);
    its size is checked in tests/test_label_dependence.py on label-blind fields with and without a
    large mean field. A node with no variance (dead) has r = 0, eta2 0 and p 1; p is nan where the
    inputs are too few to test (X <= g + r)."""

    pillai: np.ndarray
    eta2: np.ndarray
    rank: np.ndarray
    df1: np.ndarray
    df2: np.ndarray
    f_stat: np.ndarray
    p_value: np.ndarray


def label_dependence(sums: torch.Tensor, second: torch.Tensor, counts: torch.Tensor,
                     shift: torch.Tensor | None = None, rel_tol: float = 1e-10) -> LabelDependence:
    """Pillai's trace test per node from streaming sums: sums (N, L, L) of fields per true label,
    second (N, L, L) sum of (f - shift)(f - shift)^T over all inputs, counts (L,)."""
    from scipy.stats import f as f_dist  # lazily: the rest of the core runs without scipy

    sums, second, counts = sums.double(), second.double(), counts.double()
    N, _, L = sums.shape
    X = float(counts.sum())
    shift = torch.zeros(N, L, dtype=torch.float64) if shift is None else shift.double()
    present = counts > 0
    g = int(present.sum())
    centre = sums.sum(dim=1) / max(X, 1.0) - shift  # all-input mean field minus the shift, (N, L)
    total = second - X * centre[:, :, None] * centre[:, None, :]
    means = sums[:, present] / counts[present][None, :, None]  # (N, g, L)
    dev = means - (centre + shift)[:, None, :]
    # one batched matmul: torch.einsum("nik,nil,i->nkl", ...) took 36 s at 128 nodes x 102 labels (it
    # materialised an (N, g, L, L) product), this 0.02 s (bench/bench_label_dependence.py)
    between = (dev * counts[present][None, :, None]).transpose(1, 2) @ dev
    total = (total + total.transpose(1, 2)) / 2
    evals, evecs = torch.linalg.eigh(total)
    top = evals.amax(dim=-1, keepdim=True)
    keep = evals > (rel_tol * top).clamp(min=1e-300)
    rank = keep.sum(dim=-1)
    a = evecs * torch.where(keep, evals.clamp(min=1e-300).rsqrt(), torch.zeros_like(evals))[:, None, :]
    pillai = (a * (between @ a)).sum(dim=(1, 2)).numpy()
    r = rank.numpy().astype(np.float64)
    s = np.minimum(r, g - 1.0)
    m = (np.abs(r - (g - 1.0)) - 1.0) / 2.0
    nn = (X - g - r - 1.0) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        pillai = np.clip(pillai, 0.0, np.where(s > 0, s, 0.0))
        eta2 = np.where(s > 0, pillai / np.where(s > 0, s, 1.0), 0.0)
        df1 = s * (2 * m + s + 1)
        df2 = s * (2 * nn + s + 1)
        f_stat = (2 * nn + s + 1) / (2 * m + s + 1) * pillai / (s - pillai)
        p = np.where(s - pillai <= 1e-12 * np.maximum(s, 1.0), 0.0, f_dist.sf(f_stat, df1, df2))
    testable = X - g - r >= 1  # fewer error degrees of freedom than dimensions: the trace is not a test
    p = np.where(s <= 0, 1.0, np.where(testable, p, np.nan))
    return LabelDependence(pillai, eta2, r, df1, df2, f_stat, p)


def benjamini_hochberg(p_values: np.ndarray, fdr: float) -> np.ndarray:
    """Boolean rejections of the Benjamini-Hochberg step-up procedure at false discovery rate `fdr`
    (scipy's adjusted p-values; an untestable node, p nan, is never rejected but counts as a test)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    filled = np.where(np.isnan(p), 1.0, p)
    return (false_discovery_control(filled, method="bh") <= fdr) & ~np.isnan(p)


NORMALISATIONS = ("max", "centred", "afcc")


def snp_matrices_from(sums: torch.Tensor, counts: torch.Tensor, centred: bool = False) -> torch.Tensor:
    """`SNPAccumulator.snp_matrices` from its stored sums (N, L, L) and counts (L,), both float64: the
    measure stage stores these, the cluster stage builds the matrices from them (the same arithmetic
    either way, so the numbers do not depend on which stage or job computed them)."""
    m = sums / counts.clamp(min=1)[None, :, None]
    if centred:
        overall = sums.sum(dim=1) / counts.sum().clamp(min=1)  # (N, L)
        m = m - overall[:, None, :]
    return m


def normalisation_flags(mode: str) -> tuple[bool, bool]:
    """analysis.normalise decoded once for every stage: (centred, afcc), i.e. whether the SNP matrices
    are taken about each output's all-input mean (`SNPAccumulator.snp_matrices`) and whether any
    non-zero maximum divides (`normalise`)."""
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation {mode!r}: expected one of {NORMALISATIONS}")
    return mode == "centred", mode == "afcc"


def normalise(m: torch.Tensor, afcc: bool = False) -> torch.Tensor:
    """Divide each node's matrix by its maximum only where that maximum is positive, so signs
    are never flipped; afcc: as the AFCC code, divide by any non-zero maximum (a negative maximum
    flips every sign)."""
    mx = m.amax(dim=(-2, -1), keepdim=True)
    use = (mx != 0) if afcc else (mx > 0)
    return m / torch.where(use, mx, torch.ones_like(mx))


@dataclass
class NodeStatistics:
    """Per-node statistics (METHOD.md 2.8), arrays of length N."""

    cluster_size: np.ndarray  # labels covered: sum |S|
    n_clusters: np.ndarray
    signal: np.ndarray  # ones inside the diagonal blocks: sum |S|^2
    noise: np.ndarray  # ones(B) - signal
    clusters: list[list[list[int]]]
    greedy: np.ndarray  # True where the greedy fallback partitioned a component (exact solver out of time)

    @property
    def has_cluster(self) -> np.ndarray:
        return self.n_clusters > 0


def node_statistics(m_normalised: torch.Tensor, threshold: float, order: str = "diagonal",
                    time_limit_s: float = CLUSTER_TIME_LIMIT_S) -> NodeStatistics:
    """Clusters and counts for every node of a point; m_normalised is (N, L, L)."""
    ones = boolean(m_normalised, threshold).sum(dim=(1, 2)).numpy()
    found = [clusters_of(m, threshold, order, time_limit_s) for m in m_normalised]
    per_node = [c for c, _ in found]
    size = np.array([sum(len(s) for s in c) for c in per_node], dtype=np.int64)
    signal = np.array([sum(len(s) ** 2 for s in c) for c in per_node], dtype=np.int64)
    return NodeStatistics(size, np.array([len(c) for c in per_node], dtype=np.int64), signal, ones - signal,
                          per_node, np.array([g for _, g in found], dtype=bool))


POINT_STATISTICS = ("mean_cluster_size", "mean_n_clusters", "mean_signal", "mean_noise",
                    "noise_per_label", "snr", "frac_no_cluster")


def _point_stats(size, n_clusters, signal, noise, w: np.ndarray,
                 node_means: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Point statistics of node samples given as counts: node arrays (N,), w (R, N) how often each
    node is in each of R samples (a bootstrap resample, a jackknife leave-one-out, or all ones).
    Cluster means are over nodes with a cluster; `node_means` are averaged over every node."""
    has = (n_clusters > 0).astype(np.float64)
    wh = w * has  # (R, N)
    k = wh.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        def mean(v):
            return np.where(k > 0, wh @ v / np.where(k > 0, k, 1), np.nan)

        per_label = np.where(has > 0, noise / np.where(size > 0, size, 1), 0.0)
        mean_signal, mean_noise = mean(signal), mean(noise)
        snr = np.where(mean_noise > 0, mean_signal / mean_noise, np.where(k > 0, np.inf, np.nan))
        return {
            "mean_cluster_size": mean(size), "mean_n_clusters": mean(n_clusters),
            "mean_signal": mean_signal, "mean_noise": mean_noise, "noise_per_label": mean(per_label),
            "snr": snr, "frac_no_cluster": 1.0 - k / w.sum(axis=1),
            **_node_means(w, node_means or {}),
        }


def _node_means(w: np.ndarray, node_means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each per-node array's mean over every node of each sample (w as in `_point_stats`)."""
    return {name: w @ np.asarray(v, dtype=np.float64) / w.sum(axis=1) for name, v in node_means.items()}


def bca_interval(theta: float, boot: np.ndarray, jack: np.ndarray, confidence: float) -> tuple[float, float]:
    """Bias-corrected and accelerated (BCa) bootstrap interval (Efron 1987) of a statistic with value
    `theta`, bootstrap replicates `boot` and jackknife (leave-one-out) values `jack`.

    The interval is nan when theta or any replicate is nan (a resample with no node holding a cluster):
    resamples are never dropped silently. Infinite replicates (SNR with no noise) keep their rank;
    where the jackknife is not finite the acceleration is taken as 0 (bias-corrected percentile)."""
    if not np.isfinite(theta) or np.isnan(boot).any() or len(boot) == 0:
        return float("nan"), float("nan")
    b = len(boot)
    prop = ((boot < theta).sum() + 0.5 * (boot == theta).sum()) / b
    z0 = _NORMAL.inv_cdf(float(np.clip(prop, 0.5 / b, 1 - 0.5 / b)))
    a = 0.0
    if np.isfinite(jack).all() and len(jack) > 2:
        d = jack.mean() - jack
        den = 6.0 * (d ** 2).sum() ** 1.5
        a = float((d ** 3).sum() / den) if den > 0 else 0.0
    alpha = (1 - confidence) / 2
    q = [_NORMAL.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))) for z in (_NORMAL.inv_cdf(alpha), _NORMAL.inv_cdf(1 - alpha))]
    lo, hi = np.quantile(boot, q, method="inverted_cdf")
    return float(lo), float(hi)


def point_statistics(ns: NodeStatistics, bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0, node_means: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Per-point statistics with BCa bootstrap intervals over nodes (seeded; METHOD.md 2b).

    Means of cluster size, number of clusters, signal, noise and noise per covered label are over
    nodes with a cluster (nodes without one are counted in frac_no_cluster); SNR is mean signal /
    mean noise over those nodes (inf when they have no noise, nan when no node has a cluster).
    `node_means`: further per-node values whose mean over all nodes is a point statistic with the
    same intervals (the label-specific fraction: the mean of a 0/1 array; the effect size).
    Keys: each statistic, and `<stat>_lo` / `<stat>_hi` for its interval (nan when bootstrap=0, and
    nan when some resample leaves the statistic undefined: see `bca_interval`).
    The intervals resample nodes of one network: within-network uncertainty only.
    Why BCa: percentile intervals of these ratio statistics covered 0.90-0.93 instead of 0.95 at
    64-256 nodes in a simulation (issue 15); BCa corrects their bias and skew.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (ns.cluster_size, ns.n_clusters, ns.signal, ns.noise)]
    return _with_intervals(lambda w: _point_stats(*arrays, w, node_means), len(arrays[0]), bootstrap, confidence,
                           seed)


def node_mean_statistics(node_means: dict[str, np.ndarray], bootstrap: int = 1000, confidence: float = 0.95,
                         seed: int = 0) -> dict[str, float]:
    """`point_statistics`' `node_means` part alone (each per-node array's mean over all nodes, with its
    BCa interval), without the clusters: the same node resamples (same seed, same number of nodes),
    so the values are those `point_statistics(ns, ..., node_means=node_means)` gives them. The measure
    stage computes the label-dependence statistics this way, before any threshold exists."""
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in node_means.items()}
    n = len(next(iter(arrays.values()))) if arrays else 0
    return _with_intervals(lambda w: _node_means(w, arrays), n, bootstrap, confidence, seed)


def joined_statistics(*parts: dict[str, float]) -> dict[str, float]:
    """Several `point_statistics`-shaped dicts (over the same nodes, resamples and seed) as one, in the
    order one call over all of them gives: every value first, then each value's `_lo` and `_hi`."""
    values = {k: v for p in parts for k, v in p.items() if not k.endswith(("_lo", "_hi"))}
    bounds = {k: v for p in parts for k, v in p.items() if k.endswith(("_lo", "_hi"))}
    return {**values, **{f"{k}_{end}": bounds[f"{k}_{end}"] for k in values for end in ("lo", "hi")}}


def _with_intervals(stats, n: int, bootstrap: int, confidence: float, seed: int) -> dict[str, float]:
    """Each statistic of `stats(w)` (w: (R, n) node counts per sample, see `_point_stats`) on all
    nodes, and its BCa interval from `bootstrap` seeded node resamples and the n leave-one-outs."""
    point = {k: float(v[0]) for k, v in stats(np.ones((1, n))).items()}
    out = dict(point)
    if bootstrap > 0 and n > 1:
        w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)
        boot = stats(w)
        jack = {k: np.empty(n) for k in point}
        for i in range(0, n, 512):  # leave-one-out, in chunks to bound memory at large N
            rows = np.ones((min(512, n - i), n))
            rows[np.arange(len(rows)), np.arange(i, i + len(rows))] = 0.0
            for k, v in stats(rows).items():
                jack[k][i:i + len(rows)] = v
        for k in point:
            out[f"{k}_lo"], out[f"{k}_hi"] = bca_interval(point[k], boot[k], jack[k], confidence)
    else:
        for k in point:
            out[f"{k}_lo"] = out[f"{k}_hi"] = float("nan")
    return out


def point_label_dependence(dep: LabelDependence, fdr: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per node: rejected at false discovery rate `fdr` among the point's nodes (Benjamini-Hochberg);
    and the per-node arrays whose means are the point's verdict statistics (`point_statistics`'s
    node_means): label_specific_fraction (share of nodes rejected) and effect_size (mean eta2)."""
    reject = benjamini_hochberg(dep.p_value, fdr)
    return reject, {"label_specific_fraction": reject.astype(np.float64), "effect_size": dep.eta2}


def interval_text(lo: float | None, hi: float | None, digits: int = 2) -> str:
    """` [lo, hi]` for people, or nothing where either end is missing or undefined (the console line and
    the report print intervals through this one function)."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f" [{lo:.{digits}f}, {hi:.{digits}f}]"


def snr_text(snr: float, lo: float, hi: float) -> str:
    """SNR with its interval for people: an infinite or undefined value says why, an undefined
    interval says so (never `inf [nan, nan]`)."""
    if math.isnan(snr):
        return "SNR undefined (no node has a cluster)"
    if math.isinf(snr):
        return "SNR infinite (no noise: every Boolean one lies inside a cluster)"
    if math.isnan(lo) or math.isnan(hi):
        return f"SNR {snr:.2f} (interval undefined: some node resample has no cluster or no noise)"
    return f"SNR {snr:.2f} [{lo:.2f}, {hi:.2f}]"


def point_line(row: dict) -> str:
    """One point's row of the per-layer table as a console line: the two verdict statistics first
    (label-specific fraction and effect size, with their node-bootstrap intervals), then the paper's
    description (cluster size, noise, SNR)."""
    def iv(k: str, digits: int = 2) -> str:
        return f"{row[k]:.{digits}f}" + interval_text(row.get(f"{k}_lo"), row.get(f"{k}_hi"), digits)

    greedy = row.get("greedy_fraction", 0.0)
    return (f"readout acc {row['readout_accuracy']:.3f}  label-specific {iv('label_specific_fraction')} "
            f"(FDR {row['fdr']:g})  eta2 {iv('effect_size', 3)}  cluster size {row['mean_cluster_size']:.2f}  "
            f"noise {row['mean_noise']:.2f}  {snr_text(row['snr'], row['snr_lo'], row['snr_hi'])}  "
            f"no-cluster {row['frac_no_cluster']:.2f}" + (f"  greedy {greedy:.2f}" if greedy and greedy > 0 else ""))
