"""Single-head performance and the heads' division of labels (METHOD.md section 3).

Pure numpy/torch, no I/O. Definitions (the report repeats them):

- Head matrix: at an MHA point with H heads of d = N / H dimensions each, dimension n belongs to
  head n // d. The field of a head is the readout run with every weight silenced except those of
  the head's dimensions; it is linear, so the head's SNP matrix is the sum of its dimensions' raw
  (unnormalised) SNP matrices. It is then normalised, thresholded and clustered exactly like a
  node's matrix (snp.normalise, snp.node_statistics).
- A head's label set: the labels in its clusters. `heads x labels` is the Boolean matrix A[h, k].
- labels per head: row sums of A; heads per label: column sums.
- Overlap: Jaccard |S_a & S_b| / |S_a | S_b| for every pair of heads (pairs whose union is empty
  are left out); the observed overlap is the mean over pairs.
- Null model: every head keeps its number of labels, but the labels are drawn uniformly at random
  without replacement, independently per head; `draws` draws (seeded) give the null distribution
  of the mean pairwise Jaccard. Reported: its mean and standard deviation, the z-score
  (null mean - observed) / null sd (positive: heads overlap less than chance, i.e. they split the
  labels), and the one-sided p-value P(null <= observed) with the +1 correction.
- Degenerate cases give status "undefined" and a reason instead of numbers: fewer than two heads
  with a non-empty label set, or a null with zero spread (e.g. every head covers all labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from snp_service.snp import node_statistics, normalise


def head_matrices(raw: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, L, L) raw node matrices -> (H, L, L) raw head matrices (sum over each head's dimensions)."""
    n, L, _ = raw.shape
    if n % num_heads:
        raise ValueError(f"{n} nodes do not split into {num_heads} heads")
    return raw.reshape(num_heads, n // num_heads, L, L).sum(dim=1)


def label_sets(clusters: list[list[list[int]]], num_labels: int) -> np.ndarray:
    """(H, L) Boolean heads x labels matrix from each head's clusters."""
    a = np.zeros((len(clusters), num_labels), dtype=bool)
    for h, cs in enumerate(clusters):
        for s in cs:
            a[h, s] = True
    return a


def mean_pairwise_jaccard(sets: np.ndarray) -> np.ndarray:
    """sets (..., H, L) Boolean -> mean Jaccard over head pairs with a non-empty union, shape (...)."""
    s = sets.astype(np.float64)
    inter = np.einsum("...al,...bl->...ab", s, s)
    sizes = s.sum(-1)
    union = sizes[..., :, None] + sizes[..., None, :] - inter
    h = sets.shape[-2]
    iu = np.triu_indices(h, k=1)
    inter, union = inter[..., iu[0], iu[1]], union[..., iu[0], iu[1]]
    valid = union > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        jac = np.where(valid, inter / np.where(valid, union, 1), 0.0)
        return np.where(valid.sum(-1) > 0, jac.sum(-1) / valid.sum(-1), np.nan)


def null_overlap(sizes: np.ndarray, num_labels: int, draws: int, seed: int) -> np.ndarray:
    """Mean pairwise Jaccard of random label sets with the given sizes, `draws` times (seeded)."""
    rng = np.random.default_rng(seed)
    h = len(sizes)
    out = np.empty(draws)
    chunk = max(1, 2_000_000 // max(1, h * num_labels))
    for start in range(0, draws, chunk):
        d = min(chunk, draws - start)
        ranks = rng.random((d, h, num_labels)).argsort(-1).argsort(-1)  # a random permutation per head
        out[start:start + d] = mean_pairwise_jaccard(ranks < sizes[None, :, None])
    return out


@dataclass
class HeadAnalysis:
    point: str
    num_heads: int
    heads_labels: np.ndarray  # (H, L) Boolean
    head_matrices: torch.Tensor  # (H, L, L) normalised
    head_stats: dict[str, list] = field(default_factory=dict)  # per-head statistics, column-wise
    summary: dict = field(default_factory=dict)  # one row of the heads table
    null: np.ndarray | None = None  # the null distribution (draws,)


def analyse_heads(point: str, raw: torch.Tensor, num_heads: int, threshold: float, draws: int = 10_000,
                  seed: int = 0) -> HeadAnalysis:
    """Everything of METHOD.md section 3 at one MHA point, from its raw node SNP matrices."""
    m = normalise(head_matrices(raw.to(torch.float64), num_heads))
    ns = node_statistics(m, threshold)
    L = m.shape[-1]
    a = label_sets(ns.clusters, L)
    sizes = a.sum(1)
    per_label = a.sum(0)
    observed = float(mean_pairwise_jaccard(a))
    summary = {"point": point, "heads": num_heads, "labels": L, "threshold": threshold,
               "mean_labels_per_head": float(sizes.mean()), "mean_heads_per_label": float(per_label.mean()),
               "labels_without_head": int((per_label == 0).sum()), "observed_jaccard": observed,
               "null_draws": draws, "null_mean": np.nan, "null_sd": np.nan, "z": np.nan, "p_value": np.nan,
               "status": "ok", "reason": ""}
    null = None
    if (sizes > 0).sum() < 2:
        summary.update(status="undefined", reason=f"{int((sizes > 0).sum())} head(s) with a non-empty label set; "
                       "overlap needs at least two")
    else:
        null = null_overlap(sizes, L, draws, seed)
        sd = float(null.std())
        summary.update(null_mean=float(null.mean()), null_sd=sd)
        if sd == 0.0:
            summary.update(status="undefined", reason=f"the null model has no spread (label-set sizes "
                           f"{sizes.tolist()} of {L} labels admit a single overlap value); use more labels, "
                           "more heads or a higher threshold")
        else:
            summary.update(z=(float(null.mean()) - observed) / sd,
                           p_value=float((1 + (null <= observed + 1e-12).sum()) / (1 + draws)))
    head_stats = {"head": list(range(num_heads)), "labels": sizes.tolist(),
                  "n_clusters": ns.n_clusters.tolist(), "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
                  "label_set": [",".join(map(str, np.flatnonzero(row))) for row in a]}
    return HeadAnalysis(point, num_heads, a, m, head_stats, summary, null)
