"""Measuring one point end to end (METHOD.md 2): train its readout on captured features, compute
all nodes' fields on the evaluation split in one streaming pass, then SNP matrices, clusters and
statistics, and each node's test of label dependence from the same streaming pass.
No I/O: the pipeline stores what this returns; Ray decides where it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from snp_service.models import PointInfo
from snp_service.readout import Readout, load_rows, readout_accuracy, train_readout
from snp_service.snp import (
    SNPAccumulator,
    fields,
    node_statistics,
    normalisation_flags,
    normalise,
    point_label_dependence,
    point_statistics,
)

if TYPE_CHECKING:  # the pure core runs without pydantic (bench/paper_gpu.py on a bare GPU machine)
    from snp_service.spec import AnalysisSpec


@dataclass
class PointResult:
    row: dict  # one row of the per-layer table
    readout: Readout
    snp_matrices: torch.Tensor  # (N, L, L), normalised as the spec says
    raw_matrices: torch.Tensor  # (N, L, L) float64 before normalisation: sums over nodes stay exact (heads)
    node_label_accuracy: torch.Tensor  # (N, L)
    nodes: dict[str, list]  # per-node statistics, column-wise
    pruned: dict | None = None  # the prune stage's work on the same capture (snp_service.actors)


def readout_kind(info: PointInfo, analysis: AnalysisSpec) -> str:
    return "flatten" if info.kind == "conv" else analysis.readout


@torch.no_grad()
def snp_accumulate(readout: Readout, feats: np.ndarray, labels: np.ndarray, num_labels: int,
                   batch_size: int = 256, rows: np.ndarray | None = None) -> SNPAccumulator:
    """SNP sums (and the label-dependence test's moments) of every node over `rows` of the features
    (default: all), in one streaming pass."""
    acc = SNPAccumulator(feats.shape[1], num_labels)
    w = readout.weight.double()
    rows = np.arange(len(labels)) if rows is None else np.sort(rows)
    for i in range(0, len(rows), batch_size):
        idx = rows[i:i + batch_size]
        f = fields(readout.node_activations(load_rows(feats, idx)).double(), w)
        acc.update(f, torch.from_numpy(labels[idx]))
    return acc


def measure_point(info: PointInfo, train: np.ndarray, train_labels: np.ndarray, evaluation: np.ndarray,
                  eval_labels: np.ndarray, num_labels: int, analysis: AnalysisSpec) -> PointResult:
    kind = readout_kind(info, analysis)
    readout = train_readout(train, train_labels, num_labels, kind, analysis.readout_epochs, analysis.readout_lr,
                            seed=analysis.seed)
    accuracy = readout_accuracy(readout, evaluation, eval_labels)
    acc = snp_accumulate(readout, evaluation, eval_labels, num_labels)
    centred, afcc = normalisation_flags(analysis.normalise)
    raw = acc.snp_matrices(centred=centred)
    m = normalise(raw, afcc=afcc)
    ns = node_statistics(m, analysis.threshold, analysis.candidate_order, analysis.cluster_time_limit_s)
    dep = acc.label_dependence()
    specific, node_means = point_label_dependence(dep, analysis.fdr)
    stats = point_statistics(ns, analysis.bootstrap, analysis.confidence, analysis.seed, node_means)
    node_acc = acc.node_accuracy().numpy()
    row = {"point": info.name, "kind": info.kind, "nodes": info.nodes, "heads": info.heads, "readout": kind,
           "normalise": analysis.normalise, "candidate_order": analysis.candidate_order,
           "threshold": analysis.threshold, "readout_accuracy": accuracy, "readout_epochs": analysis.readout_epochs,
           "fdr": analysis.fdr, "eval_images": int(acc.counts.sum()), **stats,
           "greedy_fraction": float(ns.greedy.mean()) if len(ns.greedy) else float("nan"),
           "mean_node_accuracy": float(node_acc.mean()), "chance_accuracy": 1.0 / num_labels}
    nodes = {"node": list(range(info.nodes)), "cluster_size": ns.cluster_size.tolist(),
             "n_clusters": ns.n_clusters.tolist(), "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
             "node_accuracy": node_acc.tolist(), "eta2": dep.eta2.tolist(), "p_value": dep.p_value.tolist(),
             "label_specific": specific.tolist(), "greedy": ns.greedy.tolist(),
             "clusters": [";".join(",".join(map(str, s)) for s in c) for c in ns.clusters]}
    return PointResult(row, readout, m, raw, acc.node_label_accuracy(), nodes)
