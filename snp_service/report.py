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
import yaml

from snp_service import figures
from snp_service.compare import INTERVAL, Run, aggregated_columns, dataset_label, different_datasets
from snp_service.provenance import code_version, describe_hardware
from snp_service.snp import interval_text
from snp_service.store import FILES, JobStore
from snp_service.tables import layer_names

DEFINITIONS = """
<ul>
<li><b>Field</b> f[x, n, k]: the readout run with every weight silenced except node n's (METHOD.md 2.4);
computed for all nodes in one pass.</li>
<li><b>SNP matrix</b> M_n[i, k]: mean field of node n on output k over evaluation inputs of true label i,
divided by its maximum when that maximum is positive (signs are never flipped).</li>
<li><b>Normalisation</b> (analysis.normalise): <code>max</code> divides by the maximum only when it is
positive; <code>afcc</code> by any non-zero maximum (as the AFCC code: a negative maximum flips signs);
<code>centred</code> subtracts each output's all-input mean field first.</li>
<li><b>Boolean matrix</b> B_n = M_n &gt; threshold. <b>Clusters</b>: the candidate labels (j with
B_n[j, j]) partitioned into all-ones diagonal blocks with the largest signal sum |S|&sup2;: the
candidates split into components of mutual links; a component that is a clique is one cluster, one
of up to 10 labels is partitioned exactly by dynamic programming over subsets, a larger one exactly by
an integer program (HiGHS) given analysis.cluster_time_limit_s seconds; only where the solver does not
prove its partition optimal in that time does the greedy rule partition the component (candidates
visited in the job's candidate order: largest diagonal first, or label order as the AFCC code; each
opens a block that later ones join when linked to all its members). <b>greedy_fraction</b>: the share
of nodes with a component left to the greedy fallback.</li>
<li><b>Cluster size</b>: labels covered; <b>signal</b>: sum of |S|&sup2;; <b>noise</b>: ones of B_n outside
the blocks; <b>noise per covered label</b>: noise / cluster size. Means are over nodes with a cluster;
<b>SNR</b> = mean signal / mean noise over those nodes (this service's own definition; infinite when
those nodes have no noise, undefined when no node has a cluster). Intervals: 95% BCa bootstrap over
nodes (undefined when some resample has no node with a cluster). SNR is a <i>description</i> of the
Boolean matrices: it is scale-free and its label-permuted value only measures the readout's geometry,
so no verdict is drawn from it.</li>
<li><b>Label dependence</b> (the verdicts): for each node, Pillai's trace test of whether its field
vector depends on the true label (one-way MANOVA on the evaluation inputs; for a seqpool readout
exactly the ANOVA F-test of the node's pooled value); blind to any label-independent mean field.
<b>label_specific_fraction</b>: the share of a point's nodes rejected at the job's false discovery
rate (Benjamini-Hochberg among the point's nodes). <b>effect_size</b>: the nodes' mean eta&sup2;
(Pillai's trace / its maximum: the share of a node's field variance the label explains, 0 to 1),
comparable between points of one readout kind. Intervals resample nodes of this one network: they
are within-network uncertainty; trends along the blocks need several networks (a comparison's
trend test).</li>
<li><b>Node accuracy</b>: a node's own accuracy (argmax over outputs of its field alone; a node whose field
is equal on every output, e.g. a dead one, predicts nothing); chance is 1 / labels.</li>
<li><b>Head matrix</b>: sum of its dimensions' raw matrices, then normalised and clustered like a node.
<b>Avoidance test</b>: overlap = mean pairwise Jaccard of heads' label sets; null: each head keeps its
number of labels, the labels are drawn at random (independently per head). It asks whether heads avoid
each other's labels; it cannot say which labels a head prefers or how strongly (sets are
thresholded). <b>Overlap deficit</b> = null mean - observed (positive: less overlap than chance);
<b>p</b> = P(null &le; observed); <b>p_min</b> = the smallest p these set sizes allow (draws at or
below the least overlap the sizes admit). The null is discrete, so no z-score is given. Status
<b>uninformative</b> when p_min &ge; the level (the sizes forbid rejection, so "not significant" means
nothing); <b>undefined</b> when the null takes a single value or fewer than two heads have labels.
<b>Specialisation test</b>: do a head's dimensions share a label preference? Each dimension's label
profile (its diagonal SNP entry minus that output's mean over true labels); coherence = mean
correlation of profiles within heads minus between heads; null: dimensions permuted among heads,
head sizes kept; p = P(null &ge; observed).</li>
<li><b>ANDC</b>: keep readout connection (k, n) only where label k is in a cluster of node n. Baselines
keep the same number of labels per node: random labels, or the largest |W|. <b>Selection</b>: which images'
SNP matrices chose the masks: <code>heldout</code>, a seeded subset of the <i>training</i> split (the network
and readout were trained on it), disjoint from the evaluation images that score them; <code>eval</code>, the
paper's protocol (masks chosen on the scoring images). <b>Structural pruning</b> by <code>snp</code> removes the
FF units and heads whose fields depend least on the label (lowest eta&sup2; on the selection images; a
head by its dimensions' mean), by <code>magnitude</code> the smallest weight products.</li>
</ul>
"""


def store_figure(job: JobStore, name: str, fig) -> str:
    """Store a figure as PNG and SVG; return the PNG as a data URI for the page."""
    import matplotlib.pyplot as plt

    png, svg = io.BytesIO(), io.BytesIO()
    # the same figure gives the same bytes: no date in the SVG, its element ids salted by a constant
    # (matplotlib salts them randomly), so a rebuilt report does not damage its own job's manifest
    with plt.rc_context({"svg.hashsalt": "snp-service"}):
        fig.savefig(png, format="png", dpi=110, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None})
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


def build(job: JobStore, progress=lambda _m: None, running_hardware: dict | None = None) -> str:
    """Draw every figure the stored results allow, write report.html, return its store path.

    running_hardware: the machine running the job, when the report is drawn as the job's last stage
    (before its manifest exists); a rebuilt report takes the hardware from the job's manifest."""
    spec = job.spec_json()
    classes = job.class_names()
    sections = [*_training_sections(job), *_layers_sections(job, spec, classes), *_heads_sections(job, classes),
                *_pruning_sections(job)]
    if job.has("classes"):
        sections.append(("Per-class accuracy of the trained network", html_table(job.table("classes"))))
    path = job.write_text(FILES["report"], page(f"snp-service report: {job.job_id}", sections,
                                                _provenance(job, spec, running_hardware), DEFINITIONS, spec))
    progress(f"report: {job.uri}/report/report.html ({len(sections)} sections)")
    return path


Section = tuple[str, str]  # (title, HTML)


def _training_sections(job: JobStore) -> list[Section]:
    if not job.has("train"):
        return []
    fig = store_figure(job, "training", figures.training_curves(job.table("train")))
    return [("Training", f"<img src='{fig}' alt='training curves'>")]


def _layers_sections(job: JobStore, spec: dict, classes: list[str]) -> list[Section]:
    """The per-point table and curves, cluster sizes, and each point's SNP matrices."""
    if not job.has("layers"):
        return []
    layers = job.layers()
    img = store_figure(job, "layers", figures.layer_curves(layers))
    table = html_table(layers, layer_names(reported=True), intervals=True)
    sizes, heat = {}, []
    for p in layers["point"]:
        nodes = job.read_point(p, "nodes")
        sizes[p] = nodes["cluster_size"].to_numpy()
        mats = job.read_point(p, "snp_matrices")
        fig = figures.snp_heatmaps(p, mats, nodes["clusters"].to_list(), _chosen_nodes(nodes),
                                   spec["analysis"]["threshold"], classes)
        heat.append(f"<img src='{store_figure(job, 'snp_' + p.replace('.', '_'), fig)}' alt='SNP matrices {p}'>")
    hist = store_figure(job, "cluster_sizes", figures.cluster_histograms(sizes, len(classes)))
    readouts = ", ".join(f"{r} at {'/'.join(k)} points" for r, k in (
        (r, layers.filter(pl.col("readout") == r)["kind"].unique(maintain_order=True).to_list())
        for r in layers["readout"].unique(maintain_order=True)))
    an = spec["analysis"]
    return [("Single-nodal performance along the network",
             f"<p>Readouts: {html.escape(readouts)}; threshold {an['threshold']}; normalisation "
             f"{html.escape(an['normalise'])}; candidate order {html.escape(str(an.get('candidate_order', 'diagonal')))}; "
             f"label-dependence tests at FDR {an.get('fdr', 0.05)}.</p>{table}"
             f"<img src='{img}' alt='per-layer curves'><img src='{hist}' alt='cluster sizes'>"),
            ("SNP matrices (4 nodes with the largest signal per point)", "".join(heat))]


def _heads_sections(job: JobStore, classes: list[str]) -> list[Section]:
    if not job.has("heads"):
        return []
    summary = job.heads()
    parts = [html_table(summary, ["point", "heads", "labels", "mean_labels_per_head", "mean_heads_per_label",
                                  "labels_without_head", "observed_jaccard", "null_mean", "null_sd", "overlap_deficit",
                                  "p_value", "p_min", "status", "reason"])]
    for r in summary.iter_rows(named=True):
        p = r["point"]
        null = job.read_point(p, "heads_null") if job.has_point(p, "heads_null") else None
        fig = figures.heads_figure(p, job.read_point(p, "heads_labels"), null, r, classes)
        parts.append(f"<img src='{store_figure(job, 'heads_' + p.replace('.', '_'), fig)}' alt='heads {p}'>")
    return [("Attention heads: who recognises which label", "".join(parts))]


def _pruning_sections(job: JobStore) -> list[Section]:
    if not job.has("andc"):
        return []
    andc, curve = job.andc(), job.table("curve")
    img = store_figure(job, "pruning", figures.pruning_figure(curve, andc))
    body = html_table(andc, ["point", "method", "selection", "threshold", "kept_fraction", "nodes_without_connection",
                             "accuracy_full", "accuracy_pruned", "accuracy_finetuned", "finetune_epochs"])
    body += f"<img src='{img}' alt='pruning curves'>"
    if job.has("structural"):
        body += "<h3>Structural pruning of the network (FF units and heads removed)</h3>" + html_table(
            job.table("structural"))
    return [("ANDC pruning and baselines", body)]


def _provenance(job: JobStore, spec: dict, running_hardware: dict | None) -> dict:
    """Where the results come from: job, code, model, data, seed, hardware and each stage's seconds."""
    stages = {s: job.stage_result(s) for s in ("data", "train", "load", "evaluate", "snp", "measure", "cluster", "heads",
                                             "prune", "structure")}
    if stages["measure"] or stages["cluster"]:  # snp: the one stage of jobs before issue 27, stale once re-run
        stages["snp"] = None
    data = stages["data"] or {}
    manifest = job.manifest()  # a rebuilt report names the code that ran the job, not the code drawing it
    return {"job id": job.job_id, "code version": (manifest or {}).get("code_version") or code_version(),
            "model": spec["model"]["name"],
            "dataset": f"{spec['dataset']['name']} ({spec['dataset']['root']})",
            "train / eval split": f"{data.get('train_split')} {data.get('train_size')} / "
                                  f"{data.get('eval_split')} {data.get('eval_size')}",
            **({"weights": f"{stages['load']['weights']} (sha256 {stages['load']['sha256'][:12]}; not trained here)"}
               if stages.get("load") else {"epochs": spec["train"]["epochs"]}),
            "seed": spec["train"]["seed"],
            "accuracy": (stages["evaluate"] or {}).get("accuracy"),
            "device / precision": f"{(stages['train'] or {}).get('device')} / {(stages['train'] or {}).get('precision')}",
            "hardware": describe_hardware(running_hardware or (manifest or {}).get("hardware")),
            "durations (s)": ", ".join(f"{k} {v['seconds']:.0f}" for k, v in stages.items() if v)}


def page(title: str, sections: list[tuple[str, str]], prov: dict, definitions: str, spec: dict | None) -> str:
    """A self-contained report page: provenance table, table of contents, sections (title, HTML),
    definitions and the spec as YAML."""
    prov_html = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in prov.items()) \
        + "</table>"
    return _PAGE.format(
        title=html.escape(title),
        toc="".join(f"<li><a href='#s{i}'>{html.escape(t)}</a></li>" for i, (t, _) in enumerate(sections)),
        body="".join(f"<h2 id='s{i}'>{html.escape(t)}</h2>{b}" for i, (t, b) in enumerate(sections)),
        prov=prov_html, definitions=definitions,
        spec=f"<pre>{html.escape(yaml.safe_dump(spec, sort_keys=False))}</pre>" if spec else "<p>n/a</p>")


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


# ---- the comparison of several jobs (snp_service.compare tables, written by snp_service.studies)

def comparison_page(study: JobStore, tables: dict[str, pl.DataFrame], runs: list[Run], spec_json: dict | None) -> str:
    """The comparison's report.html (and its depth figure) in the study folder; returns its path."""
    fig = store_figure(study, "compare_depth", figures.compare_depth(tables["layers"]))
    spec0 = runs[0].spec
    sections = []
    acc = tables["accuracy_summary"]
    sections.append(("Networks and accuracy (mean over seeds, sd = spread)", html_table(acc) +
                     html_table(tables["accuracy"].drop("family"))))
    sections.append(("Per-layer measures along relative depth",
                     f"<img src='{fig}' alt='per-layer measures against relative depth'>" + html_table(
                         tables["layers"], ["model", "point", "kind", "readout", "relative_depth", "seeds",
                                            *aggregated_columns()]) +
                     f"<p>*_seed_lo / *_seed_hi: {INTERVAL} of the mean (none with one seed); sd: spread over seeds. "
                     "Each seed's own node-bootstrap interval is in compare/runs.parquet.</p>"))
    sections.append(("Does label dependence rise along the network?",
                     "<p>Within one readout kind (all its points, then each point kind), over networks (seeds): "
                     "Page's trend test of each network's effect size (mean eta&sup2;) against depth (a sign test "
                     "at two points), two-sided; <b>rises</b> / <b>falls</b> when p &lt; 0.05, <b>uninformative</b> "
                     "when the design's smallest attainable p (trend_p_min) is not below 0.05, one network: no "
                     "test. SNR and its Spearman rho against depth are a description only.</p>"
                     + html_table(tables["trends"])))
    if "andc" in tables:
        sections.append(("ANDC pruning of the readouts (changes in points of accuracy)", html_table(tables["andc"])))
    if "heads" in tables:
        sections.append(("Attention heads: avoidance and specialisation",
                         "<p>Avoidance (label sets vs random sets of the same sizes): informative where the test "
                         "could reach its level (p_min below it); Jaccard, null and overlap deficit are means over "
                         "informative seeds only; p_min_max: the largest smallest-attainable p over seeds. "
                         "specialised_seeds: seeds whose specialisation test (label profiles within heads vs "
                         "dimensions permuted among heads) has p below the level.</p>" + html_table(tables["heads"])))
    links = "".join(f"<li>{html.escape(r.label)} seed {r.seed}: <code>{html.escape(r.uri)}/{FILES['report']}</code>"
                    f"</li>" for r in runs)
    sections.append(("Runs (each has its own full report)", f"<ul>{links}</ul>"))
    if different_datasets(runs):  # each model's dataset is in the accuracy tables
        data = {"datasets": "; ".join(dict.fromkeys(f"{r.label}: {dataset_label(r.spec)}" for r in runs))}
    else:
        data = {"dataset": f"{spec0['dataset']['name']} ({spec0['dataset']['root']})",
                "evaluation subset per class": spec0["dataset"].get("eval_max_per_class") or "all",
                "training subset per class": spec0["dataset"].get("max_per_class") or "all"}
    prov = {"study": study.job_id, "code version": code_version(), **data,
            "threshold": spec0["analysis"]["threshold"], "seeds": sorted({r.seed for r in runs})}
    definitions = ("<p>Relative depth: a point's index among all measurement points of its model in forward order "
                   "/ (points - 1). Per-point definitions as in each run's report (METHOD.md section 2).</p>")
    return study.write_text(FILES["report"], page(f"snp-service comparison: {study.job_id}", sections, prov,
                                                  definitions, spec_json))


def fmt_mean_sd(mean, sd=None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def markdown_table(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def comparison_summary(tables: dict[str, pl.DataFrame], runs: list[Run], where: str) -> str:
    """The comparison as Markdown (tables and the verdicts the numbers support), for docs; every
    figure in it is read from `tables`."""
    spec0 = runs[0].spec
    ds = spec0["dataset"]
    several = different_datasets(runs)
    data = ("models on different datasets (each model's in the accuracy table): relative depth places their "
            "points on one axis, but their values were not measured on the same inputs or label sets" if several else
            f"dataset {ds['name']} (`{ds['root']}`), training subset {ds.get('max_per_class') or 'all'} per class, "
            f"evaluation subset {ds.get('eval_max_per_class') or 'all'} per class of the test split")
    out = [f"Results in `{where}`; {data}, threshold {spec0['analysis']['threshold']}, seeds "
           f"{', '.join(str(s) for s in sorted({r.seed for r in runs}))}. Values: mean ± sd over seeds.", ""]
    acc = tables["accuracy_summary"]
    out += ["**Accuracy of the trained networks** (evaluation subset)", "", markdown_table(
        [[r["model"], r["network"], r["family"], *([r["dataset"]] if several else []), str(r["epochs"]),
          str(r["seeds"]), fmt_mean_sd(r["accuracy"], r["accuracy_sd"], 100, 1) + " %",
          f"{r['accuracy_min'] * 100:.1f} to {r['accuracy_max'] * 100:.1f} %"] for r in acc.iter_rows(named=True)],
        ["model", "network", "family", *(["dataset"] if several else []), "epochs", "seeds", "accuracy", "range"]), ""]
    out += _summary_layers(tables["layers"]) + _summary_trends(tables["trends"])
    if "andc" in tables:
        out += _summary_andc(tables["andc"])
    if "heads" in tables:
        out += _summary_heads(tables["heads"])
    return "\n".join(out) + "\n"


def _summary_layers(lay: pl.DataFrame) -> list[str]:
    return [f"**Per-layer measures along relative depth** (mean ± sd over seeds; effect size and SNR then the "
            f"{INTERVAL}; label-specific: share of nodes whose field depends on the label at the job's FDR)", "",
            markdown_table(
        [[r["model"], r["point"], r["kind"], r["readout"], f"{r['relative_depth']:.2f}",
          fmt_mean_sd(r["readout_accuracy"], r["readout_accuracy_sd"], 100, 1),
          fmt_mean_sd(r["label_specific_fraction"], r["label_specific_fraction_sd"]),
          fmt_mean_sd(r["effect_size"], r["effect_size_sd"], digits=3)
          + interval_text(r["effect_size_seed_lo"], r["effect_size_seed_hi"], 3),
          fmt_mean_sd(r["mean_cluster_size"], r["mean_cluster_size_sd"]),
          fmt_mean_sd(r["mean_noise"], r["mean_noise_sd"]),
          fmt_mean_sd(r["snr"], r["snr_sd"]) + interval_text(r["snr_seed_lo"], r["snr_seed_hi"]),
          fmt_mean_sd(r["frac_no_cluster"], r["frac_no_cluster_sd"])] for r in lay.iter_rows(named=True)],
        ["model", "point", "kind", "readout", "depth", "readout acc. %", "label-specific", "effect size (eta²)",
         "cluster size", "noise", "SNR", "no cluster"]), ""]


def _summary_trends(tr: pl.DataFrame) -> list[str]:
    return ["**Does label dependence rise along the network?** (over networks: Page's trend test of each seed's "
            "effect size against depth within one readout kind, two-sided; a sign test at two points; SNR and its "
            "Spearman rho are a description only)", "", markdown_table(
                [[r["model"], r["readout"], r["kind"], str(r["points"]), f"{r['first']} → {r['last']}",
                  f"{r['effect_first']:.3f} → {r['effect_last']:.3f}", str(r["networks"]),
                  "n/a" if math.isnan(r["trend_p"]) else f"{r['trend_p']:.3f}",
                  "n/a" if math.isnan(r["trend_p_min"]) else f"{r['trend_p_min']:.3f}", r["trend"],
                  f"{r['snr_first']:.2f} → {r['snr_last']:.2f}",
                  "n/a" if math.isnan(r["spearman_rho_snr"]) else f"{r['spearman_rho_snr']:.2f}"]
                 for r in tr.iter_rows(named=True)],
                ["model", "readout", "kind", "points", "from → to", "effect size", "networks", "p", "p_min",
                 "trend", "SNR", "SNR Spearman rho"]), ""]


def _summary_andc(a: pl.DataFrame) -> list[str]:
    sel = ", ".join(sorted(set(a["selection"].to_list())))
    return ["**ANDC pruning of the readouts** (accuracy change in points; baselines keep as many labels per "
            f"node; masks chosen on: {sel})", "", markdown_table(
                [[r["model"], r["point"], r["method"], fmt_mean_sd(r["kept_fraction"], r["kept_fraction_sd"]),
                  f"{1 - r['kept_fraction']:.2f}",
                  fmt_mean_sd(r["accuracy_full"], r["accuracy_full_sd"], 100, 1),
                  fmt_mean_sd(r["change_pruned"], r["change_pruned_sd"], 1, 1),
                  fmt_mean_sd(r["change_finetuned"], r["change_finetuned_sd"], 1, 1)] for r in a.iter_rows(named=True)],
                ["model", "point", "method", "kept fraction", "pruned", "full readout acc. %", "change pruned",
                 "change fine-tuned"]), ""]


def _summary_heads(h: pl.DataFrame) -> list[str]:
    return ["**Attention heads** (avoidance: do heads avoid each other's labels, against random sets of the "
            "same sizes; informative: the sizes let it reach p < level; Jaccard and deficit over informative "
            "seeds only; specialisation: label profiles within heads against dimensions permuted among heads)",
            "", markdown_table(
        [[r["model"], r["point"], f"{r['mean_labels_per_head']:.1f}", f"{r['mean_heads_per_label']:.2f}",
          f"{r['informative']}/{r['seeds']}", f"{r['uninformative']}", f"{r['undefined']}",
          fmt_mean_sd(r["observed_jaccard"]), fmt_mean_sd(r["null_mean"]), fmt_mean_sd(r["overlap_deficit"]),
          "n/a" if r["p_min_max"] is None or math.isnan(r["p_min_max"]) else f"{r['p_min_max']:.3f}",
          f"{r['avoiding_seeds']}/{r['seeds']}", f"{r['specialised_seeds']}/{r['seeds']}"]
         for r in h.iter_rows(named=True)],
        ["model", "point", "labels/head", "heads/label", "informative", "uninformative", "undefined", "Jaccard",
         "null Jaccard", "deficit", "largest p_min", "avoiding (p < level)", "specialised (p < level)"]), ""]
