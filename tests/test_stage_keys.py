"""Stage keys (issue 33): a stage is reused only when every spec field it reads is unchanged. The
oracle is the pipeline's shape (METHOD.md, pipeline.STAGES), not STAGE_INPUTS itself: each spec
section first feeds one stage, and whatever a stage computes feeds every stage downstream of it."""

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snp_service.pipeline import STAGES
from snp_service.spec import STAGE_INPUTS, identity_content, job_digest, stage_key
from snp_service.spec import TEXT_ONLY_FIELDS, spec_from_dict
from tests.conftest import tiny_job

# data -> train -> evaluate -> measure -> cluster -> {heads, prune} -> report, and measure -> structure
# -> report (structural pruning ranks units by the measured eta2, never by clusters: the eta2 on the
# selection images it reads from the prune stage's folder is a measurement too, the same at every
# threshold); load (given weights instead of training) reads the model section alone
DOWNSTREAM = {"data": {"train"}, "train": {"evaluate"}, "evaluate": {"measure"}, "measure": {"cluster", "structure"},
              "cluster": {"heads", "prune"}, "heads": {"report"}, "prune": {"report"}, "structure": {"report"},
              "load": set(), "report": set()}
# the stage each spec section feeds first; None: read by no stage (naming, placement, storage)
FIRST_READER = {"dataset": "data", "model": "train", "train": "train", "measure": "measure", "analysis": "measure",
                "heads": "heads", "pruning": "prune", "name": None, "description": None, "storage": None,
                "compute": None, "sweep": None, "compare": None, "heads_study": None,
                # the base of relative paths: moves the keys only through a dataset root inside it (its own test
                # below); this job's root is outside every directory the draws name but "/"
                "workdir": None}
# fields of those sections that feed another stage than their section, or none: each with its reason
EXCEPTIONS = {
    "train.seed": "data",  # seeds the train/validation split of the data stage
    "train.compile": None,  # changes speed, not results
    "compute.num_workers": "train",  # batch_size is per worker: N workers train another network
    "model.weights_format": None,  # only read with model.weights set (not in this job)
    # what turns measured SNP matrices into clusters (issue 27): a job that changes only these reuses
    # the measure stage (readouts, fields, label-dependence statistics)
    "analysis.threshold": "cluster",
    "analysis.normalise": "cluster",
    "analysis.candidate_order": "cluster",
    "analysis.cluster_time_limit_s": "cluster",
    # what structural pruning reads of the pruning section (the rest, the ANDC masks' threshold, curve,
    # baselines and fine-tune, only the prune stage reads)
    **{f"pruning.{f}": ("prune", "structure") for f in ("enabled", "points", "selection_split", "selection_fraction",
                                                        "seed", "structural_fraction", "structural_finetune_epochs")},
}


def _closure(stage: str | tuple | None) -> set[str]:
    if stage is None:
        return set()
    out, todo = set(), [stage] if isinstance(stage, str) else list(stage)
    while todo:
        s = todo.pop()
        if s not in out:
            out.add(s)
            todo.extend(DOWNSTREAM[s])
    return out


def _leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _with(spec_json: dict, field: str, value) -> dict:
    out = copy.deepcopy(spec_json)
    d = out
    *parents, last = field.split(".")
    for p in parents:
        d = d[p]
    d[last] = value
    return out


def _get(spec_json: dict, field: str):
    for p in field.split("."):
        spec_json = spec_json[p]
    return spec_json


BASE = spec_from_dict(tiny_job(__import__("pathlib").Path("/nonexistent-stage-keys"))).model_dump(mode="json")
FIELDS = sorted(_leaves(BASE))
ALL_STAGES = set(STAGE_INPUTS)


def test_the_oracle_covers_every_stage_and_section():
    assert {name for name, _ in STAGES} | {"load"} == ALL_STAGES == set(DOWNSTREAM)
    assert {f.split(".")[0] for f in FIELDS} == set(FIRST_READER)


def _expected(field: str) -> set[str]:
    if field.split(".")[:2][-1] in TEXT_ONLY_FIELDS and field.startswith("dataset."):
        return set()  # text-only settings do not apply to an image dataset (this job): no stage reads them
    if field in EXCEPTIONS:
        return _closure(EXCEPTIONS[field])
    first = FIRST_READER[field.split(".")[0]]
    return _closure(first) | ({"load"} if field.startswith("model.") else set())


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from([f for f in FIELDS if f != "workdir"]),
       value=st.one_of(st.integers(-5, 10**6), st.text(min_size=1, max_size=8), st.floats(allow_nan=False),
                       st.lists(st.integers(0, 3), min_size=1, max_size=3), st.booleans()))
def test_a_field_changes_the_key_of_exactly_the_stages_that_read_it_and_every_later_one(field, value):
    old = _get(BASE, field)
    if old == value or json.dumps(old, sort_keys=True) == json.dumps(value, sort_keys=True):
        return  # not a change (True == 1: what the key reads of compute.num_workers)
    changed = _with(BASE, field, value)
    moved = {s for s in ALL_STAGES if stage_key(changed, s) != stage_key(BASE, s)}
    assert moved == _expected(field), field
    _id_moves_with_the_keys(field, changed, moved)


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_once(field):
    """The same property over every field of the spec (the random draws above may miss some)."""
    changed = _with(BASE, field, ["a value no spec has", field])
    moved = {s for s in ALL_STAGES if stage_key(changed, s) != stage_key(BASE, s)}
    assert moved == _expected(field)
    _id_moves_with_the_keys(field, changed, moved)


# identity fields no stage reads, each with its reason: the job id alone carries them
ID_ONLY = {
    "name": "names the job (and its folder); the same work under another name reuses every stage",
    "sweep": "a sweep job's own id (kept as finished sweeps have it); its trials are jobs without the section",
}


def _id_moves_with_the_keys(field: str, changed: dict, moved: set[str]) -> None:
    """Issue 28: a field that changes the job id changes some stage's key, and back (but ID_ONLY's),
    so no job runs again with every stage reused, and no stage runs again under the same id."""
    id_moved = job_digest(changed) != job_digest(BASE)
    if field.split(".")[0] in ID_ONLY:
        assert id_moved and not moved, field
    else:
        assert id_moved == bool(moved), (field, moved)


def _read_by_a_stage(section: str, name: str) -> bool:
    return any(s == section and (fields is None or name in fields)
               for inputs in STAGE_INPUTS.values() for s, fields in inputs)


def test_every_field_of_the_identity_is_read_by_a_stage():
    """job_id and stage_key hash one rule (spec.identity_content): every field of it, in every
    section, is among some stage's STAGE_INPUTS (but ID_ONLY's), and every section a stage reads is in it."""
    content = identity_content(BASE, weights_digest="0" * 64)
    unread = [f"{section}.{name}" for section, value in content.items() if section not in ID_ONLY
              for name in (value if isinstance(value, dict) else {None: value})
              if not _read_by_a_stage(section, name)]
    assert not unread, f"in the job id but in no stage key: {unread}"
    assert {s for inputs in STAGE_INPUTS.values() for s, _ in inputs} <= set(content)
    with_weights = _with(BASE, "model.weights", "/elsewhere/model.pth")
    assert identity_content(with_weights, "ab" * 32)["model"]["weights"] == f"sha256:{'ab' * 32}"
    assert identity_content(with_weights)["model"]["weights"] == "/elsewhere/model.pth"  # the id: the path


def test_a_job_id_is_its_name_and_the_hash_of_its_identity():
    spec = spec_from_dict(tiny_job(__import__("pathlib").Path("/nonexistent-stage-keys")))
    assert spec.job_id() == f"tiny-{job_digest(BASE)}"


def test_a_dataset_root_inside_the_workdir_counts_by_its_relative_path_and_old_keys_stay_accepted(tmp_path):
    """The workdir moves the keys only as the base of the root: the same data seen from two workdirs
    (a Tune trial's, a cluster's copy of the working directory) has the same keys; a stored spec.json
    without a workdir hashes its absolute root, as before, and stage_keys accepts that key too."""
    from snp_service.spec import stage_keys

    a = spec_from_dict({**tiny_job(tmp_path / "a"), "workdir": str(tmp_path / "a")}).model_dump(mode="json")
    b = spec_from_dict({**tiny_job(tmp_path / "b"), "workdir": str(tmp_path / "b")}).model_dump(mode="json")
    assert a["dataset"]["root"] != b["dataset"]["root"]
    for stage in ALL_STAGES:
        assert stage_key(a, stage) == stage_key(b, stage)
        old = {k: v for k, v in a.items() if k != "workdir"}  # a spec.json written before workdir was recorded
        assert stage_key(old, stage) != stage_key(a, stage) or stage == "load"
        assert stage_keys(a, stage) == (stage_key(a, stage),) + (() if stage == "load" else (stage_key(old, stage),))
    outside = spec_from_dict({**tiny_job(tmp_path / "c"), "workdir": str(tmp_path / "a")}).model_dump(mode="json")
    assert stage_keys(outside, "data") == (stage_key(outside, "data"),)  # nothing inside: one key, as before
