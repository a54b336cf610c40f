"""ANDC pruning of a point's readout and its baselines (METHOD.md section 4). Pure, no I/O.

A connection is the pair (label k, node n) of the readout weight W[k, n, :] (for a `flatten`
readout the pair owns one weight per position; masks act on whole pairs, so kept fractions are
the same counted either way).

- ANDC: keep (k, n) only where label k is in a cluster of node n; nodes without a cluster lose
  every connection.
- random: for each node, the same number of labels as ANDC keeps, drawn uniformly (seeded).
- magnitude: for each node, the same number of labels with the largest |W[k, n, :]| (L2 over
  positions; ties: lower label first).
Fine-tune: the surviving weights of W are trained with the mask held fixed; the readout's
sequence-pooling weights stay fixed, so only pruned connections differ. Stepped (the default
`analysis.readout_solver: adam`): Adam, cosine, the mask re-applied after every step. Solved
(`lbfgs`): the masked readout's own objective (with the readouts' weight decay) minimised by L-BFGS
to the readouts' tolerance (`finetune`); a seqpool readout's pooled values are then computed once per
image (`readout.linear_part`) instead of in every fine-tune batch: the same computation, but in
batches of another size, so float32 roundings may differ; the stepped solver keeps the per-batch
pooling, and with it the numbers of jobs finished before.

Selection vs scoring: the SNP matrices that choose a mask come from the selection images, the
accuracies that score it from the evaluation split. By default (`heldout`) the selection images are
a seeded subset of the *training* split (`selection_rows`): the network and the readout were trained
on them, but they are disjoint from the scoring split, so no mask is scored on the images that chose
it. The paper's protocol (`eval`: matrices of the evaluation split itself) stays available and every
table row says which was used.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch

from snp_service.readout import (READOUT_WEIGHT_DECAY, Readout, fit_on_features, linear_part, masked_accuracies,
                                 readout_accuracy, solve_linear)
from snp_service.clusters import CLUSTER_TIME_LIMIT_S, membership
from snp_service.clusters import clusters as node_clusters
from snp_service.structural import ff_magnitude, head_magnitude


def andc_mask(clusters: list[list[list[int]]], num_labels: int) -> torch.Tensor:
    """(L, N) Boolean: True where label k is in a cluster of node n."""
    return torch.from_numpy(membership(clusters, num_labels).T.copy())


def andc_mask_at(m_normalised: torch.Tensor, threshold: float, order: str = "diagonal",
                 time_limit_s: float = CLUSTER_TIME_LIMIT_S) -> torch.Tensor:
    """ANDC mask from normalised node SNP matrices (N, L, L) at a threshold (candidate `order`; the
    exact cluster solver's `time_limit_s` per large component)."""
    return andc_mask([node_clusters(m, threshold, order, time_limit_s) for m in m_normalised], m_normalised.shape[-1])


def selection_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """The seeded subset of the training split whose SNP matrices select masks (sorted): a training
    subset, disjoint from the scoring split (the evaluation images)."""
    k = min(n, max(1, math.floor(fraction * n + 0.5)))
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def random_mask(counts: torch.Tensor, num_labels: int, seed: int) -> torch.Tensor:
    """(L, N): for node n, counts[n] labels chosen uniformly at random (seeded)."""
    g = torch.Generator().manual_seed(seed)
    n = len(counts)
    ranks = torch.rand(n, num_labels, generator=g).argsort(dim=1).argsort(dim=1)
    return (ranks < counts[:, None]).T


def magnitude_mask(weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(L, N): for node n, the counts[n] labels with the largest |W[k, n, :]|."""
    norms = weight.detach().double().cpu().norm(dim=2).T  # (N, L)
    L = norms.shape[1]
    # stable sort by decreasing norm: ties keep the lower label first
    order = torch.from_numpy(np.argsort(-norms.numpy(), axis=1, kind="stable"))
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(L).expand_as(order))
    return (ranks < counts[:, None]).T


# ---- criteria: one interface for readout masks and for structural pruning (as Torch-Pruning's
# importance classes). `readout_mask` keeps, per node, as many labels as ANDC keeps; `unit_scores`
# rates every FF hidden unit and every head of each CCT block (lowest removed first) from the
# block's weights or from the nodes' label dependence (eta2, snp.LabelDependence) on the selection
# images at its FF / MHA points.


class Criterion:
    name: str  # in the ANDC table
    structural_name: str  # in the structural table

    def readout_mask(self, andc: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unit_scores(self, block, ff_eta2: np.ndarray | None, head_eta2: np.ndarray | None,
                    num_heads: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """ff_eta2 / head_eta2: the label-dependence effect size (eta2) of every node at the block's
        FF / MHA point on the selection images, or None where the point was not measured."""
        raise NotImplementedError


class SNPCriterion(Criterion):
    """ANDC for readouts (labels in the node's clusters); for units, how strongly the unit's field
    depends on the label (its eta2, snp.LabelDependence), and for a head the mean eta2 of its
    dimensions: label-blind units go first, whatever their clusters look like."""

    name, structural_name = "andc", "snp"

    def readout_mask(self, andc, weight):
        return andc

    def unit_scores(self, block, ff_eta2, head_eta2, num_heads):
        heads = None
        if head_eta2 is not None:
            e = np.asarray(head_eta2, dtype=np.float64)
            heads = e.reshape(num_heads, len(e) // num_heads).mean(axis=1)
        return (None if ff_eta2 is None else np.asarray(ff_eta2, dtype=np.float64)), heads


class RandomLabels(Criterion):
    """The AFCC paper's baseline: as many labels per node as ANDC keeps, drawn at random (seeded)."""

    name = structural_name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def readout_mask(self, andc, weight):
        return random_mask(andc.sum(dim=0), andc.shape[0], self.seed)


class WeightMagnitude(Criterion):
    """Largest |W| per node for readouts; |linear1 row| x |linear2 column| for FF units and
    |v rows| x |proj columns| for heads."""

    name = structural_name = "magnitude"

    def readout_mask(self, andc, weight):
        return magnitude_mask(weight, andc.sum(dim=0))

    def unit_scores(self, block, ff_eta2, head_eta2, num_heads):
        return ff_magnitude(block), head_magnitude(block)


def baseline_masks(andc: torch.Tensor, weight: torch.Tensor, methods: list[str], seed: int) -> dict[str, torch.Tensor]:
    """ANDC plus each baseline at exactly ANDC's number of kept connections per node."""
    criteria: list[Criterion] = [SNPCriterion()] + [RandomLabels(seed) if m == "random" else WeightMagnitude()
                                                    for m in methods]
    return {c.name: c.readout_mask(andc, weight) for c in criteria}


def masked(readout: Readout, mask: torch.Tensor) -> Readout:
    pruned = copy.deepcopy(readout)
    with torch.no_grad():
        pruned.weight.mul_(mask[:, :, None].to(pruned.weight))
    return pruned


def finetune(readout: Readout, mask: torch.Tensor, train: np.ndarray, labels: np.ndarray, epochs: int, lr: float,
             seed: int = 0, batch_size: int = 256, solver: str = "adam") -> Readout:
    """Train the surviving weights of a masked readout, mask held fixed (pooling frozen).

    solver `adam` (stepped): `epochs` epochs, no weight decay, the pruned weights re-zeroed after each
    step. solver `lbfgs` (solved; analysis.readout_solver lbfgs): the surviving weights minimise the
    readouts' own objective (mean cross-entropy + READOUT_WEIGHT_DECAY/2 |W|^2; without the decay a
    separable masked problem has no minimum) by L-BFGS to the readouts' tolerance (readout.solve_linear
    with the mask), from the masked weights; `epochs` 0 still means no fine-tune."""
    tuned = masked(readout, mask)
    if epochs == 0:
        return tuned
    if solver == "lbfgs":
        solve_linear(tuned, train, labels, READOUT_WEIGHT_DECAY, mask=mask)
        return tuned.eval()
    torch.manual_seed(seed)
    m = mask[:, :, None].to(tuned.weight)
    for p in tuned.parameters():
        p.requires_grad_(p is tuned.weight)

    def remask():
        with torch.no_grad():
            tuned.weight.mul_(m)

    tuned.train()
    fit_on_features(tuned, [tuned.weight], train, labels, epochs, lr, 0.0, seed, batch_size, remask)
    for p in tuned.parameters():
        p.requires_grad_(True)
    return tuned.eval()


# column order of the ANDC table and the curve (rows may come back from JSON with keys sorted)
ANDC_COLUMNS = ["point", "method", "selection", "threshold", "kept_fraction", "nodes_without_connection",
                "accuracy_full", "accuracy_pruned", "accuracy_finetuned", "finetune_epochs"]
CURVE_COLUMNS = ["point", "threshold", "selection", "kept_fraction", "accuracy_pruned", "accuracy_full", "labels"]


def prune_point(point: str, readout: Readout, m_normalised: torch.Tensor, train: np.ndarray, train_labels: np.ndarray,
                evaluation: np.ndarray, eval_labels: np.ndarray, threshold: float, curve_thresholds: list[float],
                methods: list[str], finetune_epochs: int, finetune_lr: float, seed: int = 0,
                selection: str = "eval", order: str = "diagonal",
                time_limit_s: float = CLUSTER_TIME_LIMIT_S, solver: str = "adam") -> tuple[list[dict], list[dict]]:
    """(table rows: method x kept fraction x accuracy before/after fine-tune, curve rows).

    m_normalised: the normalised SNP matrices of the selection images (they choose the masks);
    evaluation / eval_labels score them; `selection` names the selection images in every row.
    solver `lbfgs` (the readouts were solved): a seqpool readout's pooling (frozen here) is applied to
    every image once, the masks are scored on W alone (see the module's docstring) and the fine-tunes
    solved (`finetune`); `adam`: the fine-tunes are stepped."""
    L = m_normalised.shape[-1]
    if solver == "lbfgs":
        linear, train = linear_part(readout, train)
        _, evaluation = linear_part(readout, evaluation)
        readout = linear
    andc = andc_mask_at(m_normalised, threshold, order, time_limit_s)
    masks = baseline_masks(andc, readout.weight, methods, seed)
    curve_masks = [andc_mask_at(m_normalised, th, order, time_limit_s) for th in curve_thresholds]
    # the unpruned readout, each method's mask and each curve threshold's: one pass over the features
    scored = masked_accuracies(readout, [None, *masks.values(), *curve_masks], evaluation, eval_labels)
    full, before, on_curve = scored[0], scored[1:1 + len(masks)], scored[1 + len(masks):]
    rows = []
    for (method, mask), acc_before in zip(masks.items(), before):
        tuned = finetune(readout, mask, train, train_labels, finetune_epochs, finetune_lr, seed, solver=solver)
        after = readout_accuracy(tuned, evaluation, eval_labels) if finetune_epochs else float("nan")
        rows.append({"point": point, "method": method, "selection": selection, "threshold": threshold,
                     "kept_fraction": float(mask.float().mean()),
                     "nodes_without_connection": int((mask.sum(0) == 0).sum()), "accuracy_full": full,
                     "accuracy_pruned": acc_before, "accuracy_finetuned": after, "finetune_epochs": finetune_epochs})
    curve = [{"point": point, "threshold": th, "selection": selection, "kept_fraction": float(mask.float().mean()),
              "accuracy_pruned": acc, "accuracy_full": full, "labels": L}
             for th, mask, acc in zip(curve_thresholds, curve_masks, on_curve)]
    return rows, curve
