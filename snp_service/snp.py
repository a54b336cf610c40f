"""Single-nodal performance (METHOD.md sections 2.4-2.8 and 2b): fields, SNP matrices, Boolean
matrices, clusters and per-node / per-point statistics with bootstrap intervals over nodes.

Pure tensor code: no Ray, no I/O, no globals. Shapes, by the paper's names:
  X inputs, N nodes of the point, P positions per node (H*W for a conv map, tokens for a
  `flatten` transformer readout, 1 for a `seqpool` readout over pooled values), L labels.
  activations a[x, n, p], readout weight W[k, n, p] (bias-free), field f[x, n, k].
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        f, labels = f.detach().to(torch.float64), labels.to(torch.long)
        self.sums.index_add_(1, labels, f.permute(1, 0, 2))
        self.counts += torch.bincount(labels, minlength=self.num_labels).to(torch.float64)
        hit = (f.argmax(dim=2) == labels[:, None]).to(torch.float64)  # (X, N)
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
        """(N, L): how often node n alone (argmax over k of its field) gets label i right."""
        return self.correct / self.counts.clamp(min=1)[None, :]


def normalise(m: torch.Tensor) -> torch.Tensor:
    """Divide each node's matrix by its maximum only where that maximum is positive, so signs
    are never flipped (the AFCC code divides by any non-zero maximum)."""
    mx = m.amax(dim=(-2, -1), keepdim=True)
    return m / torch.where(mx > 0, mx, torch.ones_like(mx))


def boolean(m_normalised: torch.Tensor, threshold: float) -> torch.Tensor:
    """B = M > th (METHOD.md 2.6)."""
    return m_normalised > threshold


def clusters(m_normalised: torch.Tensor, threshold: float) -> list[list[int]]:
    """Disjoint clusters of one node (METHOD.md 2.7), by a deterministic greedy rule:

    candidates are labels j with B[j, j]; visit them by decreasing diagonal value M[j, j] (ties:
    lower label first). Each unassigned candidate opens a cluster S; then every later unassigned
    candidate c, in the same order, joins S if B[a, c] and B[c, a] for all a already in S, so S
    is always an all-ones diagonal block. Returns clusters as sorted label lists, in opening order.
    """
    b = boolean(m_normalised, threshold)
    diag = torch.diagonal(m_normalised)
    order = sorted((j for j in range(b.shape[0]) if bool(b[j, j])), key=lambda j: (-float(diag[j]), j))
    assigned: set[int] = set()
    result = []
    for j in order:
        if j in assigned:
            continue
        members = [j]
        assigned.add(j)
        for c in order:
            if c not in assigned and all(bool(b[a, c]) and bool(b[c, a]) for a in members):
                members.append(c)
                assigned.add(c)
        result.append(sorted(members))
    return result


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


def _point_stats(size, n_clusters, signal, noise) -> dict[str, np.ndarray]:
    """Point statistics for a batch of node samples (arrays (R, N)); means over nodes with a cluster."""
    has = n_clusters > 0
    k = has.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        def mean(v):
            return np.where(k > 0, (v * has).sum(axis=1) / k, np.nan)

        per_label = np.where(has, noise / np.where(size > 0, size, 1), 0.0)
        mean_signal, mean_noise = mean(signal), mean(noise)
        snr = np.where(mean_noise > 0, mean_signal / mean_noise, np.where(k > 0, np.inf, np.nan))
        return {
            "mean_cluster_size": mean(size), "mean_n_clusters": mean(n_clusters),
            "mean_signal": mean_signal, "mean_noise": mean_noise, "noise_per_label": mean(per_label),
            "snr": snr, "frac_no_cluster": 1.0 - k / size.shape[1],
        }


def point_statistics(ns: NodeStatistics, bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float]:
    """Per-point statistics with percentile bootstrap intervals over nodes (seeded).

    Means of cluster size, number of clusters, signal, noise and noise per covered label are over
    nodes with a cluster (nodes without one are counted in frac_no_cluster); SNR is mean signal /
    mean noise over those nodes (inf when they have no noise, nan when no node has a cluster).
    Keys: each statistic, and `<stat>_lo` / `<stat>_hi` for its interval (nan when bootstrap=0).
    """
    arrays = [np.asarray(a, dtype=np.float64)[None] for a in (ns.cluster_size, ns.n_clusters, ns.signal, ns.noise)]
    point = {k: float(v[0]) for k, v in _point_stats(*arrays).items()}
    out = dict(point)
    n = arrays[0].shape[1]
    if bootstrap > 0 and n > 0:
        idx = np.random.default_rng(seed).integers(0, n, size=(bootstrap, n))
        boot = _point_stats(*(a[0][idx] for a in arrays))
        alpha = (1 - confidence) / 2
        for k, v in boot.items():
            finite = v[~np.isnan(v)]
            lo, hi = (np.quantile(finite, [alpha, 1 - alpha], method="inverted_cdf") if len(finite)
                      else (np.nan, np.nan))
            out[f"{k}_lo"], out[f"{k}_hi"] = float(lo), float(hi)
    else:
        for k in point:
            out[f"{k}_lo"] = out[f"{k}_hi"] = float("nan")
    return out
