"""Measuring one point (METHOD.md 2), in two parts that are two pipeline stages. `measure_point`:
train its readout on captured features, compute all nodes' fields on the evaluation split in one
streaming pass, their per-label means (the raw SNP matrices) and each node's test of label
dependence from the same pass. `cluster_point`: from those stored results, normalise, threshold,
clusters, noise, SNR and the point statistics; it alone reads analysis.threshold, normalise and
candidate_order, so a job that changes only those reuses the measured results.
No I/O: the pipeline stores what this returns; Ray decides where it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from snp_service.models import PointInfo
from snp_service.readout import Readout, linear_part, load_rows, readout_accuracy, train_readout
from snp_service.snp import (
    SNPAccumulator,
    fields,
    node_statistics,
    normalise,
    point_label_dependence,
    point_statistics,
)

if TYPE_CHECKING:  # the pure core runs without pydantic (bench/paper_gpu.py on a bare GPU machine)
    from snp_service.spec import AnalysisSpec


@dataclass
class PointResult:
    """The measure stage's result at one point: everything that does not read analysis.threshold,
    normalise or candidate_order (the cluster stage's inputs, `cluster_point`)."""

    row: dict  # readout accuracy, node accuracy, images: the point's measured part of the per-layer row
    readout: Readout
    mean_fields: torch.Tensor  # (N, L, L) float64: mean field per true label, uncentred (the raw SNP matrices)
    label_counts: torch.Tensor  # (L,): evaluation inputs per true label (centring needs them)
    node_label_accuracy: torch.Tensor  # (N, L)
    dependence: dict[str, list]  # per node: own accuracy and the label-dependence test (eta2, p-value)
    pruned: dict | None = None  # the prune stage's work on the same capture (snp_service.actors)

    def raw_matrices(self, normalise: str) -> torch.Tensor:
        """The SNP matrices the analysis reads: centred when normalise is `centred` (METHOD.md 2b)."""
        return analysed_matrices(self.mean_fields, self.label_counts, normalise)


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
    """Readout, its accuracy, every node's fields in one streaming pass, their per-label means and the
    label-dependence test: the measure stage's work at one point (reads only the readout settings)."""
    kind = readout_kind(info, analysis)
    readout = train_readout(train, train_labels, num_labels, kind, analysis.readout_epochs, analysis.readout_lr,
                            seed=analysis.seed, solver=analysis.readout_solver, pool_epochs=analysis.readout_pool_epochs)
    linear, eval_acts = linear_part(readout, evaluation)  # seqpool: pooled once, for the accuracy and the fields
    accuracy = readout_accuracy(linear, eval_acts, eval_labels)
    acc = snp_accumulate(linear, eval_acts, eval_labels, num_labels)
    dep = acc.label_dependence()
    node_acc = acc.node_accuracy().numpy()
    solve = readout.solve or {}
    row = {"point": info.name, "kind": info.kind, "nodes": info.nodes, "heads": info.heads, "readout": kind,
           "readout_accuracy": accuracy, "readout_epochs": analysis.readout_epochs,
           "readout_solver": analysis.readout_solver, "readout_iterations": solve.get("iterations"),
           "readout_grad_max": solve.get("grad_max"), "eval_images": int(acc.counts.sum()),
           "mean_node_accuracy": float(node_acc.mean()), "chance_accuracy": 1.0 / num_labels}
    dependence = {"node": list(range(info.nodes)), "node_accuracy": node_acc.tolist(), "eta2": dep.eta2.tolist(),
                  "p_value": dep.p_value.tolist()}
    return PointResult(row, readout, acc.snp_matrices(), acc.counts.clone(), acc.node_label_accuracy(), dependence)


def analysed_matrices(mean_fields: torch.Tensor, counts: torch.Tensor, normalise: str) -> torch.Tensor:
    """Raw SNP matrices as the analysis reads them (float64): the per-label mean fields, or with
    normalise `centred` minus each (node, output)'s mean field over all inputs (METHOD.md 2b)."""
    m = torch.as_tensor(mean_fields).double()
    if normalise != "centred":
        return m
    c = torch.as_tensor(counts).double()
    overall = (m * c[None, :, None]).sum(dim=1) / c.sum().clamp(min=1)  # (N, L)
    return m - overall[:, None, :]


@dataclass
class ClusterResult:
    row: dict  # the point's row of the per-layer table
    snp_matrices: torch.Tensor  # (N, L, L) normalised as the spec says
    raw_matrices: torch.Tensor  # (N, L, L) float64 before normalisation (centred if asked): heads and ANDC read them
    nodes: dict[str, list]  # per-node statistics, column-wise


def cluster_point(measured: dict, mean_fields: torch.Tensor, counts: torch.Tensor, dependence: dict,
                  analysis: AnalysisSpec) -> ClusterResult:
    """The cluster stage's work at one point from the measure stage's stored results (`measured`: its
    row, `dependence`: its per-node table): normalise, threshold, clusters, noise, SNR, the
    label-dependence verdicts at analysis.fdr and the node-bootstrap intervals. Seconds per point."""
    raw = analysed_matrices(mean_fields, counts, analysis.normalise)
    m = normalise(raw, afcc=analysis.normalise == "afcc")
    ns = node_statistics(m, analysis.threshold, analysis.candidate_order)
    eta2 = np.asarray(dependence["eta2"], dtype=np.float64)
    p_value = np.asarray(dependence["p_value"], dtype=np.float64)
    specific, node_means = point_label_dependence(eta2, p_value, analysis.fdr)
    stats = point_statistics(ns, analysis.bootstrap, analysis.confidence, analysis.seed, node_means)
    row = {k: measured[k] for k in ("point", "kind", "nodes", "heads", "readout")}
    row.update({"normalise": analysis.normalise, "candidate_order": analysis.candidate_order,
                "threshold": analysis.threshold, "readout_accuracy": measured["readout_accuracy"],
                "readout_epochs": measured["readout_epochs"], "readout_solver": measured["readout_solver"],
                "fdr": analysis.fdr, "eval_images": measured["eval_images"], **stats,
                "greedy_fraction": float(ns.greedy.mean()) if len(ns.greedy) else float("nan"),
                "mean_node_accuracy": measured["mean_node_accuracy"], "chance_accuracy": measured["chance_accuracy"],
                "seconds": measured.get("seconds")})
    nodes = {"node": list(dependence["node"]), "cluster_size": ns.cluster_size.tolist(),
             "n_clusters": ns.n_clusters.tolist(), "signal": ns.signal.tolist(), "noise": ns.noise.tolist(),
             "node_accuracy": list(dependence["node_accuracy"]), "eta2": eta2.tolist(), "p_value": p_value.tolist(),
             "label_specific": specific.tolist(), "greedy": ns.greedy.tolist(),
             "clusters": [";".join(",".join(map(str, s)) for s in c) for c in ns.clusters]}
    return ClusterResult(row, m, raw, nodes)
