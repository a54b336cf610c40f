"""Property: the validator never crashes on any spec, and every spec it accepts runs its first stage."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snp_service.errors import SpecError
from snp_service.spec import spec_from_dict
from tests.conftest import tiny_job

FIELDS = ["name", "dataset.name", "dataset.image_size", "dataset.max_per_class", "dataset.num_workers",
          "dataset.synthetic.num_classes", "dataset.synthetic.train_per_class", "dataset.synthetic.noise",
          "model.name", "model.num_heads", "model.embedding_dim", "model.num_layers", "model.mlp_ratio",
          "model.positional_embedding", "model.attention", "train.epochs", "train.batch_size", "train.lr",
          "train.warmup_epochs", "train.precision", "measure.points", "analysis.threshold", "analysis.readout",
          "heads.points", "pruning.structural_fraction", "pruning.curve_thresholds", "storage.root",
          "storage.endpoint", "compute.num_workers", "sweep", "unknown_key"]
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(-2, 2), st.just(float("nan")), st.text(max_size=12),
    st.sampled_from(["cct_2_3x2_32", "vgg11_bn", "cifar100", "flowers102", "imagefolder", "all", "sine", "sdpa",
                     "reference", "fp32", "flatten", "s3://b/p", "http://127.0.0.1:9", "../x", "blocks.0.out"]),
    st.lists(st.sampled_from(["all", "blocks.*.out", "blocks.0.attn.heads", "tokenizer.0", 0.3, 2]), max_size=3),
    st.dictionaries(st.sampled_from(["num_heads", "threshold", "x"]), st.integers(0, 4), max_size=2))


def _set(d, path, value):
    *parents, last = path.split(".")
    for p in parents:
        if not isinstance(d.get(p), dict):
            d[p] = {}
        d = d[p]
    d[last] = value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.sampled_from(FIELDS), VALUES), min_size=1, max_size=3))
def test_validator_never_crashes_and_accepted_specs_run_their_first_stage(tmp_path_factory, mutations):
    from snp_service.data import build_datasets

    tmp = tmp_path_factory.mktemp("prop")
    job = json.loads(json.dumps(tiny_job(tmp)))
    job["dataset"]["synthetic"] = {"num_classes": 3, "train_per_class": 4, "test_per_class": 2}
    for path, value in mutations:
        _set(job, path, value)
    try:
        spec = spec_from_dict(job)
    except SpecError:
        return  # refused with a message: fine
    data = build_datasets(spec.dataset, seed=spec.train.seed)  # the data stage
    assert data.num_classes >= 2 and len(data.train) > 0
