"""Measuring one point (METHOD.md 2), in two parts that are two pipeline stages.

`measure_point` (the measure stage): train the point's readout on captured features, compute all
nodes' fields on the evaluation split in one streaming pass, their per-label sums (from which the
raw SNP matrices follow), and each node's test of label dependence from the same pass, with the
point's label-dependence statistics (label-specific fraction at analysis.fdr, effect size, their
node-bootstrap intervals). None of it reads analysis.threshold, normalise, candidate_order or
cluster_time_limit_s.
`cluster_point` (the cluster stage): from those stored results, normalise, threshold, clusters,
noise, SNR, the greedy fallback's share and their intervals: seconds per point. A job that changes
only those four settings reuses the measured results of a finished job.
No I/O: the pipeline stores what these return; Ray decides where `measure_point` runs."""

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
    joined_statistics,
    node_mean_statistics,
    node_statistics,
    normalisation_flags,
    normalise,
    point_label_dependence,
    point_statistics,
    snp_matrices_from,
)

if TYPE_CHECKING:  # the pure core runs without pydantic (bench/paper_gpu.py on a bare GPU machine)
    from snp_service.spec import AnalysisSpec

# the point's label-dependence statistics, with their `_lo` / `_hi`: measured, before any threshold
LABEL_STATISTICS = ("label_specific_fraction", "effect_size")


@dataclass
class PointResult:
    """The measure stage's result at one point: everything that does not read analysis.threshold,
    normalise, candidate_order or cluster_time_limit_s (the cluster stage's, `cluster_point`)."""

    row: dict  # the point's measured part of the per-layer row: readout, images, label-dependence statistics
    readout: Readout
    field_sums: torch.Tensor  # (N, L, L) float64: sum of the field over evaluation inputs of each true label
    label_counts: torch.Tensor  # (L,) float64: evaluation inputs per true label
    node_label_accuracy: torch.Tensor  # (N, L)
    dependence: dict[str, list]  # per node: own accuracy, label-dependence test (eta2, p-value), verdict at fdr
    pruned: dict | None = None  # the prune stage's work on the same capture (snp_service.actors)

    def raw_matrices(self, normalise: str) -> torch.Tensor:
        """The SNP matrices before normalisation (float64), centred when normalise is `centred`."""
        return snp_matrices_from(self.field_sums, self.label_counts, normalisation_flags(normalise)[0])


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
    """Readout (analysis.readout_solver), its accuracy, every node's fields in one streaming pass, their
    per-label sums and the label-dependence tests and statistics: the measure stage's work at one point."""
    kind = readout_kind(info, analysis)
    readout = train_readout(train, train_labels, num_labels, kind, analysis.readout_epochs, analysis.readout_lr,
                            seed=analysis.seed, solver=analysis.readout_solver,
                            pool_epochs=analysis.readout_pool_epochs)
    accuracy = readout_accuracy(readout, evaluation, eval_labels)
    acc = snp_accumulate(readout, evaluation, eval_labels, num_labels)
    dep = acc.label_dependence()
    specific, node_means = point_label_dependence(dep, analysis.fdr)
    label_stats = node_mean_statistics(node_means, analysis.bootstrap, analysis.confidence, analysis.seed)
    node_acc = acc.node_accuracy().numpy()
    solve = readout.solve or {}
    row = {"point": info.name, "kind": info.kind, "nodes": info.nodes, "heads": info.heads, "readout": kind,
           "readout_accuracy": accuracy, "readout_epochs": analysis.readout_epochs,
           "readout_solver": analysis.readout_solver, "readout_iterations": solve.get("iterations"),
           "readout_grad_max": solve.get("grad_max"), "fdr": analysis.fdr, "eval_images": int(acc.counts.sum()),
           **label_stats, "mean_node_accuracy": float(node_acc.mean()), "chance_accuracy": 1.0 / num_labels}
    dependence = {"node": list(range(info.nodes)), "node_accuracy": node_acc.tolist(), "eta2": dep.eta2.tolist(),
                  "p_value": dep.p_value.tolist(), "label_specific": specific.tolist()}
    return PointResult(row, readout, acc.sums.clone(), acc.counts.clone(), acc.node_label_accuracy(), dependence)


@dataclass
class ClusterResult:
    row: dict  # the point's row of the per-layer table
    snp_matrices: torch.Tensor  # (N, L, L) normalised as the spec says
    raw_matrices: torch.Tensor  # (N, L, L) float64 before normalisation: sums over nodes stay exact (heads)
    nodes: dict[str, list]  # per-node statistics, column-wise


def cluster_point(measured: dict, field_sums: torch.Tensor, label_counts: torch.Tensor, dependence: dict,
                  analysis: AnalysisSpec) -> ClusterResult:
    """The cluster stage's work at one point from the measure stage's results (`measured`: its row,
    `dependence`: its per-node table): normalise, threshold, clusters, noise, SNR and their node-bootstrap
    intervals, joined with the measured label-dependence statistics into the point's row."""
    centred, afcc = normalisation_flags(analysis.normalise)
    raw = snp_matrices_from(torch.as_tensor(field_sums, dtype=torch.float64),
                            torch.as_tensor(label_counts, dtype=torch.float64), centred)
    m = normalise(raw, afcc=afcc)
    ns = node_statistics(m, analysis.threshold, analysis.candidate_order, analysis.cluster_time_limit_s)
    label_stats = {f"{k}{end}": measured[f"{k}{end}"] for end in ("", "_lo", "_hi") for k in LABEL_STATISTICS}
    stats = joined_statistics(point_statistics(ns, analysis.bootstrap, analysis.confidence, analysis.seed),
                              label_stats)
    row = {k: measured[k] for k in ("point", "kind", "nodes", "heads", "readout")}
    row.update({"normalise": analysis.normalise, "candidate_order": analysis.candidate_order,
                "threshold": analysis.threshold, "readout_accuracy": measured["readout_accuracy"],
                "readout_epochs": measured["readout_epochs"], "readout_solver": measured["readout_solver"],
                "fdr": measured["fdr"], "eval_images": measured["eval_images"], **stats,
                "greedy_fraction": float(ns.greedy.mean()) if len(ns.greedy) else float("nan"),
                "mean_node_accuracy": measured["mean_node_accuracy"], "chance_accuracy": measured["chance_accuracy"]})
    if "seconds" in measured:
        row["seconds"] = measured["seconds"]
    nodes = {"node": list(dependence["node"]), "cluster_size": ns.cluster_size.tolist(),
             "n_clusters": ns.n_clusters.tolist(), "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
             "node_accuracy": list(dependence["node_accuracy"]), "eta2": list(dependence["eta2"]),
             "p_value": list(dependence["p_value"]), "label_specific": list(dependence["label_specific"]),
             "greedy": ns.greedy.tolist(), "clusters": [";".join(",".join(map(str, s)) for s in c) for c in ns.clusters]}
    return ClusterResult(row, m, raw, nodes)
