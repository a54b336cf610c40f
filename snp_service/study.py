"""Head-count study (METHOD.md section 3, issue: heads): the same job trained with different
numbers of heads at a fixed width, every variant a full job (its own content-derived id, so
finished variants are reused), then one comparison table of the heads' measures.

Runs the variants one after another on the job's Ray cluster; a Ray Tune sweep over
`model.num_heads` is the parallel form of the same study.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import polars as pl

from snp_service.errors import SpecError
from snp_service.spec import JobSpec, spec_from_dict
from snp_service.store import Store

STUDIES = "_studies"  # job names start with a letter or digit, so this never collides with a job


def variants(spec: JobSpec, heads: list[int]) -> list[JobSpec]:
    base = spec.model_dump(mode="json")
    out = []
    for h in heads:
        d = {**base, "name": f"{spec.name}-h{h}", "model": {**base["model"], "num_heads": h}}
        try:
            out.append(spec_from_dict(d, f"{spec.name} with model.num_heads={h}"))
        except SpecError as e:
            raise SpecError(f"head-count study: {e}") from None
    return out


def heads_study(spec: JobSpec, heads: list[int], progress: Callable[[str], None] = print) -> pl.DataFrame:
    """Run every variant (reusing finished ones), then tabulate: one row per (num_heads, MHA point)."""
    from snp_service import pipeline

    jobs = variants(spec, heads)
    store = Store.from_spec(spec.storage)
    rows = []
    for h, v in zip(heads, jobs):
        progress(f"study: {h} head(s) -> job {v.job_id()}")
        outcome = pipeline.run(v, progress)
        job = store.job(outcome.job_id)
        layers = job.read_table("snp/layers.parquet")
        summary = job.read_table("heads/summary.parquet") if job.exists("heads/summary.parquet") else None
        for p in v.head_points():
            layer = layers.filter(pl.col("point") == p).row(0, named=True)
            head = summary.filter(pl.col("point") == p).row(0, named=True) if summary is not None else {}
            rows.append({"num_heads": h, "job_id": outcome.job_id, "point": p,
                         "accuracy": outcome.stages["evaluate"]["accuracy"],
                         "readout_accuracy": layer["readout_accuracy"], "snr": layer["snr"],
                         "snr_lo": layer["snr_lo"], "snr_hi": layer["snr_hi"],
                         **{k: head.get(k) for k in ("mean_labels_per_head", "mean_heads_per_label",
                                                     "observed_jaccard", "null_mean", "null_sd", "overlap_deficit", "p_value",
                                                     "p_min",
                                                     "status", "reason")}})
    table = pl.DataFrame(rows)
    digest = hashlib.sha256(",".join(v.job_id() for v in jobs).encode()).hexdigest()[:12]
    study = store.job(f"{STUDIES}/{spec.name}-heads-{digest}")
    study.write_table("heads_study.parquet", table)
    from snp_service import figures
    from snp_service.report import _fig_to

    _fig_to(study, "heads_study", figures.heads_study(table))
    progress(f"study: table and figure in {study.uri}")
    return table
