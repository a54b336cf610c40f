"""The job spec: every shipped job validates; bad ones are rejected with the file, the field and
what was expected, exit code 2 and no traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snp_service.cli import main
from snp_service.errors import SpecError
from snp_service.spec import JobSpec, load_spec, spec_from_dict
from tests.conftest import REPO, SHARED_CIFAR10, SHARED_FLOWERS, SHARED_TEXT, tiny_job

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_shipped_jobs_validate(path, monkeypatch, tmp_path):
    text = path.read_text()
    shared = [a for a in (SHARED_CIFAR10, SHARED_FLOWERS, SHARED_TEXT) if f"../shared/datasets/{a.name}" in text]
    on_shared = bool(shared)
    if on_shared and not shared[0].exists():
        pytest.skip(f"real dataset archive not at {shared[0]}")
    monkeypatch.chdir(REPO)
    if "weights: results/" in text:  # a finished job's weights: validated beside a stand-in of that job
        monkeypatch.chdir(_beside_a_finished_job(tmp_path, yaml.safe_load(text)["model"]["weights"]))
    remote = yaml.safe_load(text)["dataset"].get("root", "").startswith("s3://")  # validated without reading it
    sets = []
    if path.name == "cifar100_cct7.yaml":  # the RayJob's job: its data is on a read-only volume there;
        sets = ["dataset.download=true"]  # validated here as on a machine that downloads it
    elif "download: true" not in text and "synthetic" not in text and not on_shared and not remote:
        pytest.skip(f"{path.name} needs its dataset root present (a GPU-cluster job)")
    spec = load_spec(path, sets)
    assert spec.job_id().startswith(spec.name + "-")
    if spec.model.weights:  # the job name resolved to the finished job's folder; load replaces train
        assert spec.model.weights.endswith("-0123456789ab") and "load" in spec.stage_names()


def _beside_a_finished_job(tmp_path: Path, weights: str) -> Path:
    """A working folder like the repository's (../shared reached the same way) holding a stand-in of
    the finished job `weights` names (results/<name>-<12 hex>/ with its weights and manifest)."""
    work = tmp_path / "repo"
    job = work / f"{weights}-0123456789ab"
    (job / "model").mkdir(parents=True)
    (job / "model" / "weights.pt").write_bytes(b"stand-in")
    (job / "manifest.json").write_text("{}")
    (tmp_path / "shared").symlink_to(REPO.parent / "shared")
    return work


def test_every_dataset_kind_has_a_shipped_job():
    names = {yaml.safe_load(p.read_text())["dataset"]["name"] for p in JOBS}
    assert {"cifar100", "flowers102", "imagefolder"} <= names


def test_job_id_is_content_derived(tmp_path):
    a = spec_from_dict(tiny_job(tmp_path))
    b = spec_from_dict(tiny_job(tmp_path, **{"storage": {"root": str(tmp_path / "elsewhere")}}))
    c = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 4}))
    assert a.job_id() == b.job_id()  # storage does not change results
    assert a.job_id() != c.job_id()


def test_defaults_follow_method(tmp_path):
    spec = spec_from_dict(tiny_job(tmp_path))
    assert spec.analysis.threshold == 0.3 and spec.analysis.normalise == "max"
    assert spec.train.label_smoothing == 0.1 and spec.train.optimizer == "adamw"
    assert spec.selected_points()[0] == "tokenizer.0"


def _bad_cases(tmp: Path):
    base = tiny_job(tmp)

    def with_(path, value):
        job = json.loads(json.dumps(base))
        *parents, last = path.split(".")
        node = job
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
        return yaml.safe_dump(job)

    def without(path):
        job = json.loads(json.dumps(base))
        *parents, last = path.split(".")
        node = job
        for p in parents:
            node = node[p]
        del node[last]
        return yaml.safe_dump(job)

    return {
        "wrong_type_epochs": (with_("train.epochs", "ten"), "train.epochs"),
        "negative_epochs": (with_("train.epochs", -3), "train.epochs"),
        "zero_batch": (with_("train.batch_size", 0), "train.batch_size"),
        "absurd_batch": (with_("train.batch_size", 10**9), "train.batch_size"),
        "unknown_top_key": (yaml.safe_dump({**base, "trian": {}}), "trian: unknown field"),
        "unknown_nested_key": (with_("model.heads", 4), "model.heads: unknown field"),
        "unknown_model": (with_("model.name", "resnet51"), "unknown model 'resnet51'"),
        "unknown_dataset": (with_("dataset.name", "mnist"), "dataset.name"),
        "threshold_one": (with_("analysis.threshold", 1.0), "analysis.threshold"),
        "threshold_zero": (with_("analysis.threshold", 0.0), "analysis.threshold"),
        "threshold_negative": (with_("pruning.threshold", -0.2), "pruning.threshold"),
        "heads_not_dividing": (with_("model.num_heads", 3), "does not divide embedding_dim"),
        "missing_dataset_path": (yaml.safe_dump({**base, "dataset": {"name": "cifar10", "root": str(tmp / "nope")}}),
                                 "does not exist"),
        "missing_required": (without("train"), "train: required field is missing"),
        "missing_epochs": (without("train.epochs"), "train.epochs: required field is missing"),
        "point_model_lacks": (with_("measure.points", ["blocks.9.out"]), "matches no measurement point"),
        "image_too_small": (yaml.safe_dump({**base, "model": {"name": "vgg11_bn"},
                                             "dataset": {**base["dataset"], "image_size": 16}}), "image_size >= 32"),
        "name_with_slash": (yaml.safe_dump({**base, "name": "a/b"}), "name"),
        "name_with_dotdot": (yaml.safe_dump({**base, "name": "a..b"}), "'..'"),
        "s3_without_bucket": (with_("storage.root", "s3:///prefix"), "has no bucket"),
        "endpoint_without_scheme": (yaml.safe_dump({**base, "storage": {"root": "s3://b/p", "endpoint": "minio:9000"}}),
                                    "has no scheme"),
        "synthetic_wrong_layout": (yaml.safe_dump({**base, "dataset": {**base["dataset"], "name": "cifar10"}}),
                                   "CIFAR-100 or Flowers-102 layout"),
        "warmup_too_long": (with_("train.warmup_epochs", 3), "warmup_epochs"),
        "lr_negative": (with_("train.lr", -1e-3), "train.lr"),
        "malformed_yaml": ("name: tiny\ndataset: [unclosed\n", "malformed YAML at line"),
        "top_level_list": ("- a\n- b\n", "expected a mapping"),
        "yaml_bomb": ("a: &a [x,x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
                      "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
                      "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
                      "expands to more than"),
        "non_utf8": (b"name: caf\xe9\n", "not UTF-8"),
        "heads_on_ff_point": (with_("heads.points", ["blocks.0.mlp.hidden"]), "has no attention heads"),
        "heads_point_unmeasured": (yaml.safe_dump({**base, "measure": {"points": ["blocks.0.out"]},
                                                   "heads": {"points": ["blocks.0.attn.heads"]}}),
                                   "heads.points: 'blocks.0.attn.heads' matches no selected"),
        "structural_removes_all_heads": (with_("pruning.structural_fraction", 0.8),
                                         "pruning.structural_fraction: 0.8 would remove all 2 heads"),
        "structural_fraction_one": (with_("pruning.structural_fraction", 1.0), "pruning.structural_fraction"),
        "structural_on_vgg": (yaml.safe_dump({**base, "model": {"name": "vgg11_bn"},
                                              "pruning": {"structural_fraction": 0.25}}), "is not a CCT"),
        "curve_threshold_one": (with_("pruning.curve_thresholds", [0.3, 1.0]), "pruning.curve_thresholds.1"),
        "prune_point_missing": (with_("pruning.points", ["blocks.7.mlp.hidden"]), "pruning.points"),
        "null_draws_too_few": (with_("heads.null_draws", 10), "heads.null_draws"),
    }


def test_the_base_of_the_bad_cases_is_accepted(tmp_path, capsys):
    """Each bad case breaks one thing of tiny_job; tiny_job itself validates (a validator refusing
    everything, or one of the fields the cases keep, would pass every case below)."""
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(tiny_job(tmp_path)))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert out.err == "" and "tiny-" in out.out


@pytest.mark.parametrize("case", list(_bad_cases(Path("/tmp/x"))))
def test_bad_spec_rejected(case, tmp_path, capsys):
    text, expected = _bad_cases(tmp_path)[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)
    assert main(["validate", str(path)]) == 2
    out = capsys.readouterr()
    assert "Traceback" not in out.err and expected in out.err and out.out == ""


def test_validate_cli_exit_codes(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_job(tmp_path)))
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tiny_job(tmp_path), "model": {"name": "nope"}}))
    ok = subprocess.run([sys.executable, "-m", "snp_service.cli", "validate", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["train"]["epochs"] == 3  # the normalised spec is printed as YAML
    ko = subprocess.run([sys.executable, "-m", "snp_service.cli", "validate", str(bad)], capture_output=True, text=True)
    assert ko.returncode == 2 and "Traceback" not in ko.stderr and "model.name" in ko.stderr
    missing = subprocess.run([sys.executable, "-m", "snp_service.cli", "validate", str(tmp_path / "absent.yaml")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "job file not found" in missing.stderr


def test_schema_is_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "JobSpec" and "dataset" in schema["required"]
    assert schema["additionalProperties"] is False


def test_spec_round_trips_through_json(tmp_path):
    spec = spec_from_dict(tiny_job(tmp_path))
    again = JobSpec.model_validate(json.loads(spec.model_dump_json()))
    assert again == spec and again.job_id() == spec.job_id()


def test_weights_may_name_a_finished_job_by_its_name(tmp_path, monkeypatch):
    """model.weights: results/<job name> resolves to that job's one finished folder (as the shipped
    resnet18_cifar10_again.yaml does), never to a job whose name merely starts the same."""
    from snp_service.errors import SpecError

    monkeypatch.chdir(tmp_path)
    job = tiny_job(tmp_path)
    job.pop("train")
    job["model"] = {**job["model"], "weights": "results/first"}
    with pytest.raises(SpecError, match="run that job first"):
        spec_from_dict(job)
    for name in ("first-0123456789ab", "first-again-0123456789ab"):
        (tmp_path / "results" / name / "model").mkdir(parents=True)
        (tmp_path / "results" / name / "model" / "weights.pt").write_bytes(b"")
        (tmp_path / "results" / name / "manifest.json").write_text("{}")
    spec = spec_from_dict(job)
    assert spec.model.weights == str(tmp_path / "results" / "first-0123456789ab")
    assert spec.stage_names()[1] == "load" and spec.train.epochs == 1  # nothing is trained
    (tmp_path / "results" / "first-fedcba987654" / "model").mkdir(parents=True)
    (tmp_path / "results" / "first-fedcba987654" / "manifest.json").write_text("{}")
    with pytest.raises(SpecError, match="2 finished jobs of that name"):
        spec_from_dict(job)


def test_eval_every_is_neutral_at_1_and_refused_in_a_sweep(tmp_path):
    base = spec_from_dict(tiny_job(tmp_path))
    assert spec_from_dict(tiny_job(tmp_path, **{"train.eval_every": 1})).job_id() == base.job_id()
    assert spec_from_dict(tiny_job(tmp_path, **{"train.eval_every": 5})).job_id() != base.job_id()
    job = tiny_job(tmp_path, **{"train.eval_every": 2})
    job["sweep"] = {"threshold": [0.2, 0.4]}
    with pytest.raises(SpecError, match="train.eval_every must be 1"):
        spec_from_dict(job)
