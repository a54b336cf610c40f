"""Single-nodal performance (METHOD.md sections 2.4-2.8 and 2b): fields, SNP matrices, Boolean
matrices, clusters and per-node / per-point statistics with bootstrap intervals over nodes.

Pure tensor code: no Ray, no I/O, no globals. Shapes, by the paper's names:
  X inputs, N nodes of the point, P positions per node (H*W for a conv map, tokens for a
  `flatten` transformer readout, 1 for a `seqpool` readout over pooled values), L labels.
  activations a[x, n, p], readout weight W[k, n, p] (bias-free), field f[x, n, k].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np
import torch


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
    """

    num_nodes: int
    num_labels: int
    sums: torch.Tensor = field(init=False)  # (N, L_true, L_out): sum of f over inputs of each true label
    counts: torch.Tensor = field(init=False)  # (L,): inputs per true label
    correct: torch.Tensor = field(init=False)  # (N, L): inputs of label i whose node argmax is i

    def __post_init__(self) -> None:
        N, L = self.num_nodes, self.num_labels
        self.sums = torch.zeros(N, L, L, dtype=torch.float64)
        self.counts = torch.zeros(L, dtype=torch.float64)
        self.correct = torch.zeros(N, L, dtype=torch.float64)

    def update(self, f: torch.Tensor, labels: torch.Tensor) -> None:
        # fields may come from any device; the sums stay float64 on the CPU
        f, labels = f.detach().to("cpu", torch.float64), labels.to("cpu", torch.long)
        self.sums.index_add_(1, labels, f.permute(1, 0, 2))
        self.counts += torch.bincount(labels, minlength=self.num_labels).to(torch.float64)
        # a node whose field is equal on every output (a dead node: exactly zero) makes no
        # prediction; argmax would credit it with label 0
        predicts = f.amax(dim=2) > f.amin(dim=2)
        hit = ((f.argmax(dim=2) == labels[:, None]) & predicts).to(torch.float64)  # (X, N)
        self.correct.index_add_(1, labels, hit.T)

    def merge(self, other: SNPAccumulator) -> SNPAccumulator:
        self.sums += other.sums
        self.counts += other.counts
        self.correct += other.correct
        return self

    def snp_matrices(self, centred: bool = False) -> torch.Tensor:
        """M[n, i, k]: mean field of node n on output k over inputs of true label i (METHOD.md 2.5).

        centred: subtract each (node, output)'s mean field over all inputs first (METHOD.md 2b)."""
        m = self.sums / self.counts.clamp(min=1)[None, :, None]
        if centred:
            overall = self.sums.sum(dim=1) / self.counts.sum().clamp(min=1)  # (N, L)
            m = m - overall[:, None, :]
        return m

    def node_label_accuracy(self) -> torch.Tensor:
        """(N, L): how often node n alone (argmax over k of its field) gets label i right (METHOD.md
        2.8). A node whose field is equal on every output makes no prediction and is never right."""
        return self.correct / self.counts.clamp(min=1)[None, :]

    def node_accuracy(self) -> torch.Tensor:
        """(N,): node n's own accuracy over all evaluation inputs (chance: 1 / L)."""
        return self.correct.sum(dim=1) / self.counts.sum().clamp(min=1)


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Divide each node's matrix by its maximum only where that maximum is positive, so signs
    are never flipped (the AFCC code divides by any non-zero maximum)."""
    mx = m.amax(dim=(-2, -1), keepdim=True)
    return m / torch.where(mx > 0, mx, torch.ones_like(mx))


def boolean(m_normalised: torch.Tensor, threshold: float) -> torch.Tensor:
    """B = M > th (METHOD.md 2.6)."""
    return m_normalised > threshold


EXACT_MAX_LABELS = 10  # largest non-clique component partitioned exactly (3^c subset steps)


def clusters(m_normalised: torch.Tensor, threshold: float) -> list[list[int]]:
    """Disjoint clusters of one node (METHOD.md 2.7): a partition of the candidate labels (those with
    B[j, j]) into all-ones diagonal blocks that maximises the signal sum |S|^2 (equivalently, with
    the ones of B fixed, minimises the noise).

    Two labels can share a block only if B[a, c] and B[c, a] (mutually linked). The candidates split
    into connected components of that link graph; a component that is itself a clique is one cluster
    (optimal: merging blocks raises sum |S|^2). Other components of up to EXACT_MAX_LABELS labels are
    partitioned exactly (dynamic programming over subsets); larger ones, rare in practice, fall back to
    the deterministic greedy rule (`greedy_clusters`), whose failure mode is documented there.
    Ties between equally good partitions: the label with the largest diagonal M[j, j] (then the lower
    label) gets the larger block. Returns sorted label lists, ordered by their best diagonal value.
    """
    b = boolean(m_normalised, threshold).numpy()
    diag = torch.diagonal(m_normalised).tolist()
    order = sorted((j for j in range(b.shape[0]) if b[j, j]), key=lambda j: (-diag[j], j))
    mutual = b & b.T
    result: list[list[int]] = []
    seen: set[int] = set()
    for start in order:  # connected components of the mutual links, in order of their best label
        if start in seen:
            continue
        comp, stack = [], [start]
        seen.add(start)
        while stack:
            a = stack.pop()
            comp.append(a)
            for c in order:
                if c not in seen and mutual[a, c]:
                    seen.add(c)
                    stack.append(c)
        comp.sort(key=order.index)
        if all(mutual[a, c] for a in comp for c in comp):
            result.append(comp)
        elif len(comp) <= EXACT_MAX_LABELS:
            result.extend(_best_partition(comp, mutual))
        else:
            result.extend(greedy_clusters(comp, mutual))
    result.sort(key=lambda s: order.index(s[0]))
    return [sorted(s) for s in result]


def _best_partition(comp: list[int], mutual: np.ndarray) -> list[list[int]]:
    """Exact: the partition of `comp` (labels in tie-break order) into cliques with the largest sum
    of squared sizes; bit i of a mask stands for comp[i]."""
    c = len(comp)
    adj = [sum(1 << j for j in range(c) if j != i and mutual[comp[i], comp[j]]) for i in range(c)]
    clique = [False] * (1 << c)
    clique[0] = True
    for s in range(1, 1 << c):
        low = (s & -s).bit_length() - 1
        rest = s & ~(1 << low)
        clique[s] = clique[rest] and (adj[low] & rest) == rest
    best: dict[int, tuple[int, list[int]]] = {0: (0, [])}

    def solve(mask: int) -> tuple[int, list[int]]:
        if mask in best:
            return best[mask]
        low = mask & -mask
        rest = mask & ~low
        top: tuple[int, list[int]] | None = None
        sub = rest
        while True:  # every clique holding the lowest label; larger subsets first (the tie-break)
            s = sub | low
            if clique[s]:
                score, blocks = solve(mask & ~s)
                score += bin(s).count("1") ** 2
                if top is None or score > top[0]:
                    top = (score, [s] + blocks)
            if sub == 0:
                break
            sub = (sub - 1) & rest
        best[mask] = top
        return top

    _, blocks = solve((1 << c) - 1)
    return [[comp[i] for i in range(c) if s >> i & 1] for s in blocks]


def greedy_clusters(candidates: list[int], mutual: np.ndarray) -> list[list[int]]:
    """The AFCC-style greedy rule, used for components above EXACT_MAX_LABELS: visit candidates in
    order (largest diagonal first); each unassigned one opens a block that every later unassigned
    candidate joins if it is mutually linked to all members. Known failure: it can split a clique
    badly (a 0-1 link plus a clique {1, 2, 3}, equal diagonals, gives {0, 1}, {2, 3} with signal 8
    instead of {0}, {1, 2, 3} with signal 10), so noise is over- and signal under-counted there."""
    assigned: set[int] = set()
    out = []
    for j in candidates:
        if j in assigned:
            continue
        members = [j]
        assigned.add(j)
        for c in candidates:
            if c not in assigned and all(mutual[a, c] for a in members):
                members.append(c)
                assigned.add(c)
        out.append(members)
    return out


def membership(clusters: list[list[list[int]]], num_labels: int) -> np.ndarray:
    """(items, L) Boolean: True where label k is in a cluster of item i (a node, or a head). The
    ANDC mask is its transpose; a head's label set is its row."""
    a = np.zeros((len(clusters), num_labels), dtype=bool)
    for i, cs in enumerate(clusters):
        for s in cs:
            a[i, s] = True
    return a


@dataclass
class NodeStatistics:
    """Per-node statistics (METHOD.md 2.8), arrays of length N."""

    cluster_size: np.ndarray  # labels covered: sum |S|
    n_clusters: np.ndarray
    signal: np.ndarray  # ones inside the diagonal blocks: sum |S|^2
    noise: np.ndarray  # ones(B) - signal
    clusters: list[list[list[int]]]

    @property
    def has_cluster(self) -> np.ndarray:
        return self.n_clusters > 0


def node_statistics(m_normalised: torch.Tensor, threshold: float) -> NodeStatistics:
    """Clusters and counts for every node of a point; m_normalised is (N, L, L)."""
    ones = boolean(m_normalised, threshold).sum(dim=(1, 2)).numpy()
    per_node = [clusters(m, threshold) for m in m_normalised]
    size = np.array([sum(len(s) for s in c) for c in per_node])
    signal = np.array([sum(len(s) ** 2 for s in c) for c in per_node])
    return NodeStatistics(size, np.array([len(c) for c in per_node]), signal, ones - signal, per_node)


POINT_STATISTICS = ("mean_cluster_size", "mean_n_clusters", "mean_signal", "mean_noise",
                    "noise_per_label", "snr", "frac_no_cluster")


def _point_stats(size, n_clusters, signal, noise, w: np.ndarray) -> dict[str, np.ndarray]:
    """Point statistics of node samples given as counts: node arrays (N,), w (R, N) how often each
    node is in each of R samples (a bootstrap resample, a jackknife leave-one-out, or all ones).
    Means are over nodes with a cluster."""
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
        }


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
                     seed: int = 0) -> dict[str, float]:
    """Per-point statistics with BCa bootstrap intervals over nodes (seeded; METHOD.md 2b).

    Means of cluster size, number of clusters, signal, noise and noise per covered label are over
    nodes with a cluster (nodes without one are counted in frac_no_cluster); SNR is mean signal /
    mean noise over those nodes (inf when they have no noise, nan when no node has a cluster).
    Keys: each statistic, and `<stat>_lo` / `<stat>_hi` for its interval (nan when bootstrap=0, and
    nan when some resample leaves the statistic undefined: see `bca_interval`).
    Why BCa: percentile intervals of these ratio statistics covered 0.90-0.93 instead of 0.95 at
    64-256 nodes in a simulation (issue 15); BCa corrects their bias and skew.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (ns.cluster_size, ns.n_clusters, ns.signal, ns.noise)]
    n = len(arrays[0])
    point = {k: float(v[0]) for k, v in _point_stats(*arrays, np.ones((1, n))).items()}
    out = dict(point)
    if bootstrap > 0 and n > 1:
        w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(np.float64)
        boot = _point_stats(*arrays, w)
        jack = {k: np.empty(n) for k in point}
        for i in range(0, n, 512):  # leave-one-out, in chunks to bound memory at large N
            rows = np.ones((min(512, n - i), n))
            rows[np.arange(len(rows)), np.arange(i, i + len(rows))] = 0.0
            for k, v in _point_stats(*arrays, rows).items():
                jack[k][i:i + len(rows)] = v
        for k in point:
            out[f"{k}_lo"], out[f"{k}_hi"] = bca_interval(point[k], boot[k], jack[k], confidence)
    else:
        for k in point:
            out[f"{k}_lo"] = out[f"{k}_hi"] = float("nan")
    return out


def label_specificity(cluster_size, noise, num_labels: int) -> np.ndarray:
    """Structural-pruning score of a node: how many label pairs its clusters tell apart, damped by
    its noise (METHOD.md 4, "SNP score"). A node whose clusters cover c of L labels answers "yes" for
    c labels and "no" for the other L - c, so it separates c (L - c) label pairs; divided by L that is
    c (1 - c / L). Noise per covered label (off-block ones: labels it confuses) divides it:
    score = c (1 - c / L) / (1 + noise / c). An all-ones node (c = L) and a dead node (c = 0)
    score 0; a clean one-label specialist scores 1 - 1 / L. The former score, signal / (noise + 1),
    grew as c^2 and ranked the label-blind all-ones node highest."""
    c = np.asarray(cluster_size, dtype=np.float64)
    nz = np.asarray(noise, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, c * (1 - c / num_labels) / (1 + nz / np.where(c > 0, c, 1)), 0.0)


def permuted_labels(labels: np.ndarray, permutations: int, seed: int) -> list[np.ndarray]:
    """`permutations` seeded shuffles of the evaluation labels over the inputs: the label-blind null
    (every input keeps its fields, but its label is another input's)."""
    rng = np.random.default_rng(seed)
    return [labels[rng.permutation(len(labels))] for _ in range(permutations)]


def null_statistics(raws: list[torch.Tensor], threshold: float) -> dict[str, float]:
    """Chance level of a point's SNR: the same nodes, readout and fields, SNP matrices accumulated
    with label-permuted evaluation inputs (`permuted_labels`), normalised, thresholded and clustered
    exactly like the measured ones. Keys: null_snr (mean over permutations), null_snr_min /
    null_snr_max (their range), null_cluster_size (mean labels covered). nan without permutations."""
    if not raws:
        return {"null_snr": float("nan"), "null_snr_min": float("nan"), "null_snr_max": float("nan"),
                "null_cluster_size": float("nan")}
    snr, size = [], []
    for raw in raws:
        ns = node_statistics(normalise(raw), threshold)
        n = len(ns.cluster_size)
        st = _point_stats(*(np.asarray(a, dtype=np.float64) for a in (ns.cluster_size, ns.n_clusters, ns.signal,
                                                                        ns.noise)), np.ones((1, n)))
        snr.append(float(st["snr"][0]))
        size.append(float(st["mean_cluster_size"][0]))
    return {"null_snr": float(np.mean(snr)), "null_snr_min": float(np.min(snr)), "null_snr_max": float(np.max(snr)),
            "null_cluster_size": float(np.mean(size))}
