"""The report of a job: figures (PNG and SVG) and one self-contained `report.html` written into the
store, drawn only from what the job stored. `snp-service report JOB_ID` rebuilds it; `snp-service
run` writes it as its last stage."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import polars as pl

from snp_service.store import JobStore, code_version

DEFINITIONS = """
<ul>
<li><b>Field</b> f[x, n, k]: the readout run with every weight silenced except node n's (METHOD.md 2.4);
computed for all nodes in one pass.</li>
<li><b>SNP matrix</b> M_n[i, k]: mean field of node n on output k over evaluation inputs of true label i,
divided by its maximum when that maximum is positive (signs are never flipped).</li>
<li><b>Boolean matrix</b> B_n = M_n &gt; threshold. <b>Clusters</b>: labels j with B_n[j, j], visited by
decreasing M_n[j, j] (ties: lower label); each opens a cluster that later candidates join when all
their cross entries are 1 (an all-ones diagonal block).</li>
<li><b>Cluster size</b>: labels covered; <b>signal</b>: sum of |S|&sup2;; <b>noise</b>: ones of B_n outside
the blocks; <b>noise per covered label</b>: noise / cluster size. Means are over nodes with a cluster;
<b>SNR</b> = mean signal / mean noise over those nodes. Intervals: 95% BCa bootstrap over nodes (n/a
when some resample has no node with a cluster). <b>Clusters</b> are the partition of the candidate labels
into all-ones blocks with the largest signal (exact up to 10 labels per linked component, greedy above).</li>
<li><b>Null SNR</b> (chance level): the same nodes, readout and fields, with the evaluation labels permuted
among the inputs (seeded), clustered the same way; mean over permutations. <b>snr_excess</b> = SNR - null SNR.
A point whose SNR does not clear its null level says nothing about label clusters.</li>
<li><b>Node accuracy</b>: a node's own accuracy (argmax over outputs of its field alone; a node whose field
is equal on every output, e.g. a dead one, predicts nothing); chance is 1 / labels.</li>
<li><b>Head matrix</b>: sum of its dimensions' raw matrices, then normalised and clustered like a node.
<b>Overlap</b>: mean pairwise Jaccard of heads' label sets; <b>null</b>: each head keeps its number of
labels, the labels are drawn at random (independently per head). The test asks whether heads avoid
each other's labels; it cannot say which labels a head prefers or how strongly (sets are
thresholded). <b>Overlap deficit</b> = null mean - observed (positive: less overlap than chance);
<b>p</b> = P(null &le; observed); <b>p_min</b> = the smallest p these set sizes allow. The null is
discrete, so no z-score is given. Status <b>uninformative</b> when p_min &ge; the level (the sizes
forbid rejection, so "not significant" means nothing); <b>undefined</b> when the null takes a single
value or fewer than two heads have labels.</li>
<li><b>ANDC</b>: keep readout connection (k, n) only where label k is in a cluster of node n. Baselines
keep the same number of labels per node: random labels, or the largest |W|. <b>Selection</b>: which images'
SNP matrices chose the masks: <code>heldout</code>, a seeded part of the training split, disjoint from the
evaluation images that score them; <code>eval</code>, the paper's protocol (masks chosen on the scoring images).</li>
</ul>
"""


def _fig_to(job: JobStore, name: str, fig) -> str:
    """Store a figure as PNG and SVG; return the PNG as a data URI for the page."""
    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    fig.savefig(svg, format="svg")
    plt.close(fig)
    job.write_bytes(f"report/figures/{name}.png", png.getvalue())
    job.write_bytes(f"report/figures/{name}.svg", svg.getvalue())
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf"
        return f"{v:.4g}"
    return html.escape(str(v))


def html_table(df: pl.DataFrame, columns: list[str] | None = None, intervals: bool = False) -> str:
    cols = [c for c in (columns or df.columns) if c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in df.iter_rows(named=True):
        cells = []
        for c in cols:
            text = _fmt(r[c])
            if intervals and f"{c}_lo" in r:
                text += f" <span class=ci>[{_fmt(r[f'{c}_lo'])}, {_fmt(r[f'{c}_hi'])}]</span>"
            cells.append(f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _chosen_nodes(nodes: pl.DataFrame, k: int = 4) -> list[int]:
    """The k nodes with the largest signal (ties: lower index)."""
    order = np.lexsort((nodes["node"].to_numpy(), -nodes["signal"].to_numpy()))
    return sorted(nodes["node"].to_numpy()[order[:k]].tolist())


def build(job: JobStore, progress=lambda _m: None) -> str:
    """Draw every figure the stored results allow, write report.html, return its store path."""
    from snp_service import figures

    spec = job.read_json("spec.json")
    classes = job.read_json("data/classes.json")
    sections, figs = [], {}
    stages = {s: job.stage_result(s) for s in ("data", "train", "evaluate", "snp", "heads", "prune")}

    if job.exists("train/metrics.parquet"):
        figs["training"] = _fig_to(job, "training", figures.training_curves(job.read_table("train/metrics.parquet")))
        sections.append(("Training", f"<img src='{figs['training']}' alt='training curves'>"))

    if job.exists("snp/layers.parquet"):
        layers = job.read_table("snp/layers.parquet")
        img = _fig_to(job, "layers", figures.layer_curves(layers))
        table = html_table(layers, ["point", "kind", "nodes", "readout", "readout_accuracy", "mean_cluster_size",
                                    "mean_n_clusters", "mean_noise", "noise_per_label", "snr", "null_snr",
                                    "snr_excess", "mean_node_accuracy", "frac_no_cluster"],
                           intervals=True)
        sizes, heat = {}, []
        for p in layers["point"]:
            nodes = job.read_table(f"snp/{p}/nodes.parquet")
            sizes[p] = nodes["cluster_size"].to_numpy()
            mats = job.read_array(f"snp/{p}/snp_matrices.npy")
            fig = figures.snp_heatmaps(p, mats, nodes["clusters"].to_list(), _chosen_nodes(nodes),
                                       spec["analysis"]["threshold"], classes)
            heat.append(f"<img src='{_fig_to(job, 'snp_' + p.replace('.', '_'), fig)}' alt='SNP matrices {p}'>")
        hist = _fig_to(job, "cluster_sizes", figures.cluster_histograms(sizes, len(classes)))
        readouts = ", ".join(f"{r} at {'/'.join(k)} points" for r, k in (
            (r, layers.filter(pl.col("readout") == r)["kind"].unique(maintain_order=True).to_list())
            for r in layers["readout"].unique(maintain_order=True)))
        sections.append(("Single-nodal performance along the network",
                         f"<p>Readouts: {html.escape(readouts)}; threshold {spec['analysis']['threshold']}; "
                         f"normalisation {html.escape(spec['analysis']['normalise'])}.</p>{table}"
                         f"<img src='{img}' alt='per-layer curves'><img src='{hist}' alt='cluster sizes'>"))
        sections.append(("SNP matrices (4 nodes with the largest signal per point)", "".join(heat)))

    if job.exists("heads/summary.parquet"):
        summary = job.read_table("heads/summary.parquet")
        parts = [html_table(summary, ["point", "heads", "labels", "mean_labels_per_head", "mean_heads_per_label",
                                      "labels_without_head", "observed_jaccard", "null_mean", "null_sd", "overlap_deficit",
                                      "p_value", "p_min",
                                      "status", "reason"])]
        for r in summary.iter_rows(named=True):
            p = r["point"]
            null = job.read_array(f"heads/{p}/null.npy") if job.exists(f"heads/{p}/null.npy") else None
            fig = figures.heads_figure(p, job.read_array(f"heads/{p}/heads_labels.npy"), null, r, classes)
            parts.append(f"<img src='{_fig_to(job, 'heads_' + p.replace('.', '_'), fig)}' alt='heads {p}'>")
        sections.append(("Attention heads: who recognises which label", "".join(parts)))

    if job.exists("prune/andc.parquet"):
        andc, curve = job.read_table("prune/andc.parquet"), job.read_table("prune/curve.parquet")
        img = _fig_to(job, "pruning", figures.pruning_figure(curve, andc))
        body = html_table(andc, ["point", "method", "selection", "threshold", "kept_fraction", "nodes_without_connection",
                                 "accuracy_full", "accuracy_pruned", "accuracy_finetuned", "finetune_epochs"])
        body += f"<img src='{img}' alt='pruning curves'>"
        if job.exists("prune/structural.parquet"):
            body += "<h3>Structural pruning of the network (FF units and heads removed)</h3>" + html_table(
                job.read_table("prune/structural.parquet"))
        sections.append(("ANDC pruning and baselines", body))

    if job.exists("eval/per_class.parquet"):
        sections.append(("Per-class accuracy of the trained network", html_table(job.read_table("eval/per_class.parquet"))))

    manifest = job.manifest()  # a rebuilt report names the code that ran the job, not the code drawing it
    prov = {"job id": job.job_id, "code version": (manifest or {}).get("code_version") or code_version(),
            "model": spec["model"]["name"],
            "dataset": f"{spec['dataset']['name']} ({spec['dataset']['root']})",
            "train / eval split": f"{(stages['data'] or {}).get('train_split')} "
                                  f"{(stages['data'] or {}).get('train_size')} / "
                                  f"{(stages['data'] or {}).get('eval_split')} {(stages['data'] or {}).get('eval_size')}",
            "epochs": spec["train"]["epochs"], "seed": spec["train"]["seed"],
            "accuracy": (stages["evaluate"] or {}).get("accuracy"),
            "device / precision": f"{(stages['train'] or {}).get('device')} / {(stages['train'] or {}).get('precision')}",
            "hardware": _hardware(),
            "durations (s)": ", ".join(f"{k} {v['seconds']:.0f}" for k, v in stages.items() if v)}
    path = job.write_text("report/report.html", page(f"snp-service report: {job.job_id}", sections, prov,
                                                     DEFINITIONS, spec))
    progress(f"report: {job.uri}/report/report.html ({len(sections)} sections)")
    return path


def page(title: str, sections: list[tuple[str, str]], prov: dict, definitions: str, spec: dict | None) -> str:
    """A self-contained report page: provenance table, table of contents, sections (title, HTML),
    definitions and the spec as YAML."""
    import yaml

    prov_html = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in prov.items()) \
        + "</table>"
    return _PAGE.format(
        title=html.escape(title),
        toc="".join(f"<li><a href='#s{i}'>{html.escape(t)}</a></li>" for i, (t, _) in enumerate(sections)),
        body="".join(f"<h2 id='s{i}'>{html.escape(t)}</h2>{b}" for i, (t, b) in enumerate(sections)),
        prov=prov_html, definitions=definitions,
        spec=f"<pre>{html.escape(yaml.safe_dump(spec, sort_keys=False))}</pre>" if spec else "<p>n/a</p>")


def _hardware() -> str:
    from snp_service.pipeline import hardware

    h = hardware()
    return f"{h.get('cpu')}, {h.get('cpu_count')} CPUs{', ' + h['gpu'] if h.get('gpu') else ''}; torch {h['torch']}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f3f3f3; }}
.ci {{ color: #777; font-size: 0.85em; }}
img {{ max-width: 100%; display: block; margin: 1em 0; }}
pre {{ background: #f7f7f7; padding: 1em; font-size: 0.8em; }}
</style></head><body>
<h1>{title}</h1>
<h2>Provenance</h2>{prov}
<ol>{toc}</ol>
{body}
<h2>Definitions</h2>{definitions}
<h2>Job spec</h2>{spec}
</body></html>
"""
