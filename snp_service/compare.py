"""The unified study's comparison tables (the paper's title claim): several networks, CNN and CCT,
measured the same way on the same data, compared point by point along their relative depth. Pure
functions on polars tables, no storage and no Ray: snp_service.studies reads the finished jobs and
writes the study; snp_service.report draws its page and Markdown summary.

Relative depth of a point: its index among all measurement points of its model, in forward order,
divided by (number of points - 1), so 0 is the first point and 1 the last, whichever points a job
selected. Runs of one model that differ only in train.seed are aggregated: every statistic is
reported as the mean over seeds with its standard deviation (spread), never the best run, and the
SNR's and the effect size's means with a 95% t-interval over seeds (none with one seed). Every table
carries the readout kind: on identical features SNR depends on the readout kind alone, so trends
compare points of one readout kind only, and runs with different `analysis.readout` are refused
together.

Trends along the blocks are a claim about trained networks, so the unit of replication is the
network (a seed): within one readout kind, the per-network effect sizes (mean eta2 of the nodes'
label dependence) are tested for a monotone trend over depth with Page's L test (three points or
more; an exact sign test at two points), two-sided; one network gets no trend test, its node-bootstrap
intervals being within-network uncertainty only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy.stats import binomtest, page_trend_test, spearmanr
from scipy.stats import t as student_t

from snp_service.errors import StoreError
from snp_service.tables import layer_names

MEASURES = layer_names(compared=True)  # the layers-table columns averaged over seeds (snp_service.tables)
SEED_INTERVALS = ("snr", "effect_size")  # measures whose mean over seeds gets a t-interval
TREND_LEVEL = 0.05
# spec fields every run of one comparison must share (None: the whole section)
# (the dataset may differ between models, not between one model's seeds: check_comparable)
SHARED = (("analysis", ("threshold", "normalise", "readout")),)
INTERVAL = "95% t-interval over seeds"


@dataclass(frozen=True)
class Run:
    """One finished job of a comparison: its label in the tables (a model's name or the compare
    section's label), training seed, job id, where its results are, and its spec."""

    label: str
    seed: int
    job_id: str
    uri: str
    spec: dict


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
        pl.col("snr_lo"), pl.col("snr_hi"),
        *[(pl.col(c) if c in layers.columns else pl.lit(None, dtype=pl.Float64).alias(c))
          for c in ("effect_size_lo", "effect_size_hi")])


def seed_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """t-interval for the mean over seeds: mean +- t(1 - alpha/2, n - 1) sd / sqrt(n); nan below
    two seeds or with a non-finite value (an interval from one seed would be invented)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or not np.isfinite(v).all():
        return float("nan"), float("nan")
    half = student_t.ppf(1 - (1 - confidence) / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def aggregate(runs: pl.DataFrame) -> pl.DataFrame:
    """Mean and spread (sd) over seeds of every measure, per (model, point); the SNR's and the effect
    size's means with a 95% t-interval over seeds (`snr_seed_lo`, `snr_seed_hi`, `effect_size_seed_lo`,
    `effect_size_seed_hi`; nan with one seed). Each seed's own node-bootstrap interval stays in the
    runs table: averaging endpoints gives no interval of anything."""
    aggs = [pl.len().alias("seeds")]
    for c in MEASURES:
        aggs += [pl.col(c).mean().alias(c), pl.col(c).std(ddof=1).alias(f"{c}_sd")]
    aggs += [pl.col(c).alias(f"_{c}") for c in SEED_INTERVALS]
    out = (runs.group_by("model", "family", "point", "kind", "readout", "relative_depth", maintain_order=True).agg(aggs)
           .sort("model", "relative_depth", maintain_order=True))
    for c in SEED_INTERVALS:
        ci = [seed_interval(np.array(v, dtype=np.float64)) for v in out[f"_{c}"].to_list()]
        out = out.drop(f"_{c}").with_columns(pl.Series(f"{c}_seed_lo", [x[0] for x in ci], dtype=pl.Float64),
                                             pl.Series(f"{c}_seed_hi", [x[1] for x in ci], dtype=pl.Float64))
    return out


def aggregated_columns() -> list[str]:
    """The aggregated layers table's measure columns, in order: each measure's mean and sd over seeds,
    then its t-interval over seeds where it has one."""
    return [n for c in MEASURES
            for n in [c, f"{c}_sd", *([f"{c}_seed_lo", f"{c}_seed_hi"] if c in SEED_INTERVALS else [])]]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho with average ranks for ties; pairs with a nan are left out (never ranked)."""
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    if len(x) < 3 or np.all(y == y[0]) or np.all(x == x[0]):
        return float("nan")
    return float(spearmanr(x, y).statistic)


def trend_test(values: np.ndarray, level: float = TREND_LEVEL) -> dict:
    """Monotone trend over depth of a per-network measure: `values` (networks, points), points in depth
    order. Page's L test (exact where scipy gives it) for three points or more, an exact sign test for
    two; two-sided (twice the smaller one-sided p, at most 1). `p_min`: the smallest two-sided p the
    design allows (every network ranking the points in the same order). Verdict: `rises` / `falls`
    when p < level, `no trend detected` when not, `uninformative` when p_min >= level, and
    `one network: no trend test` with a single network (its intervals are within-network only)."""
    v = np.asarray(values, dtype=np.float64)
    n, k = v.shape
    out = {"networks": n, "trend_p": float("nan"), "trend_p_min": float("nan"), "trend": ""}
    if n < 2:
        return {**out, "trend": "one network: no trend test"}
    if not np.isfinite(v).all():
        return {**out, "trend": "undefined: a network has no value at some point"}
    if k >= 3:
        up = page_trend_test(v).pvalue
        down = page_trend_test(v[:, ::-1]).pvalue
        p_min = min(1.0, 2.0 / math.factorial(k) ** n)
    else:
        rises = int((v[:, 1] > v[:, 0]).sum())
        informative = int((v[:, 1] != v[:, 0]).sum())
        up = binomtest(rises, informative, 0.5, alternative="greater").pvalue if informative else 1.0
        down = binomtest(rises, informative, 0.5, alternative="less").pvalue if informative else 1.0
        p_min = min(1.0, 2.0 * 0.5 ** n)
    p = min(1.0, 2.0 * min(up, down))
    trend = ("uninformative" if p_min >= level else ("rises" if up < down else "falls") if p < level
             else "no trend detected")
    return {**out, "trend_p": float(p), "trend_p_min": float(p_min), "trend": trend}


def trends(runs: pl.DataFrame, level: float = TREND_LEVEL) -> pl.DataFrame:
    """Does label dependence rise along the network? Per model and readout kind (a flatten point is
    never compared with a seqpool point): all its points of that readout kind, then each point kind
    with at least two points. The verdict is `trend_test` over networks (seeds) of the effect size at
    each point; Spearman's rho of the seed-mean SNR against depth is given as a description only."""
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
                pl.col("relative_depth").first(), pl.col("snr").mean(), pl.col("effect_size").mean()
            ).sort("relative_depth")
            if len(pts) < 2:
                continue
            order = pts["point"].to_list()
            wide = g.pivot(on="point", index="seed", values="effect_size").sort("seed")
            values = wide.select([pl.col(p).cast(pl.Float64) for p in order]).to_numpy()
            snr = pts["snr"].to_numpy().astype(float)
            effect = pts["effect_size"].to_numpy().astype(float)
            rows.append({"model": model, "readout": ro, "kind": kind, "points": len(pts), "first": order[0],
                         "last": order[-1], "effect_first": float(effect[0]), "effect_last": float(effect[-1]),
                         **trend_test(values, level), "snr_first": float(snr[0]), "snr_last": float(snr[-1]),
                         "spearman_rho_snr": spearman(pts["relative_depth"].to_numpy(), snr)})
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
    """Per (model, MHA point) over seeds: how many overlap (avoidance) tests were informative (status
    ok: defined and able to reach the level), undefined or uninformative; mean observed and null
    Jaccard and overlap deficit over the informative ones only (an undefined or uninformative seed
    carries no evidence either way and is never averaged in); `avoiding_seeds` counts informative
    seeds with p below the level; `specialised_seeds` counts seeds whose specialisation test (profile
    coherence within heads against dimensions permuted among heads) has p below the level."""
    d = heads.with_columns((pl.col("status") == "ok").alias("_ok"))
    ok = pl.col("_ok")
    sp = pl.col("specialisation_status") == "ok" if "specialisation_status" in heads.columns else pl.lit(False)
    return d.group_by("model", "point", maintain_order=True).agg(
        pl.len().alias("seeds"), ok.sum().alias("informative"),
        (pl.col("status") == "undefined").sum().alias("undefined"),
        (pl.col("status") == "uninformative").sum().alias("uninformative"),
        pl.col("mean_labels_per_head").mean(), pl.col("mean_heads_per_label").mean(),
        pl.col("observed_jaccard").filter(ok).mean(), pl.col("null_mean").filter(ok).mean(),
        pl.col("overlap_deficit").filter(ok).mean().alias("overlap_deficit"),
        pl.col("p_min").max().alias("p_min_max"),
        (ok & (pl.col("p_value") < pl.col("level"))).sum().alias("avoiding_seeds"),
        (sp & (pl.col("specialisation_p") < pl.col("level"))).sum().alias("specialised_seeds")
        if "specialisation_p" in heads.columns else pl.lit(0).alias("specialised_seeds"))




def check_comparable(runs: list[Run]) -> None:
    """Every run must share the threshold, normalisation and readout kind (else the comparison is
    void), and the seeds of one model their dataset. Models may differ in dataset (a text model beside
    image models, issue 32): the tables then name each model's dataset (`different_datasets`)."""
    ref_id, ref = runs[0].job_id, runs[0].spec
    for job_id, spec in ((r.job_id, r.spec) for r in runs[1:]):
        for section, fields in SHARED:
            a, b = ref.get(section) or {}, spec.get(section) or {}
            keys = fields or sorted(set(a) | set(b))
            diff = [k for k in keys if a.get(k) != b.get(k)]
            if diff:
                raise StoreError(f"jobs {ref_id} and {job_id} differ in {section}."
                                 f"{', '.join(diff)} ({', '.join(f'{a.get(k)!r} vs {b.get(k)!r}' for k in diff)}); "
                                 "a comparison needs the same threshold, normalisation and readout kind")
    first: dict[str, Run] = {}
    for r in runs:
        seen = first.setdefault(r.label, r)
        if seen.spec["dataset"] != r.spec["dataset"]:
            raise StoreError(f"jobs {seen.job_id} and {r.job_id} are seeds of model {r.label!r} on different "
                             "datasets; the seeds of one model must share its dataset")


def different_datasets(runs: list[Run]) -> bool:
    """Whether the models of a comparison were measured on different datasets (allowed; said in its tables)."""
    return len({json.dumps(r.spec["dataset"], sort_keys=True) for r in runs}) > 1


def dataset_label(spec: dict) -> str:
    """A dataset in a few words for the tables: its name (and subset), where it was read from, and
    what of it was used."""
    ds = spec["dataset"]
    root = str(ds.get("root") or "").rstrip("/").rsplit("/", 1)[-1]
    name = ds["name"] + (f"/{ds['subset']}" if ds.get("subset") else "")
    used = [f"{ds[k]} {what} per class" for k, what in (("max_per_class", "train"), ("eval_max_per_class", "eval"))
            if ds.get(k)]
    if ds.get("random_labels"):
        used.append("random labels")
    return f"{name} ({', '.join([root, *used]) if root else ', '.join(used)})" if root or used else name


def accuracy_summary(accuracy: pl.DataFrame) -> pl.DataFrame:
    """Per model: mean, sd, min and max of the network's accuracy over seeds."""
    return accuracy.group_by("model", "family", "network", "dataset", maintain_order=True).agg(
        pl.len().alias("seeds"), pl.col("epochs").first(), pl.col("accuracy").mean().alias("accuracy"),
        pl.col("accuracy").std(ddof=1).alias("accuracy_sd"), pl.col("accuracy").min().alias("accuracy_min"),
        pl.col("accuracy").max().alias("accuracy_max"))


def comparison_tables(layers: list[pl.DataFrame], accuracy: list[dict], andc: list[pl.DataFrame],
                      heads: list[pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """Every table of a comparison from the runs' own tables (each already labelled with model and
    seed): runs (per seed), layers (aggregated), trends, accuracy and its summary, andc, heads."""
    runs = pl.concat(layers, how="vertical_relaxed")
    acc = pl.DataFrame(accuracy)
    out = {"runs": runs, "layers": aggregate(runs), "trends": trends(runs), "accuracy": acc,
           "accuracy_summary": accuracy_summary(acc)}
    if andc:
        out["andc"] = andc_summary(pl.concat(andc, how="vertical_relaxed"))
    if heads:
        out["heads"] = heads_summary(pl.concat(heads, how="vertical_relaxed"))
    return out
