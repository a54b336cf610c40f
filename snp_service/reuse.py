"""Reuse of finished work, within a job and across the jobs of a store: which files each stage writes
(STAGE_OUTPUTS), the first stage whose stored outputs are damaged (damaged_from; it and every later
stage run again), and another job that finished a stage with the same key (find_reusable; its outputs
are copied instead of recomputed). The keys themselves are snp_service.spec.identity's stage keys."""

from __future__ import annotations

from collections.abc import Callable

from snp_service.spec import stage_key
from snp_service.store import JobStore, Store

NEVER_COPIED = {"report"}  # names its own job and provenance: always drawn afresh
STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "data": ("data/",), "train": ("model/", "train/metrics.parquet"), "load": ("model/",), "evaluate": ("eval/",),
    "measure": ("measure/",), "cluster": ("snp/",),
    "heads": ("heads/",), "prune": ("prune/",), "structure": ("structure/",),
}


def damaged_from(job: JobStore, stages: list[str], progress: Callable[[str], None]) -> int:
    """Index of the first stage whose stored outputs fail the job's manifest (size, SHA-256, missing),
    or, without a manifest (an unfinished job, or a re-run interrupted after deleting it), their stage
    marker's record; that stage and every later one run again. len(stages) when nothing is damaged."""
    damage = job.verify()
    if not damage:
        return len(stages)
    paths = [d.split(":", 1)[0] for d in damage]
    bad = [i for i, name in enumerate(stages)
           if any(p.startswith(prefix) for p in paths for prefix in STAGE_OUTPUTS.get(name, ()))]
    first = min(bad) if bad else 0  # damage outside every stage's outputs (the manifest itself): all again
    progress(f"damaged results: {'; '.join(damage[:3])}{' ...' if len(damage) > 3 else ''}; running again "
             f"from the {stages[first]} stage")
    return first


def find_reusable(store: Store, job: JobStore, stage: str, key: str | tuple[str, ...]) -> JobStore | None:
    """Another job in `store` that finished `stage` with the same key, or one of `key`'s when a tuple
    (oldest job id first)."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    for other_id in store.job_ids():
        if other_id == job.job_id:
            continue
        other = store.job(other_id)
        marker = other.stage_result(stage)
        if marker is None:
            continue
        other_key = marker.get("key")
        if other_key is None and other.has("spec"):  # markers written before keys were recorded
            other_key = stage_key(other.spec_json(), stage)
        if other_key in keys:
            damage = [d for d in other.verify() if any(d.startswith(p) for p in STAGE_OUTPUTS[stage])]
            if damage:  # never spread damage: recompute instead
                continue
            return other
    return None
