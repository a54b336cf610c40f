"""Figures of a job, drawn from its stored results only (matplotlib, Agg). Each function takes
plain tables/arrays and returns a Figure; snp_service.report stores them as PNG and SVG."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
# user text (class names, point and job names) is literal: `$\\bad$` must not be read as mathtext
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from snp_service.tables import LAYER_COLUMNS, layer_names  # noqa: E402

KIND_STYLE = {"conv": ("tab:gray", "s"), "mha": ("tab:blue", "o"), "ff": ("tab:orange", "^"),
              "block": ("tab:green", "D")}


def _hide_unused(axes: np.ndarray, used: int) -> None:
    """Blank the panels of a grid beyond the first `used`."""
    for ax in list(axes.flat)[used:]:
        ax.axis("off")


def _short(names: list[str], width: int = 10) -> list[str]:
    return [n if len(n) <= width else n[:width - 1] + "." for n in names]


def layer_curves(layers: pl.DataFrame) -> plt.Figure:
    """Per-point statistics along the network, with bootstrap intervals, one colour per point kind."""
    panels = [(c, LAYER_COLUMNS[c].title) for c in layer_names(plotted=True) if c in layers.columns]
    rows = max(1, math.ceil(len(panels) / 3))  # three panels a row, however many the schema plots
    fig, axes = plt.subplots(rows, 3, figsize=(13, 3.25 * rows), constrained_layout=True, squeeze=False)
    x = np.arange(len(layers))
    for ax, (col, title) in zip(axes.flat, panels):
        for kind, (color, marker) in KIND_STYLE.items():
            sel = np.flatnonzero((layers["kind"] == kind).to_numpy())
            if not len(sel):
                continue
            y = layers[col].to_numpy()[sel].astype(float)
            if f"{col}_lo" in layers.columns:
                lo, hi = layers[f"{col}_lo"].to_numpy()[sel], layers[f"{col}_hi"].to_numpy()[sel]
                err = np.vstack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)])
                err = np.where(np.isfinite(err), err, 0)
                ax.errorbar(x[sel], y, yerr=err, color=color, marker=marker, ls="-", capsize=3, label=kind)
            else:
                ax.plot(x[sel], y, color=color, marker=marker, label=kind)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, layers["point"].to_list(), rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)
    _hide_unused(axes, len(panels))
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Per-layer SNP statistics along the network (bars: 95% BCa node-bootstrap intervals)")
    return fig


def snp_heatmaps(point: str, matrices: np.ndarray, clusters: list[str], nodes: list[int], threshold: float,
                 labels: list[str]) -> plt.Figure:
    """Normalised and Boolean SNP matrices of chosen nodes; labels reordered so each cluster is a
    contiguous diagonal block, outlined in red."""
    fig, axes = plt.subplots(2, len(nodes), figsize=(3.2 * len(nodes), 6.6), squeeze=False, constrained_layout=True)
    L = matrices.shape[-1]
    for j, n in enumerate(nodes):
        groups = [[int(v) for v in c.split(",")] for c in clusters[n].split(";") if c] if clusters[n] else []
        in_cluster = [k for g in groups for k in g]
        order = in_cluster + [k for k in range(L) if k not in in_cluster]
        m = matrices[n].astype(float)[np.ix_(order, order)]
        for row, (data, title) in enumerate(((m, f"node {n}: normalised"), (m > threshold, f"node {n}: M > {threshold}"))):
            ax = axes[row, j]
            im = ax.imshow(data, cmap="RdBu_r" if row == 0 else "Greys", vmin=-1 if row == 0 else 0, vmax=1)
            start = 0
            for g in groups:
                ax.add_patch(Rectangle((start - 0.5, start - 0.5), len(g), len(g), fill=False, ec="red", lw=1.5))
                start += len(g)
            ax.set_title(title, fontsize=9)
            if L <= 20:
                names = _short([labels[k] for k in order])
                ax.set_xticks(range(L), names, rotation=90, fontsize=6)
                ax.set_yticks(range(L), names, fontsize=6)
            else:
                ax.set_xticks([])
                ax.set_yticks([])
            ax.set_xlabel("output unit", fontsize=7)
            ax.set_ylabel("input label", fontsize=7)
            if row == 0 and j == len(nodes) - 1:
                fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"{point}: SNP matrices (clusters outlined)")
    return fig


def cluster_histograms(sizes: dict[str, np.ndarray], num_labels: int) -> plt.Figure:
    n = len(sizes)
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False, constrained_layout=True)
    for ax, (p, s) in zip(axes.flat, sizes.items()):
        ax.hist(s, bins=np.arange(num_labels + 2) - 0.5, color="tab:purple")
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("cluster size (labels covered)", fontsize=7)
        ax.set_ylabel("nodes", fontsize=7)
    _hide_unused(axes, n)
    fig.suptitle("Cluster size per node (0: no cluster)")
    return fig


def heads_figure(point: str, heads_labels: np.ndarray, null: np.ndarray | None, summary: dict,
                 labels: list[str]) -> plt.Figure:
    """Heads x labels (labels grouped by the first head that owns them) and observed vs null overlap."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw={"width_ratios": [2.2, 1]},
                               constrained_layout=True)
    H, L = heads_labels.shape
    owner = [int(np.argmax(heads_labels[:, k])) if heads_labels[:, k].any() else H for k in range(L)]
    order = sorted(range(L), key=lambda k: (owner[k], k))
    a.imshow(heads_labels[:, order], cmap="Blues", aspect="auto", vmin=0, vmax=1)
    a.set_yticks(range(H), [f"head {h}" for h in range(H)], fontsize=8)
    if L <= 40:
        a.set_xticks(range(L), _short([labels[k] for k in order]), rotation=90, fontsize=7)
    a.set_title(f"{point}: labels in each head's clusters", fontsize=10)
    if null is not None and len(null):
        b.hist(null, bins=40, color="lightgray", label="null: random label sets")
        b.axvline(summary["observed_jaccard"], color="red", label="observed")
        b.legend(fontsize=7)
    b.set_xlabel("mean pairwise Jaccard overlap", fontsize=8)
    if summary["status"] == "undefined":
        verdict = "undefined: " + summary["reason"][:60]
    else:
        verdict = (f"p = {summary['p_value']:.4f} (smallest attainable {summary['p_min']:.4f})"
                   + (": uninformative" if summary["status"] == "uninformative" else ""))
    b.set_title(verdict, fontsize=9)
    return fig


def pruning_figure(curve: pl.DataFrame, andc: pl.DataFrame) -> plt.Figure:
    points = curve["point"].unique(maintain_order=True).to_list()
    cols = min(4, len(points))
    rows = math.ceil(len(points) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    marks = {"andc": ("tab:red", "o"), "random": ("tab:gray", "v"), "magnitude": ("tab:blue", "s")}
    for ax, p in zip(axes.flat, points):
        c = curve.filter(pl.col("point") == p).sort("kept_fraction")
        ax.plot(c["kept_fraction"], c["accuracy_pruned"], color="tab:red", alpha=0.5, marker=".",
                label="ANDC over thresholds")
        ax.axhline(c["accuracy_full"][0], color="k", lw=0.8, ls=":", label="unpruned")
        for r in andc.filter(pl.col("point") == p).iter_rows(named=True):
            color, marker = marks.get(r["method"], ("k", "*"))
            ax.scatter([r["kept_fraction"]], [r["accuracy_pruned"]], color=color, marker=marker, label=r["method"])
            if np.isfinite(r["accuracy_finetuned"]):
                ax.scatter([r["kept_fraction"]], [r["accuracy_finetuned"]], facecolors="none", edgecolors=color,
                           marker=marker, s=60, label=f"{r['method']} + fine-tune")
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("kept fraction of readout connections", fontsize=7)
        ax.set_ylabel("readout accuracy", fontsize=7)
        ax.grid(alpha=0.3)
    _hide_unused(axes, len(points))
    axes.flat[0].legend(fontsize=6)
    fig.suptitle("ANDC pruning vs baselines at equal connections per node")
    return fig


def training_curves(metrics: pl.DataFrame) -> plt.Figure:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), constrained_layout=True)
    ep = metrics["epoch"].to_numpy() + 1
    evaluated = np.isfinite(metrics["eval_loss"].to_numpy().astype(float))  # train.eval_every > 1 leaves gaps
    a.plot(ep, metrics["train_loss"], marker="o", label="train")
    a.plot(ep[evaluated], metrics["eval_loss"].to_numpy()[evaluated], marker="o", label="eval")
    a.set_title("loss")
    b.plot(ep, metrics["train_accuracy"], marker="o", label="train")
    b.plot(ep[evaluated], metrics["eval_accuracy"].to_numpy()[evaluated], marker="o", label="eval")
    b.set_title("accuracy")
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def heads_study(table: pl.DataFrame) -> plt.Figure:
    """Measures vs number of heads (width fixed), one line per MHA point."""
    panels = [("accuracy", "network accuracy"), ("snr", "SNR at the point"),
              ("mean_labels_per_head", "labels per head"),
              ("overlap_deficit", "overlap deficit vs null (undefined: gap)")]
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), constrained_layout=True)
    for ax, (col, title) in zip(axes, panels):
        for p in table["point"].unique(maintain_order=True):
            t = table.filter(pl.col("point") == p).sort("num_heads")
            y = np.array([np.nan if v is None else v for v in t[col].to_list()], dtype=float)
            ax.plot(t["num_heads"], y, marker="o", label=p)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of heads")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return fig


def sweep_figure(table: pl.DataFrame, dims: list[str]) -> plt.Figure:
    """Each measure against each swept dimension (other dimensions as separate lines)."""
    measures = [c for c in ("accuracy", "mean_snr", "heads_p", "andc_drop") if c in table.columns]
    fig, axes = plt.subplots(len(dims), max(1, len(measures)), figsize=(3.6 * max(1, len(measures)), 3 * len(dims)),
                             squeeze=False, constrained_layout=True)
    for i, d in enumerate(dims):
        others = [o for o in dims if o != d]
        groups = table.partition_by(others, maintain_order=True) if others else [table]
        for j, m in enumerate(measures):
            ax = axes[i, j]
            for g in groups:
                g = g.sort(d)
                y = np.array([np.nan if v is None else v for v in g[m].to_list()], dtype=float)
                label = ", ".join(f"{o}={g[o][0]}" for o in others) or None
                ax.plot(g[d], y, marker="o", label=label)
            ax.set_xlabel(d)
            ax.set_title(m, fontsize=9)
            ax.grid(alpha=0.3)
            if others and i == 0 and j == 0:
                ax.legend(fontsize=6)
    return fig


def compare_depth(layers: pl.DataFrame) -> plt.Figure:
    """The unified view: each measure against relative depth, one colour per model, one marker per
    point kind (CNN filters and CCT FF / MHA / block points on the same axes); bars: spread over
    seeds (sd), and for the effect size and SNR also the 95% t-interval of the mean over seeds (thin)."""
    panels = [(c, LAYER_COLUMNS[c].title) for c in layer_names(plotted=True)]
    hollow = ("mha", "block")  # transformer points drawn with open markers
    rows = max(1, math.ceil(len(panels) / 3))
    fig, axes = plt.subplots(rows, 3, figsize=(14, 3.75 * rows), constrained_layout=True, squeeze=False)
    models = layers["model"].unique(maintain_order=True).to_list()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (col, title) in zip(axes.flat, panels):
        for i, model in enumerate(models):
            t = layers.filter(pl.col("model") == model).sort("relative_depth")
            color = colors[i % len(colors)]
            x, y = t["relative_depth"].to_numpy(), t[col].to_numpy().astype(float)
            ax.plot(x, y, color=color, lw=1.2, alpha=0.7, label=f"{model} ({t['family'][0]})")
            sd = t[f"{col}_sd"].to_numpy().astype(float) if f"{col}_sd" in t.columns else np.zeros_like(y)
            sd = np.where(np.isfinite(sd), sd, 0.0)
            if f"{col}_seed_lo" in t.columns:
                lo, hi = t[f"{col}_seed_lo"].to_numpy().astype(float), t[f"{col}_seed_hi"].to_numpy().astype(float)
                ax.vlines(x, lo, hi, color=color, lw=0.8, alpha=0.5)
            for kind in t["kind"].unique(maintain_order=True):
                sel = (t["kind"] == kind).to_numpy()
                marker = KIND_STYLE.get(kind, ("k", "o"))[1]
                ax.errorbar(x[sel], y[sel], yerr=sd[sel], color=color, marker=marker, ls="none", capsize=3,
                            mfc="white" if kind in hollow else color)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("relative depth (0: first point, 1: last)")
        ax.set_xlim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color="k", marker=KIND_STYLE[k][1], ls="none",
                          mfc="white" if k in hollow else "k", label=name)
               for k, name in (("conv", "conv (CNN filters, CCT tokenizer)"), ("mha", "MHA"), ("ff", "FF hidden"),
                               ("block", "block output"))]
    _hide_unused(axes, len(panels))
    axes.flat[0].legend(fontsize=8, loc="lower right")
    axes.flat[min(3, len(panels) - 1)].legend(handles=handles, fontsize=7, loc="best")
    fig.suptitle("Per-layer SNP measures along relative depth (mean over seeds; bars: sd over seeds; "
                 "effect size and SNR: thin lines 95% t-interval over seeds)")
    return fig
