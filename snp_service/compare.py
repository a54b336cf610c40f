"""The unified study (the paper's title claim): several networks, CNN and CCT, measured the same way on
the same data, compared point by point along their relative depth.

A job with a `compare:` section expands into one ordinary job per (model, seed) (`variants`), each
with its own content-derived id, so finished runs are reused and every run has its own report. The
comparison itself is drawn only from what those jobs stored (`collect`), by pure functions
(`depth_table`, `aggregate`, `trends`, `andc_summary`, `heads_summary`) that the tests check on
small tables. `snp-service compare JOB_ID ...` draws the same comparison from jobs already in a store.

Relative depth of a point: its index among all measurement points of its model, in forward order,
divided by (number of points - 1), so 0 is the first point and 1 the last, whichever points a job
selected. Runs of one model that differ only in train.seed are aggregated: every statistic is
reported as the mean over seeds with its standard deviation (spread), never the best run, and the
SNR's mean with a 95% t-interval over seeds (none with one seed). Every table carries the readout
kind: on identical features SNR depends on the readout kind alone, so trends compare points of one
readout kind only, and runs with different `analysis.readout` are refused together.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from snp_service.errors import SpecError, StoreError
from snp_service.spec import JobSpec, spec_from_dict
from snp_service.study import STUDIES  # comparisons are written beside the other studies

MEASURES = ["readout_accuracy", "mean_cluster_size", "mean_noise", "noise_per_label", "snr", "frac_no_cluster",
            "null_snr", "snr_excess", "mean_node_accuracy"]
# spec fields every run of one comparison must share (None: the whole section)
SHARED = (("dataset", None), ("analysis", ("threshold", "normalise", "readout")))
INTERVAL = "95% t-interval over seeds"


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def variants(spec: JobSpec) -> list[tuple[str, int, JobSpec]]:
    """(label, seed, job spec) of every run of the comparison, seeds outer, models inner (so a run
    cut short has every model at the first seed)."""
    if spec.compare is None:
        raise SpecError(f"job {spec.name} has no compare section")
    base = spec.model_dump(mode="json", exclude={"compare"})
    out = []
    for seed in spec.compare.seeds:
        for m in spec.compare.models:
            d = dict(base)
            d["name"] = f"{spec.name}-{m.label}-s{seed}"[:64]
            d["model"] = m.model if m.model is not None else base["model"]
            for section in ("train", "measure", "analysis", "pruning"):
                d[section] = _merge(base[section], getattr(m, section))
            d["train"] = {**d["train"], "seed": seed}
            try:
                out.append((m.label, seed, spec_from_dict(d, f"compare model {m.label!r} (seed {seed})")))
            except SpecError as e:
                raise SpecError(f"compare: {e}") from None
    return out


# ---------------------------------------------------------------- pure core: tables from stored results


def relative_depth(all_points: list[str]) -> dict[str, float]:
    n = len(all_points)
    return {p: (i / (n - 1) if n > 1 else 0.0) for i, p in enumerate(all_points)}


def depth_table(model: str, seed: int, layers: pl.DataFrame, all_points: list[str], family: str) -> pl.DataFrame:
    """One run's per-layer table with model, family, seed and relative depth added."""
    depth = relative_depth(all_points)
    missing = [p for p in layers["point"].to_list() if p not in depth]
    if missing:
        raise StoreError(f"{model} seed {seed}: stored points {missing} are not points of the model")
    return layers.select(
        pl.lit(model).alias("model"), pl.lit(family).alias("family"), pl.lit(seed).alias("seed"),
        pl.col("point"), pl.col("kind"), pl.col("readout"),
        pl.col("point").replace_strict(depth, return_dtype=pl.Float64).alias("relative_depth"),
        *[(pl.col(c) if c in layers.columns else pl.lit(None, dtype=pl.Float64).alias(c)) for c in MEASURES],
        pl.col("snr_lo"), pl.col("snr_hi"))


def seed_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """t-interval for the mean over seeds: mean +- t(1 - alpha/2, n - 1) sd / sqrt(n); nan below
    two seeds or with a non-finite value (an interval from one seed would be invented)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or not np.isfinite(v).all():
        return float("nan"), float("nan")
    from scipy.stats import t

    half = t.ppf(1 - (1 - confidence) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def aggregate(runs: pl.DataFrame) -> pl.DataFrame:
    """Mean and spread (sd) over seeds of every measure, per (model, point); the SNR's mean with a
    95% t-interval over seeds (`snr_seed_lo`, `snr_seed_hi`; nan with one seed). Each seed's own
    node-bootstrap interval stays in the runs table: averaging endpoints gives no interval of anything."""
    aggs = [pl.len().alias("seeds")]
    for c in MEASURES:
        aggs += [pl.col(c).mean().alias(c), pl.col(c).std(ddof=1).alias(f"{c}_sd")]
    aggs += [pl.col("snr").alias("_snrs")]
    out = (runs.group_by("model", "family", "point", "kind", "readout", "relative_depth", maintain_order=True).agg(aggs)
           .sort("model", "relative_depth", maintain_order=True))
    ci = [seed_interval(np.array(v, dtype=np.float64)) for v in out["_snrs"].to_list()]
    return out.drop("_snrs").with_columns(pl.Series("snr_seed_lo", [c[0] for c in ci], dtype=pl.Float64),
                                          pl.Series("snr_seed_hi", [c[1] for c in ci], dtype=pl.Float64))


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties; pairs with a nan are left out (never ranked)."""
    from scipy.stats import spearmanr

    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(y == y[0]) or np.all(x == x[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def _verdict(g: pl.DataFrame, first: str, last: str, shift: bool) -> str:
    """`rises` when in every seed the last point's node-bootstrap interval lies wholly above the
    first's, `falls` the mirror, else `no clear trend`. shift: both intervals minus their point's
    null SNR (the measured-minus-chance comparison)."""
    up = down = True
    for _, s in g.group_by("seed", maintain_order=True):
        a = s.filter(pl.col("point") == first).row(0, named=True)
        b = s.filter(pl.col("point") == last).row(0, named=True)
        da = (a["null_snr"] or 0.0) if shift else 0.0
        db = (b["null_snr"] or 0.0) if shift else 0.0
        if shift and (a["null_snr"] is None or b["null_snr"] is None
                      or math.isnan(a["null_snr"]) or math.isnan(b["null_snr"])):
            return "n/a (no null level)"
        up &= b["snr_lo"] - db > a["snr_hi"] - da
        down &= b["snr_hi"] - db < a["snr_lo"] - da
    return "rises" if up else "falls" if down else "no clear trend"


def trends(runs: pl.DataFrame) -> pl.DataFrame:
    """Does SNR rise along the network? Per model and readout kind (a flatten point is never compared
    with a seqpool point): all its points of that readout kind, then each point kind with at least
    two points: first vs last point. `verdict` on the measured SNR, `verdict_excess` on SNR minus the
    point's chance level (null_snr); see `_verdict`. Spearman's rho of the seed-mean SNR (and of the
    seed-mean excess) against depth is given alongside."""
    rows = []
    for model in runs["model"].unique(maintain_order=True):
        r = runs.filter(pl.col("model") == model)
        groups = []
        for ro in r["readout"].unique(maintain_order=True):
            rr = r.filter(pl.col("readout") == ro)
            kinds = rr["kind"].unique(maintain_order=True).to_list()
            if len(kinds) > 1:  # with one kind the "all" group would repeat it
                groups.append((f"all {ro} points", ro, rr))
            groups += [(k, ro, rr.filter(pl.col("kind") == k)) for k in kinds]
        for kind, ro, g in groups:
            pts = g.group_by("point", maintain_order=True).agg(
                pl.col("relative_depth").first(), pl.col("snr").mean(), pl.col("snr_excess").mean()
            ).sort("relative_depth")
            if len(pts) < 2:
                continue
            first, last = pts["point"][0], pts["point"][-1]
            snr = pts["snr"].to_numpy().astype(float)
            excess = pts["snr_excess"].to_numpy().astype(float)
            depth = pts["relative_depth"].to_numpy()
            rows.append({"model": model, "readout": ro, "kind": kind, "points": len(pts), "first": first,
                         "last": last, "snr_first": float(snr[0]), "snr_last": float(snr[-1]),
                         "excess_first": float(excess[0]), "excess_last": float(excess[-1]),
                         "spearman_rho": _spearman(depth, snr), "spearman_rho_excess": _spearman(depth, excess),
                         "verdict": _verdict(g, first, last, False), "verdict_excess": _verdict(g, first, last, True)})
    return pl.DataFrame(rows)


def andc_summary(andc: pl.DataFrame) -> pl.DataFrame:
    """Per (model, point, method): mean and spread over seeds of the kept fraction and the accuracy
    change (pruned and fine-tuned, in points of percentage) against the full readout."""
    d = andc.with_columns(((pl.col("accuracy_pruned") - pl.col("accuracy_full")) * 100).alias("change_pruned"),
                          ((pl.col("accuracy_finetuned") - pl.col("accuracy_full")) * 100).alias("change_finetuned"))
    aggs = [pl.len().alias("seeds")]
    for c in ("kept_fraction", "accuracy_full", "change_pruned", "change_finetuned"):
        aggs += [pl.col(c).mean().alias(c), pl.col(c).std(ddof=1).alias(f"{c}_sd")]
    return d.group_by("model", "point", "method", "selection", maintain_order=True).agg(aggs)


def heads_summary(heads: pl.DataFrame) -> pl.DataFrame:
    """Per (model, MHA point) over seeds: how many overlap tests were informative (status ok: defined
    and able to reach the level), undefined or uninformative; mean observed and null Jaccard and
    overlap deficit over the informative ones only (an undefined or uninformative seed carries no
    evidence either way and is never averaged in); `specialised_seeds` counts informative seeds
    with p below the level."""
    d = heads.with_columns((pl.col("status") == "ok").alias("_ok"))
    ok = pl.col("_ok")
    return d.group_by("model", "point", maintain_order=True).agg(
        pl.len().alias("seeds"), ok.sum().alias("informative"),
        (pl.col("status") == "undefined").sum().alias("undefined"),
        (pl.col("status") == "uninformative").sum().alias("uninformative"),
        pl.col("mean_labels_per_head").mean(), pl.col("mean_heads_per_label").mean(),
        pl.col("observed_jaccard").filter(ok).mean(), pl.col("null_mean").filter(ok).mean(),
        pl.col("overlap_deficit").filter(ok).mean().alias("overlap_deficit"),
        pl.col("p_min").max().alias("p_min_max"),
        (ok & (pl.col("p_value") < pl.col("level"))).sum().alias("specialised_seeds"))


# ---------------------------------------------------------------- reading finished jobs


@dataclass
class Run:
    model: str  # the comparison's label of the model
    seed: int
    job_id: str
    job: object  # JobStore
    spec: dict


def check_comparable(runs: list[Run]) -> None:
    """Every run must share the dataset, evaluation split and threshold (else the comparison is void)."""
    ref = runs[0]
    for r in runs[1:]:
        for section, fields in SHARED:
            a, b = ref.spec.get(section) or {}, r.spec.get(section) or {}
            keys = fields or sorted(set(a) | set(b))
            diff = [k for k in keys if a.get(k) != b.get(k)]
            if diff:
                raise StoreError(f"jobs {ref.job_id} and {r.job_id} differ in {section}."
                                 f"{', '.join(diff)} ({', '.join(f'{a.get(k)!r} vs {b.get(k)!r}' for k in diff)}); "
                                 "a comparison needs the same dataset, evaluation split, threshold, normalisation and readout kind")


def collect(runs: list[Run]) -> dict[str, pl.DataFrame]:
    """All comparison tables from the runs' stored results."""
    from snp_service.models.registry import measurement_points
    from snp_service.spec import ModelSpec

    check_comparable(runs)
    layers, andc, heads, acc = [], [], [], []
    for r in runs:
        job = r.job
        ev = job.stage_result("evaluate")
        if ev is None or not job.exists("snp/layers.parquet"):
            raise StoreError(f"job {r.job_id} has not finished its evaluate and snp stages; run it first")
        m = r.spec["model"]
        cfg = ModelSpec.model_validate(m).config()
        family = "CNN" if cfg.family == "vgg" else "CCT"
        all_points = list(measurement_points(cfg, r.spec["dataset"]["image_size"]))
        layers.append(depth_table(r.model, r.seed, job.read_table("snp/layers.parquet"), all_points, family))
        train = job.stage_result("train") or {}
        acc.append({"model": r.model, "family": family, "network": m["name"], "seed": r.seed,
                    "job_id": r.job_id, "epochs": r.spec["train"]["epochs"], "accuracy": ev["accuracy"],
                    "eval_images": ev.get("images"), "train_seconds": train.get("seconds")})
        if job.exists("prune/andc.parquet"):
            andc.append(job.read_table("prune/andc.parquet").select(
                pl.lit(r.model).alias("model"), pl.lit(r.seed).alias("seed"), "point", "method", "selection",
                "kept_fraction", "accuracy_full", "accuracy_pruned", "accuracy_finetuned"))
        if job.exists("heads/summary.parquet"):
            heads.append(job.read_table("heads/summary.parquet").select(
                pl.lit(r.model).alias("model"), pl.lit(r.seed).alias("seed"), "point", "mean_labels_per_head",
                "mean_heads_per_label", "observed_jaccard", "null_mean", "overlap_deficit", "p_value", "p_min",
                "level", "status"))
    runs_t = pl.concat(layers, how="vertical_relaxed")
    acc_t = pl.DataFrame(acc)
    out = {"runs": runs_t, "layers": aggregate(runs_t), "trends": trends(runs_t), "accuracy": acc_t,
           "accuracy_summary": acc_t.group_by("model", "family", "network", maintain_order=True).agg(
               pl.len().alias("seeds"), pl.col("epochs").first(), pl.col("accuracy").mean().alias("accuracy"),
               pl.col("accuracy").std(ddof=1).alias("accuracy_sd"), pl.col("accuracy").min().alias("accuracy_min"),
               pl.col("accuracy").max().alias("accuracy_max"))}
    if andc:
        out["andc"] = andc_summary(pl.concat(andc, how="vertical_relaxed"))
    if heads:
        out["heads"] = heads_summary(pl.concat(heads, how="vertical_relaxed"))
    return out


def runs_from_store(store, job_ids: list[str]) -> list[Run]:
    """Runs for `snp-service compare JOB_ID ...`: the label is the model name, extended with the job
    name where one model was trained with different settings (other than the seed)."""
    known = set(store.job_ids())
    runs, settings = [], {}  # settings: model name -> its distinct settings, in order of appearance
    for jid in job_ids:
        if jid not in known:
            raise StoreError(f"no job {jid!r} in {store.uri}; `snp-service results --store {store.uri}` lists them")
        job = store.job(jid)
        spec = job.read_json("spec.json")
        setting = {k: v for k, v in spec.items() if k not in ("name", "description", "storage", "compute", "compare")}
        setting["train"] = {k: v for k, v in setting["train"].items() if k != "seed"}
        key = json.dumps(setting, sort_keys=True)
        seen_keys = settings.setdefault(spec["model"]["name"], [])
        if key not in seen_keys:
            seen_keys.append(key)
        runs.append((jid, job, spec, key))
    out = []
    for jid, job, spec, key in runs:
        name = spec["model"]["name"]
        label = name if len(settings[name]) == 1 else f"{name}#{settings[name].index(key) + 1}"
        out.append(Run(label, spec["train"]["seed"], jid, job, spec))
    seen = {}
    for r in out:
        if (r.model, r.seed) in seen:
            raise StoreError(f"jobs {seen[(r.model, r.seed)]} and {r.job_id} are the same model, settings and seed")
        seen[(r.model, r.seed)] = r.job_id
    return out


# ---------------------------------------------------------------- running and writing


@dataclass
class StudyOutcome:
    uri: str
    tables: dict[str, pl.DataFrame]
    runs: list[Run]


def run_study(spec: JobSpec, progress: Callable[[str], None] = print) -> StudyOutcome:
    """Run every (model, seed) job of the comparison (finished ones are reused), then compare."""
    from snp_service import pipeline
    from snp_service.store import Store

    store = Store.from_spec(spec.storage)
    store.check()
    plan = variants(spec)
    progress(f"compare: {len(plan)} runs ({len(spec.compare.models)} model(s) x {len(spec.compare.seeds)} seed(s))")
    runs = []
    for i, (label, seed, v) in enumerate(plan, 1):
        progress(f"compare: run {i}/{len(plan)}: {label} seed {seed} -> job {v.job_id()}")
        outcome = pipeline.run(v, progress)
        runs.append(Run(label, seed, outcome.job_id, store.job(outcome.job_id), v.model_dump(mode="json")))
    return write_study(store, spec.name, runs, progress, spec.model_dump(mode="json"))


def write_study(store, name: str, runs: list[Run], progress: Callable[[str], None] = print,
                spec_json: dict | None = None) -> StudyOutcome:
    tables = collect(runs)
    digest = hashlib.sha256(",".join(r.job_id for r in runs).encode()).hexdigest()[:12]
    study = store.job(f"{STUDIES}/{name}-compare-{digest}")
    for k, t in tables.items():
        study.write_table(f"compare/{k}.parquet", t)
    study.write_json("compare/runs.json", [{"model": r.model, "seed": r.seed, "job_id": r.job_id} for r in runs])
    if spec_json is not None:
        study.write_json("spec.json", spec_json)
    report_path = write_report(study, tables, runs, spec_json)
    study.write_text("report/summary.md", summary_markdown(tables, runs, study.uri))
    progress(f"compare: tables, figure and report in {study.uri}/ ({report_path})")
    return StudyOutcome(study.uri, tables, runs)


def write_report(study, tables: dict[str, pl.DataFrame], runs: list[Run], spec_json: dict | None) -> str:
    from snp_service import figures
    from snp_service.report import _fig_to, html_table, page
    from snp_service.store import code_version

    fig = _fig_to(study, "compare_depth", figures.compare_depth(tables["layers"]))
    spec0 = runs[0].spec
    sections = []
    acc = tables["accuracy_summary"]
    sections.append(("Networks and accuracy (mean over seeds, sd = spread)", html_table(acc) +
                     html_table(tables["accuracy"].drop("family"))))
    sections.append(("Per-layer measures along relative depth",
                     f"<img src='{fig}' alt='per-layer measures against relative depth'>" + html_table(
                         tables["layers"], ["model", "point", "kind", "readout", "relative_depth", "seeds",
                                            "readout_accuracy", "readout_accuracy_sd", "mean_cluster_size",
                                            "mean_cluster_size_sd", "mean_noise", "noise_per_label", "snr", "snr_sd",
                                            "snr_seed_lo", "snr_seed_hi", "null_snr", "snr_excess",
                                            "mean_node_accuracy", "frac_no_cluster"]) +
                     f"<p>snr_seed_lo / snr_seed_hi: {INTERVAL} of the mean SNR (none with one seed); sd: spread "
                     "over seeds; null_snr: the point's chance level (label-permuted fields), snr_excess = snr - "
                     "null_snr. Each seed's own node-bootstrap interval is in compare/runs.parquet.</p>"))
    sections.append(("Does SNR rise along the network?",
                     "<p>First vs last point of each model, within one readout kind (all its points, then each "
                     "point kind): <b>rises</b> only when in every seed the last point's 95% node-bootstrap (BCa) "
                     "interval lies wholly above the first's; <b>falls</b> the mirror; otherwise no clear trend. "
                     "verdict_excess: the same with each interval minus its point's null SNR. Spearman's rho: "
                     "seed-mean SNR (and excess) against depth.</p>" + html_table(tables["trends"])))
    if "andc" in tables:
        sections.append(("ANDC pruning of the readouts (changes in points of accuracy)", html_table(tables["andc"])))
    if "heads" in tables:
        sections.append(("Attention heads: label split vs the random null",
                         "<p>Informative: the test could reach its level (p_min below it). Jaccard, null and overlap "
                         "deficit are means over informative seeds only; p_min_max: the largest smallest-attainable "
                         "p over seeds.</p>" + html_table(tables["heads"])))
    links = "".join(f"<li>{html.escape(r.model)} seed {r.seed}: <code>{html.escape(r.job.uri)}/report/report.html</code>"
                    f"</li>" for r in runs)
    sections.append(("Runs (each has its own full report)", f"<ul>{links}</ul>"))
    prov = {"study": study.job_id, "code version": code_version(),
            "dataset": f"{spec0['dataset']['name']} ({spec0['dataset']['root']})",
            "evaluation subset per class": spec0["dataset"].get("eval_max_per_class") or "all",
            "training subset per class": spec0["dataset"].get("max_per_class") or "all",
            "threshold": spec0["analysis"]["threshold"], "seeds": sorted({r.seed for r in runs})}
    definitions = ("<p>Relative depth: a point's index among all measurement points of its model in forward order "
                   "/ (points - 1). Per-point definitions as in each run's report (METHOD.md section 2).</p>")
    return study.write_text("report/report.html", page(f"snp-service comparison: {study.job_id}", sections, prov,
                                                       definitions, spec_json))


def fmt_mean_sd(mean, sd=None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if sd is None or (isinstance(sd, float) and math.isnan(sd)):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def _interval(lo, hi) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return ""
    return f" [{lo:.2f}, {hi:.2f}]"


def _md(rows: list[list[str]], head: list[str]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def summary_markdown(tables: dict[str, pl.DataFrame], runs: list[Run], where: str) -> str:
    """The comparison as Markdown (tables and the verdicts the numbers support), for docs; every
    figure in it is read from `tables`."""
    spec0 = runs[0].spec
    ds = spec0["dataset"]
    out = [f"Results in `{where}`; dataset {ds['name']} (`{ds['root']}`), training subset "
           f"{ds.get('max_per_class') or 'all'} per class, evaluation subset {ds.get('eval_max_per_class') or 'all'} "
           f"per class of the test split, threshold {spec0['analysis']['threshold']}, seeds "
           f"{', '.join(str(s) for s in sorted({r.seed for r in runs}))}. Values: mean ± sd over seeds.", ""]
    acc = tables["accuracy_summary"]
    out += ["**Accuracy of the trained networks** (evaluation subset)", "", _md(
        [[r["model"], r["network"], r["family"], str(r["epochs"]), str(r["seeds"]),
          fmt_mean_sd(r["accuracy"], r["accuracy_sd"], 100, 1) + " %",
          f"{r['accuracy_min'] * 100:.1f} to {r['accuracy_max'] * 100:.1f} %"] for r in acc.iter_rows(named=True)],
        ["model", "network", "family", "epochs", "seeds", "accuracy", "range"]), ""]
    lay = tables["layers"]
    out += [f"**Per-layer measures along relative depth** (SNR: mean ± sd over seeds, then the {INTERVAL}; "
            "null: the point's chance-level SNR from label-permuted fields)", "", _md(
        [[r["model"], r["point"], r["kind"], r["readout"], f"{r['relative_depth']:.2f}",
          fmt_mean_sd(r["readout_accuracy"], r["readout_accuracy_sd"], 100, 1),
          fmt_mean_sd(r["mean_cluster_size"], r["mean_cluster_size_sd"]),
          fmt_mean_sd(r["mean_noise"], r["mean_noise_sd"]),
          fmt_mean_sd(r["snr"], r["snr_sd"]) + _interval(r["snr_seed_lo"], r["snr_seed_hi"]),
          fmt_mean_sd(r["null_snr"], r["null_snr_sd"]),
          fmt_mean_sd(r["frac_no_cluster"], r["frac_no_cluster_sd"])] for r in lay.iter_rows(named=True)],
        ["model", "point", "kind", "readout", "depth", "readout acc. %", "cluster size", "noise",
         "SNR [95% t over seeds]", "null SNR", "no cluster"]), ""]
    tr = tables["trends"]
    out += ["**Does SNR rise along the network?** (first vs last point of one readout kind; `rises` only where "
            "the points' node-bootstrap intervals separate in every seed; `excess`: the same after subtracting "
            "each point's null SNR)", "", _md(
                [[r["model"], r["readout"], r["kind"], str(r["points"]), f"{r['first']} → {r['last']}",
                  f"{r['snr_first']:.2f} → {r['snr_last']:.2f}",
                  f"{r['excess_first']:.2f} → {r['excess_last']:.2f}",
                  "n/a" if math.isnan(r["spearman_rho"]) else f"{r['spearman_rho']:.2f}", r["verdict"],
                  r["verdict_excess"]]
                 for r in tr.iter_rows(named=True)],
                ["model", "readout", "kind", "points", "from → to", "SNR", "SNR - null", "Spearman rho", "verdict",
                 "verdict (excess)"]), ""]
    if "andc" in tables:
        a = tables["andc"]
        sel = ", ".join(sorted(set(a["selection"].to_list())))
        out += ["**ANDC pruning of the readouts** (accuracy change in points; baselines keep as many labels per "
                f"node; masks chosen on: {sel})", "", _md(
                    [[r["model"], r["point"], r["method"], fmt_mean_sd(r["kept_fraction"], r["kept_fraction_sd"]),
                      f"{1 - r['kept_fraction']:.2f}",
                      fmt_mean_sd(r["accuracy_full"], r["accuracy_full_sd"], 100, 1),
                      fmt_mean_sd(r["change_pruned"], r["change_pruned_sd"], 1, 1),
                      fmt_mean_sd(r["change_finetuned"], r["change_finetuned_sd"], 1, 1)] for r in a.iter_rows(named=True)],
                    ["model", "point", "method", "kept fraction", "pruned", "full readout acc. %", "change pruned",
                     "change fine-tuned"]), ""]
    if "heads" in tables:
        h = tables["heads"]
        out += ["**Attention heads vs the random null** (the test asks whether heads avoid each other's labels; "
                "informative: the label-set sizes let it reach p < level; Jaccard and deficit over informative "
                "seeds only)", "", _md(
            [[r["model"], r["point"], f"{r['mean_labels_per_head']:.1f}", f"{r['mean_heads_per_label']:.2f}",
              f"{r['informative']}/{r['seeds']}", f"{r['uninformative']}", f"{r['undefined']}",
              fmt_mean_sd(r["observed_jaccard"]), fmt_mean_sd(r["null_mean"]), fmt_mean_sd(r["overlap_deficit"]),
              "n/a" if r["p_min_max"] is None or math.isnan(r["p_min_max"]) else f"{r['p_min_max']:.3f}",
              f"{r['specialised_seeds']}/{r['seeds']}"]
             for r in h.iter_rows(named=True)],
            ["model", "point", "labels/head", "heads/label", "informative", "uninformative", "undefined", "Jaccard",
             "null Jaccard", "deficit", "largest p_min", "seeds with p < level"]), ""]
    return "\n".join(out) + "\n"
