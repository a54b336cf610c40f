"""What a job's results depend on: the one rule that job ids and stage keys hash (issue 28).

`identity_content` normalises a spec (a JobSpec dumped as JSON, or a stored spec.json) to the fields
its results depend on, in the form every finished job's id and stage markers were hashed in: paths
inside the job's workdir relative to it, text-only dataset fields left out of image datasets,
train.compile (floating-point noise) left out, compute.num_workers entered as train.workers when not 1,
the weights fields left out without weights (with them the checkpoint counts by its SHA-256 where
known), and the fields added after jobs were stored left out at their neutral values. Storage,
placement (compute), the description, the study sections of compare and heads_study and the workdir
itself are outside it. `JobSpec.job_id` hashes all of it; `stage_key` hashes the part STAGE_INPUTS
lists for a stage. Every field of it but the name and the sweep section is read by some stage
(tests/test_stage_keys.py), so a job whose id changes has a stage that runs again, and back.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

# Fields added after jobs were stored, left out of job ids and stage keys at these values, so every
# earlier job keeps its id and its stages stay reusable (any other value enters both as usual). The
# readout solver's default is the stepped solver every earlier job used (issue 27: lbfgs is selectable).
NEUTRAL_DEFAULTS: dict[tuple[str, str], Any] = {("dataset", "random_labels"): False,
                                                ("analysis", "cluster_time_limit_s"): 1.0,
                                                ("analysis", "readout_solver"): "adam",
                                                ("analysis", "readout_pool_epochs"): 2,
                                                ("train", "eval_every"): 1}
# DatasetSpec fields of text datasets only: left out of the job id and stage keys of other datasets,
# so the ids jobs had before text datasets existed stay theirs
TEXT_ONLY_FIELDS = ("subset", "text_column", "label_column", "row_filter", "file_format", "max_length", "tokenizer")
PATH_FIELDS = (("dataset", "root"), ("model", "weights"))  # local paths that enter job ids and stage keys
# spec sections outside the identity: where results go and how the work is placed, the description,
# the studies a job file runs (their members are jobs of their own), the base of relative paths
OUTSIDE_IDENTITY = ("storage", "compute", "description", "compare", "heads_study", "workdir")
# Spec fields each stage reads, cumulative along the pipeline (snp_service.pipeline.STAGES): (section,
# fields or None for all). The measure stage reads the readout settings and those of the
# label-dependence statistics it computes (fdr, and bootstrap / confidence / seed for their intervals);
# the threshold, normalisation, candidate order and cluster solver's time limit (CLUSTER_FIELDS) enter at
# the cluster stage, and so at heads and prune, which choose clusters and masks with them.
CLUSTER_FIELDS = ("threshold", "normalise", "candidate_order", "cluster_time_limit_s")
# PruningSpec fields the structure stage reads: whether pruning runs, the selection images (their
# split, fraction and seed) and the pruning points (where the prune stage measures their eta2), the
# fraction removed and the fine-tune after it
STRUCTURE_FIELDS = ("enabled", "points", "selection_split", "selection_fraction", "seed", "structural_fraction",
                    "structural_finetune_epochs")
_TRAINED = (("dataset", None), ("model", None), ("train", None))
_MEASURED = _TRAINED + (("measure", None), ("analysis", ("readout", "readout_solver", "readout_epochs",
                                                          "readout_pool_epochs", "readout_lr", "bootstrap",
                                                          "confidence", "fdr", "seed")))
_CLUSTERED = _MEASURED + (("analysis", CLUSTER_FIELDS),)
STAGE_INPUTS: dict[str, tuple] = {
    "data": (("dataset", None), ("train", ("seed",))),
    "train": _TRAINED,
    "load": (("model", None),),
    "evaluate": _TRAINED,
    "measure": _MEASURED,
    "cluster": _CLUSTERED,
    "heads": _CLUSTERED + (("heads", None),),
    "prune": _CLUSTERED + (("pruning", None),),
    # structural pruning reads no threshold: the units it removes are ranked by each node's eta2 (and by
    # weight magnitude), on the selection images the pruning section chooses
    "structure": _MEASURED + (("pruning", STRUCTURE_FIELDS),),
    "report": _CLUSTERED + (("heads", None), ("pruning", None)),
}
# Jobs finished before issue 27 ran one `snp` stage where measure and cluster now run. It read exactly
# the fields the cluster stage's key reads (with the solver's fields at their neutral defaults), so its
# key, which those jobs' markers hold, is the cluster stage's: stage_key(spec, "snp") still gives it.
LEGACY_STAGE_INPUTS: dict[str, tuple] = {"snp": STAGE_INPUTS["cluster"]}


def identity_content(spec_json: dict, weights_digest: str | None = None) -> dict:
    """`spec_json` (a JobSpec dumped as JSON, or a stored spec.json, which may lack later fields and
    sections) as job ids and stage keys hash it (the module's docstring). With `weights_digest`, the
    checkpoint of model.weights counts by that SHA-256, not by its path (two jobs on the same file share
    their stages); the job id, computed before the file is read, hashes the path."""
    content = {k: v for k, v in portable_paths(spec_json).items() if k not in OUTSIDE_IDENTITY}
    content["dataset"] = hashed_dataset(content.get("dataset") or {})
    model = dict(content.get("model") or {})
    if model.get("weights") is None:  # jobs without weights keep the ids and keys they had
        model.pop("weights", None)
        model.pop("weights_format", None)
    elif weights_digest is not None:
        model["weights"] = f"sha256:{weights_digest}"
    train = {k: v for k, v in (content.get("train") or {}).items() if k != "compile"}  # noise only (TrainSpec.compile)
    workers = (spec_json.get("compute") or {}).get("num_workers", 1)
    if workers != 1:  # batch_size is per worker: N workers train another network (1: ids and keys as before)
        train["workers"] = workers
    return without_neutral_defaults({**content, "model": model, "train": train})


def job_digest(spec_json: dict) -> str:
    """The hash of a job id (`<name>-<hash>`): all of the identity content."""
    return hashlib.sha256(json.dumps(identity_content(spec_json), sort_keys=True).encode()).hexdigest()[:12]


def stage_key(spec_json: dict, stage: str, weights_digest: str | None = None) -> str:
    """Hash of the identity content's fields `stage` depends on (STAGE_INPUTS; computed from a stored
    spec.json too, where a field it lacks counts as None unless it is one of NEUTRAL_DEFAULTS)."""
    content = identity_content(spec_json, weights_digest)
    picked: dict = {}
    for section, fields in STAGE_INPUTS.get(stage) or LEGACY_STAGE_INPUTS[stage]:
        value = content.get(section) or {}
        picked[section] = value if fields is None else {**picked.get(section, {}), **{
            f: value.get(f) for f in fields if f in value or (section, f) not in NEUTRAL_DEFAULTS}}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_keys(spec_json: dict, stage: str, weights_digest: str | None = None) -> tuple[str, ...]:
    """The keys a finished `stage` may carry to count as this spec's: its stage key, then the key that
    hashes the absolute paths (what stages recorded before the workdir was; they stay reusable)."""
    key = stage_key(spec_json, stage, weights_digest)
    legacy = stage_key({**spec_json, "workdir": None}, stage, weights_digest)
    return (key,) if legacy == key else (key, legacy)


def portable_paths(spec_json: dict) -> dict:
    """`spec_json` (a JobSpec dumped as JSON, or a stored spec.json) with its dataset root and weights
    file as job ids and stage keys hash them: relative to the job's `workdir` when inside it, else as
    they are (absolute, or s3://). A job thus keeps its id from whichever directory the process
    stands in (a Tune trial runs in a directory of its own) and on a cluster, which loads the job in
    its copy of the uploaded working directory. A stored spec.json without a workdir (written before
    it was recorded) hashes its absolute paths, as it was hashed then. The id follows a path, not the
    content behind it: an archive moved elsewhere is another job; one replaced in place is not."""
    base = spec_json.get("workdir")
    if not isinstance(base, str) or not os.path.isabs(base):
        return spec_json
    out = dict(spec_json)
    for section, key in PATH_FIELDS:
        sec = out.get(section)
        value = sec.get(key) if isinstance(sec, dict) else None
        if not isinstance(value, str) or "://" in value or not os.path.isabs(value):
            continue
        path = Path(value)
        if path.is_relative_to(base):
            out[section] = {**sec, key: path.relative_to(base).as_posix()}
    return out


def without_neutral_defaults(spec_json: dict) -> dict:
    """`spec_json` (a JobSpec dumped as JSON, or a stored spec.json) without the NEUTRAL_DEFAULTS fields
    that hold their neutral value: what job ids and stage keys hash."""
    out = dict(spec_json)
    for (section, key), neutral in NEUTRAL_DEFAULTS.items():
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] == neutral:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def hashed_dataset(dataset: dict) -> dict:
    """The dataset section as job ids and stage keys hash it: without the text-only fields for other
    datasets (they do not apply there, and ids from before text datasets existed stay valid)."""
    if dataset.get("name") == "text":
        return dataset
    return {k: v for k, v in dataset.items() if k not in TEXT_ONLY_FIELDS}

