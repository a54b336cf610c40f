import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR10 = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
SHARED_FLOWERS = REPO.parent / "shared" / "datasets" / "flowers-102.tar.gz"
SHARED_TEXT = REPO.parent / "shared" / "datasets" / "text-classification.tar.gz"


@pytest.fixture(scope="session")
def cache_env(tmp_path_factory):
    """An isolated dataset cache for the whole session (archives are extracted once)."""
    d = tmp_path_factory.mktemp("snp-cache")
    old = os.environ.get("SNP_CACHE")
    os.environ["SNP_CACHE"] = str(d)
    yield d
    if old is None:
        os.environ.pop("SNP_CACHE", None)
    else:
        os.environ["SNP_CACHE"] = old


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A real local Ray cluster in a fresh temp dir (so no stale ray_current_cluster is reused).
    Started after the S3 server, so its workers have the S3 credentials in their environment, as
    on a real cluster."""
    import ray

    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, _temp_dir=temp, log_to_driver=True)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def tiny_job(tmp: Path, **overrides) -> dict:
    """A job dict small enough to train in seconds: a 1-layer, 32-wide CCT on synthetic data."""
    job = {
        "name": "tiny",
        "dataset": {"name": "cifar100", "root": str(tmp / "data"), "num_workers": 0,
                    "synthetic": {"num_classes": 4, "train_per_class": 96, "test_per_class": 16, "noise": 0.3}},
        "model": {"name": "cct_2_3x2_32", "num_layers": 1, "embedding_dim": 32, "num_heads": 2},
        "train": {"epochs": 3, "batch_size": 32, "lr": 3e-3, "seed": 0},
        "storage": {"root": str(tmp / "results")},
        "compute": {"num_workers": 1, "cpus_per_worker": 1},
    }
    for key, value in overrides.items():
        section, _, field = key.partition(".")
        if field:
            job[section] = {**job.get(section, {}), field: value}
        else:
            job[section] = value
    return job


@pytest.fixture(scope="session")
def full_job(tmp_path_factory, ray_cluster):
    """A tiny job through every stage (heads, ANDC and structural pruning, report): (dict, spec, JobStore)."""
    from snp_service import pipeline
    from snp_service.spec import spec_from_dict
    from snp_service.store import Store

    tmp = tmp_path_factory.mktemp("full-job")
    job_dict = tiny_job(tmp, **{"model.num_heads": 4, "heads.null_draws": 500,
                                "pruning.enabled": True, "pruning.finetune_epochs": 1,
                                "pruning.curve_thresholds": [0.2, 0.5, 0.8],
                                "pruning.structural_fraction": 0.5, "pruning.structural_finetune_epochs": 1,
                                "analysis.readout_epochs": 5, "analysis.bootstrap": 100})
    spec = spec_from_dict(job_dict)
    pipeline.run(spec, progress=lambda m: None)
    return job_dict, spec, Store.from_spec(spec.storage).job(spec.job_id())


S3_KEY, S3_SECRET = "snp-test-key", "snp-test-secret-7f3a9c"  # the secret the leak tests scan for


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS S3 server on loopback enforcing credentials, with bucket `snp-test`.
    The process environment gets the credentials (as a user's shell would)."""
    from snp_service.localdev import S3Server, free_ports

    server = S3Server(tmp_path_factory.mktemp("s3"), free_ports(1)[0], S3_KEY, S3_SECRET).start()
    server.create_bucket("snp-test")
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    os.environ.update(AWS_ACCESS_KEY_ID=S3_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET)
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_head(s3_server):
    """`ray start --head` as a user runs it (snp_service.localdev.RayHead: fresh temp dir, loopback,
    its own ports), with the S3 credentials in its environment. Yields the job API address."""
    from snp_service.localdev import RayHead

    head = RayHead(num_cpus=2).start()
    yield head.address
    head.stop()
