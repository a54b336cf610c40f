"""The per-point (layers) table's schema, declared once (issue 28): its columns, their types, which
carry a node-bootstrap interval (`<name>_lo`, `<name>_hi`), and how each is shown. The store writes
what the science returns; the CLI (`results --table layers`), the report, the figures and the unified
comparison read their columns from here, so a new per-point statistic is one line in the science
(snp_service.snp / measure) and one line below. `tests/test_tables.py` checks a measured point's row
against this declaration, both ways.

The heads and ANDC tables are declared by the columns `results --table` shows (their science is one
function each); every other column is still stored and shown with `--columns all`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Column:
    """One column of the layers table.

    title: how a figure panel or a report names it; interval: the row also holds `<name>_lo` and
    `<name>_hi` (95% BCa over nodes); shown: in `results --table layers` by default ("value"; with its
    interval: "interval"; not: ""); reported: in the
    job report's table; compared: averaged over seeds in the unified comparison (mean, sd, and a
    t-interval for `snr` and `effect_size`); plotted: a panel of the per-point and comparison figures."""

    name: str
    dtype: type[pl.DataType]
    title: str = ""
    interval: bool = False
    shown: str = "value"
    reported: bool = True
    compared: bool = False
    plotted: bool = False


_F, _I, _S = pl.Float64, pl.Int64, pl.String
LAYERS: tuple[Column, ...] = (
    Column("point", _S, "point"),
    Column("kind", _S, "point kind (conv, mha, ff, block)"),
    Column("nodes", _I, "nodes", shown=""),
    Column("heads", _I, "heads (MHA points)", shown="", reported=False),
    Column("readout", _S, "readout kind (flatten, seqpool)"),
    Column("normalise", _S, "normalisation", shown="", reported=False),
    Column("candidate_order", _S, "candidate order", shown="", reported=False),
    Column("threshold", _F, "threshold", shown="", reported=False),
    Column("readout_accuracy", _F, "readout accuracy", compared=True, plotted=True),
    Column("readout_epochs", _I, "readout epochs", shown="", reported=False),
    Column("readout_solver", _S, "readout solver (adam: stepped, lbfgs: solved)", shown="", reported=False),
    Column("fdr", _F, "false discovery rate of the per-node tests", shown="", reported=False),
    Column("eval_images", _I, "evaluation images", shown="", reported=False),
    Column("label_specific_fraction", _F, "label-specific nodes (share rejected at the FDR)", interval=True, shown="interval",
           compared=True, plotted=True),
    Column("effect_size", _F, "effect size: mean eta² of label dependence", interval=True, shown="interval", compared=True,
           plotted=True),
    Column("mean_cluster_size", _F, "mean cluster size", interval=True, compared=True, plotted=True),
    Column("mean_n_clusters", _F, "mean clusters per node", interval=True, shown=""),
    Column("mean_signal", _F, "mean signal", interval=True, shown="", reported=False),
    Column("mean_noise", _F, "mean noise", interval=True, compared=True),
    Column("noise_per_label", _F, "noise per covered label", interval=True, shown="", compared=True, plotted=True),
    Column("snr", _F, "SNR (description: mean signal / mean noise)", interval=True, shown="interval", compared=True,
           plotted=True),
    Column("mean_node_accuracy", _F, "mean single-node accuracy", compared=True),
    Column("frac_no_cluster", _F, "share of nodes without a cluster", interval=True, compared=True),
    Column("greedy_fraction", _F, "share of nodes on the greedy cluster rule", compared=True),
    Column("chance_accuracy", _F, "chance accuracy (1 / labels)", shown="", reported=False),
)
LAYER_COLUMNS: dict[str, Column] = {c.name: c for c in LAYERS}


def layer_names(**flags: bool) -> list[str]:
    """The layers table's column names with every given flag set, in the declared order:
    `layer_names(compared=True)`, `layer_names(plotted=True)`."""
    return [c.name for c in LAYERS if all(bool(getattr(c, k)) == v for k, v in flags.items())]


def shown_layer_columns() -> list[str]:
    """What `results --table layers` shows by default: the shown columns, the verdicts' and SNR's with
    their intervals."""
    return [n for c in LAYERS if c.shown
            for n in ([c.name, f"{c.name}_lo", f"{c.name}_hi"] if c.shown == "interval" else [c.name])]


def layer_schema() -> dict[str, type[pl.DataType]]:
    """Every stored column of the layers table (intervals included) and its type."""
    out: dict[str, type[pl.DataType]] = {}
    for c in LAYERS:
        out[c.name] = c.dtype
        if c.interval:
            out[f"{c.name}_lo"] = out[f"{c.name}_hi"] = c.dtype
    return out


# the columns `results --table` shows unless --columns says otherwise (`--columns all`: every one)
SHOWN = {
    "layers": shown_layer_columns(),
    "heads": ["point", "heads", "mean_labels_per_head", "mean_heads_per_label", "observed_jaccard", "null_mean",
              "p_value", "p_min", "status", "specialisation", "specialisation_null_mean", "specialisation_p"],
    "andc": ["point", "method", "selection", "kept_fraction", "accuracy_full", "accuracy_pruned", "accuracy_finetuned"],
}
