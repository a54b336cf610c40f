"""The label-blind control end to end (issue 25): the same tiny synthetic job through the pipeline on
its real labels and with dataset.random_labels. Labels drawn independently of the images make every
node's null true at every point, so (almost) no node may read as label-specific there; on the real
labels the trained network's points must show many. Slow: two trainings and two SNP stages."""

import pytest

from snp_service import pipeline
from snp_service.spec import spec_from_dict
from snp_service.store import Store
from tests.conftest import tiny_job

pytestmark = pytest.mark.slow


def _layers(tmp_path, random_labels: bool):
    job = tiny_job(tmp_path, **{"dataset.random_labels": random_labels, "heads.enabled": False,
                                "analysis.bootstrap": 100, "analysis.readout_epochs": 5})
    job["dataset"]["synthetic"] = {**job["dataset"]["synthetic"], "test_per_class": 48}
    spec = spec_from_dict(job)
    out = pipeline.run(spec, progress=lambda m: None)
    return spec, out, Store.from_spec(spec.storage).job(spec.job_id()).read_table("snp/layers.parquet")


def test_random_labels_give_no_label_specific_nodes_and_real_labels_many(tmp_path, ray_cluster):
    spec, out, real = _layers(tmp_path, random_labels=False)
    blind_spec, blind_out, blind = _layers(tmp_path, random_labels=True)
    assert blind_spec.job_id() != spec.job_id()
    assert out.stages["evaluate"]["accuracy"] > 0.5  # 4 labels: chance 0.25
    assert blind_out.stages["evaluate"]["accuracy"] < 0.45  # nothing learnable about evaluation labels
    # real labels: the trained points hold many label-specific nodes
    assert real["label_specific_fraction"].median() > 0.3
    # random labels: Benjamini-Hochberg under a true global null rejects anything at a point with
    # probability <= fdr; allow a few nodes (3 of 32) for the nodes' dependence, never a real share
    assert blind["label_specific_fraction"].max() <= 0.1
    assert (blind["label_specific_fraction_lo"].fill_nan(0) <= 0.05).all()
