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
  of the mean pairwise Jaccard. What it holds fixed: the number of heads, the number of labels and
  each head's label-set size. What it tests: whether the heads avoid each other's labels (overlap
  less than sets of those sizes would by chance). What it cannot show: which labels a head prefers
  or why, how strongly a head recognises a label (the sets are thresholded), or specialisation when
  the sizes leave no room (sets near L labels must overlap).
- Reported: the null's mean and sd, the overlap deficit (null mean - observed: positive when heads
  overlap less than chance), the one-sided p-value P(null <= observed) with the +1 correction, and
  beside it `p_min`, the smallest p-value the test can give at these sizes: the draws at or below
  the least overlap the sizes admit (`least_overlap`, an arrangement that spreads the labels as
  evenly as the sizes allow: exact for two heads, an attainable value, so p_min is never understated
  below what an observation could reach), not merely the least overlap that happened to be drawn. The null is discrete (it takes few values at small L), so no z-score is
  given: a z on a handful of support points has no normal reference.
- Status: "ok"; "uninformative" when p_min >= level (the sizes alone make rejection impossible, so
  "not significant" says nothing); "undefined" with a reason when fewer than two heads have a
  non-empty label set, or the null takes a single value (checked on its distinct values, e.g. sizes
  [10, 9] of 10 labels always overlap 0.9).

The overlap test asks whether heads *avoid* each other's labels. Specialisation is another question:
do the dimensions of one head share a label preference more than dimensions of different heads?
- Specialisation test: each dimension's label profile is the diagonal of its raw SNP matrix minus
  each output's mean over true labels, D_n[i] = M_n[i, i] - mean_j M_n[j, i] (its field on the true
  label's output above what that output gets from any label: blind to a label-independent shift).
  Coherence = mean Pearson correlation of profiles over pairs of dimensions within a head minus the
  mean over pairs in different heads. Null: the dimensions permuted among the heads, head sizes kept
  (`draws` seeded permutations); p = P(null >= observed) with the +1 correction, p_min = 1 / (draws + 1)
  (the statistic is continuous). Undefined with one head or one dimension per head.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from snp_service.clusters import CLUSTER_TIME_LIMIT_S, membership
from snp_service.snp import node_statistics, normalise


def head_matrices(raw: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, L, L) raw node matrices -> (H, L, L) raw head matrices (sum over each head's dimensions)."""
    n, L, _ = raw.shape
    if n % num_heads:
        raise ValueError(f"{n} nodes do not split into {num_heads} heads")
    return raw.reshape(num_heads, n // num_heads, L, L).sum(dim=1)


def label_sets(clusters: list[list[list[int]]], num_labels: int) -> np.ndarray:
    """(H, L) Boolean heads x labels matrix from each head's clusters."""
    return membership(clusters, num_labels)


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


def least_overlap(sizes: np.ndarray, num_labels: int) -> float:
    """Mean pairwise Jaccard of label sets of these sizes arranged to overlap as little as possible:
    the largest set first, each set taking the labels used least so far (then the lowest label).
    For two heads this is the least possible overlap; for more an attainable value near it."""
    used = np.zeros(num_labels, dtype=np.int64)
    sets = np.zeros((len(sizes), num_labels), dtype=bool)
    for h in sorted(range(len(sizes)), key=lambda h: (-sizes[h], h)):
        pick = np.lexsort((np.arange(num_labels), used))[:int(sizes[h])]
        sets[h, pick] = True
        used[pick] += 1
    return float(mean_pairwise_jaccard(sets))


def label_profiles(raw: torch.Tensor) -> np.ndarray:
    """(N, L): each node's field on the true label's output above that output's mean over true
    labels, D_n[i] = M_n[i, i] - mean_j M_n[j, i], standardised over labels (zeros for a node with a
    flat profile), so that profile @ profile.T / L is the matrix of Pearson correlations."""
    m = raw.to(torch.float64)
    d = (torch.diagonal(m, dim1=1, dim2=2) - m.mean(dim=1)).numpy()
    # flat: its spread is at the float rounding of the profile's own size (measured before centring,
    # which would remove the size and leave the rounding to be standardised into a profile)
    scale = np.abs(d).max(axis=1, keepdims=True)
    d = d - d.mean(axis=1, keepdims=True)
    sd = d.std(axis=1, keepdims=True)
    return np.where(sd > 1e-12 * np.maximum(scale, 1e-300), d / np.where(sd > 0, sd, 1), 0.0)


def coherence(corr: np.ndarray, assignment: np.ndarray, num_heads: int) -> np.ndarray:
    """Within-head minus between-head mean correlation (off-diagonal pairs) for each row of
    `assignment` (draws, N) giving every dimension's head."""
    n = corr.shape[0]
    off = corr - np.diag(np.diag(corr))
    total = off.sum()
    onehot = np.zeros((assignment.shape[0], n, num_heads))
    np.put_along_axis(onehot, assignment[:, :, None], 1.0, axis=2)
    within = np.einsum("bnh,nm,bmh->b", onehot, off, onehot)
    sizes = onehot.sum(axis=1)  # (draws, H)
    n_within = (sizes * (sizes - 1)).sum(axis=1)
    n_between = n * (n - 1) - n_within
    return within / n_within - (total - within) / n_between


def specialisation_test(raw: torch.Tensor, num_heads: int, draws: int, seed: int) -> tuple[dict, np.ndarray | None]:
    """Coherence of label profiles within heads against the dimensions permuted among heads (see the
    module's docstring). Returns (summary columns, null draws)."""
    n = raw.shape[0]
    out = {"specialisation": np.nan, "specialisation_null_mean": np.nan, "specialisation_p": np.nan,
           "specialisation_p_min": np.nan, "specialisation_status": "ok", "specialisation_reason": ""}
    if num_heads < 2 or n // num_heads < 2:
        out.update(specialisation_status="undefined",
                   specialisation_reason=f"{num_heads} head(s) of {n // max(num_heads, 1)} dimension(s): "
                   "needs two heads of two dimensions or more")
        return out, None
    z = label_profiles(raw)
    corr = z @ z.T / z.shape[1]
    heads = np.arange(n) // (n // num_heads)
    observed = float(coherence(corr, heads[None, :], num_heads)[0])
    rng = np.random.default_rng(seed)
    null = np.empty(draws)
    chunk = max(1, 4_000_000 // (n * n))
    for start in range(0, draws, chunk):
        b = min(chunk, draws - start)
        perm = np.argsort(rng.random((b, n)), axis=1)
        null[start:start + b] = coherence(corr, heads[perm], num_heads)
    p = float((1 + (null >= observed - 1e-12).sum()) / (1 + draws))
    out.update(specialisation=observed, specialisation_null_mean=float(null.mean()), specialisation_p=p,
               specialisation_p_min=1.0 / (1 + draws))
    return out, null


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
    null: np.ndarray | None = None  # the overlap test's null distribution (draws,)
    specialisation_null: np.ndarray | None = None  # the specialisation test's null (draws,)


def analyse_heads(point: str, raw: torch.Tensor, num_heads: int, threshold: float, draws: int = 10_000,
                  seed: int = 0, level: float = 0.05, afcc: bool = False, order: str = "diagonal",
                  time_limit_s: float = CLUSTER_TIME_LIMIT_S) -> HeadAnalysis:
    """Everything of METHOD.md section 3 at one MHA point, from its raw node SNP matrices."""
    m = normalise(head_matrices(raw.to(torch.float64), num_heads), afcc=afcc)
    ns = node_statistics(m, threshold, order, time_limit_s)
    L = m.shape[-1]
    a = label_sets(ns.clusters, L)
    sizes = a.sum(1)
    per_label = a.sum(0)
    observed = float(mean_pairwise_jaccard(a))
    summary = {"point": point, "heads": num_heads, "labels": L, "threshold": threshold,
               "mean_labels_per_head": float(sizes.mean()), "mean_heads_per_label": float(per_label.mean()),
               "labels_without_head": int((per_label == 0).sum()), "observed_jaccard": observed,
               "null_draws": draws, "null_mean": np.nan, "null_sd": np.nan, "overlap_deficit": np.nan,
               "p_value": np.nan, "p_min": np.nan, "level": level, "status": "ok", "reason": ""}
    null = None
    if (sizes > 0).sum() < 2:
        summary.update(status="undefined", reason=f"{int((sizes > 0).sum())} head(s) with a non-empty label set; "
                       "overlap needs at least two")
    else:
        null = null_overlap(sizes, L, draws, seed)
        distinct = np.unique(np.round(null, 9))
        summary.update(null_mean=float(null.mean()), null_sd=float(null.std()))
        if len(distinct) == 1:
            summary.update(status="undefined", reason=f"the null model takes a single value ({distinct[0]:.3f}): "
                           f"label-set sizes {sizes.tolist()} of {L} labels admit one overlap; use more labels, "
                           "more heads or a higher threshold")
        else:
            tol = 1e-9
            p = float((1 + (null <= observed + tol).sum()) / (1 + draws))
            floor = min(least_overlap(sizes, L), float(null.min()))
            p_min = float((1 + (null <= floor + tol).sum()) / (1 + draws))
            summary.update(overlap_deficit=float(null.mean()) - observed, p_value=p, p_min=p_min)
            if p_min >= level:
                summary.update(status="uninformative", reason=f"at label-set sizes {sizes.tolist()} of {L} labels "
                               f"the smallest attainable p is {p_min:.3f} >= {level}: the test cannot reject")
    spec_summary, spec_null = specialisation_test(raw, num_heads, draws, seed)
    summary.update(spec_summary)
    head_stats = {"head": list(range(num_heads)), "labels": sizes.tolist(),
                  "n_clusters": ns.n_clusters.tolist(), "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
                  "label_set": [",".join(map(str, np.flatnonzero(row))) for row in a]}
    return HeadAnalysis(point, num_heads, a, m, head_stats, summary, null, spec_null)
