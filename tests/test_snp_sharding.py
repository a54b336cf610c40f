"""The SNP stage sharded over Ray actors on a multi-node cluster gives the single-process result,
whatever the number of actors, and survives an actor killed mid-run (slow)."""

import shutil
import tempfile
import time

import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from snp_service.actors import assign, measure_on, measure_points, start_workers
from snp_service.spec import spec_from_dict
from tests.conftest import tiny_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def three_node_cluster():
    if ray.is_initialized():
        ray.shutdown()
    temp = tempfile.mkdtemp(prefix="ray-cluster-", dir="/tmp")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shard")
    spec = spec_from_dict(tiny_job(tmp, analysis={"readout_epochs": 4, "bootstrap": 200}))
    torch.manual_seed(0)
    weights = spec.model.build(4, 32).state_dict()  # an untrained network measures just as well
    points = spec.selected_points()
    return spec, weights, points, measure_points(spec, weights, points, threads=1)


def _same(a, b):
    assert list(a) == list(b)
    for p in a:
        ra, rb = dict(a[p].row), dict(b[p].row)
        ra.pop("seconds"), rb.pop("seconds")
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == rb[k] or (ra[k] != ra[k] and rb[k] != rb[k]), (p, k)  # nan == nan
        assert torch.equal(a[p].field_sums, b[p].field_sums), p
        for k, v in a[p].readout.state_dict().items():
            assert torch.equal(v, b[p].readout.state_dict()[k]), (p, k)


def test_assignment_is_balanced_and_complete(setup):
    spec, _, points, _ = setup
    groups = assign(spec, points, 3)
    assert sorted(p for g in groups for p in g) == sorted(points) and all(groups)
    assert assign(spec, points, 3) == groups
    assert len(assign(spec, points, 50)) == len(points)


@pytest.mark.parametrize("n_actors", [1, 2, 3])
def test_same_result_for_any_number_of_actors(three_node_cluster, setup, n_actors):
    spec, weights, points, reference = setup
    actors = start_workers(spec, n_actors, threads=1, cpus=1)
    try:
        _same(measure_on(actors, spec, weights, points), reference)
    finally:
        for a in actors:
            ray.kill(a)


def test_killed_actor_is_restarted_and_result_unchanged(three_node_cluster, setup, tmp_path):
    _, weights, points, _ = setup
    # long enough readouts that the kill lands mid-task, also when starting the killer task takes seconds
    spec = spec_from_dict(tiny_job(tmp_path, analysis={"readout_epochs": 250, "bootstrap": 200}))
    reference = measure_points(spec, weights, points, threads=1)
    actors = start_workers(spec, 2, threads=1, cpus=1)
    first_pid = ray.get(actors[0].pid.remote())
    ray.get(actors[1].pid.remote())

    @ray.remote(num_cpus=0)
    class Killer:
        def ready(self) -> bool:
            return True

        def kill_mid_task(self, actor, pid):
            # the actor's feature folder exists only while its task captures and measures its points: a
            # kill once it is there lands mid-task (this killer is running before the task starts)
            from pathlib import Path

            from snp_service.actors import features_root

            deadline = time.time() + 120
            while not list(Path(features_root()).glob(f"snp-features-{pid}-*")) and time.time() < deadline:
                time.sleep(0.01)
            ray.kill(actor, no_restart=False)  # as if its process died: Ray restarts it and retries the task
            return time.time()

    watcher = Killer.remote()
    ray.get(watcher.ready.remote())  # its process is up before the measurement starts

    first_group = assign(spec, points, 2)[0]
    finished = {}

    def note(message):
        if all(p in message for p in first_group):
            finished["first"] = time.time()

    killer = watcher.kill_mid_task.remote(actors[0], first_pid)
    try:
        result = measure_on(actors, spec, weights, points, progress=note)
        killed_at = ray.get(killer)
        assert killed_at < finished["first"]  # killed while its task was still running
        assert ray.get(actors[0].pid.remote()) != first_pid  # the actor really was replaced
        _same(result, reference)
    finally:
        for a in actors + [watcher]:
            ray.kill(a)
