"""Studies' member jobs: the heads_study section, how many members run at once, and what a failing
member does to the others (the orchestration itself, with the pipeline run replaced by a recorder)."""

import threading

import pytest

from snp_service import pipeline, studies
from snp_service.errors import DatasetError, SpecError
from snp_service.spec import derive_job, spec_from_dict
from tests.conftest import tiny_job


def _spec(tmp_path, **compute):
    job = tiny_job(tmp_path)
    job["compute"].update(compute)
    return spec_from_dict(job)


def test_heads_study_section_is_outside_the_job_id_and_dropped_from_members(tmp_path):
    plain = tiny_job(tmp_path, **{"model.num_heads": 2})
    study = {**plain, "heads_study": {"num_heads": [1, 2]}}
    a, b = spec_from_dict(plain), spec_from_dict(study)
    assert a.job_id() == b.job_id()
    members = b.heads_jobs()
    assert [m.model.num_heads for m in members] == [1, 2]
    assert all(m.heads_study is None for m in members)
    assert members[1].name == f"{b.name}-h2"  # a member is a job of its own
    assert derive_job(b, "x", {}, "test").heads_study is None


@pytest.mark.parametrize("change, message", [
    ({"heads_study": {"num_heads": [1, 1]}}, "unique"),
    ({"heads_study": {"num_heads": [3]}}, "do not divide"),
    ({"heads_study": {"num_heads": []}}, "at least 1"),
    ({"heads_study": {"num_heads": [2]}, "sweep": {"num_heads": [1, 2]}}, "exclude each other"),
    ({"heads_study": {"num_heads": [2]}, "model": {"name": "vgg11_bn"}}, "not a CCT"),
])
def test_bad_heads_study_sections_are_refused(tmp_path, change, message):
    job = {**tiny_job(tmp_path), **change}
    with pytest.raises(SpecError, match=message):
        spec_from_dict(job)


@pytest.mark.parametrize("compute, resources, members, expect", [
    ({}, {"CPU": 2.0}, 4, 2),  # two 1-CPU members fit
    ({}, {"CPU": 1.0}, 4, 1),
    ({"cpus_per_worker": 2, "num_workers": 2}, {"CPU": 9.0}, 4, 2),  # 4 CPUs a member
    ({}, {"CPU": 64.0}, 3, 3),  # never more than the members
    ({"use_gpu": "auto"}, {"CPU": 64.0, "GPU": 2.0}, 8, 2),  # a GPU each when the job uses them
    ({"use_gpu": False}, {"CPU": 64.0, "GPU": 2.0}, 8, 8),
    ({"use_gpu": True}, {"CPU": 64.0}, 8, 1),  # nothing fits now: one at a time (it waits for a GPU)
    ({"autoscaling": True}, {"CPU": 1.0}, 5, 5),  # the autoscaler adds nodes: every member at once
    ({"max_concurrent_jobs": 3}, {"CPU": 1.0}, 5, 3),
    ({"max_concurrent_jobs": 3}, {"CPU": 1.0}, 2, 2),
])
def test_member_concurrency_counts_what_the_cluster_holds(tmp_path, compute, resources, members, expect):
    assert studies.member_concurrency(_spec(tmp_path, **compute), members, resources) == expect


def _recording_run(monkeypatch, limit: int, total: int, fail: set[str] = frozenset()):
    """pipeline.run replaced by a member that holds until as many members run at once as the study
    allows (`limit`), or every member has started: the peak is reached by the members' own events,
    not by how long a member sleeps. The limit on the wait only keeps a broken pool from hanging."""
    running, peak, done, started = [0], [0], [], [0]
    cv = threading.Condition()

    def run(spec, progress=print):
        with cv:
            running[0] += 1
            started[0] += 1
            peak[0] = max(peak[0], running[0])
            cv.notify_all()
            assert cv.wait_for(lambda: running[0] >= limit or started[0] == total, timeout=120), \
                f"{spec.name}: only {running[0]} member(s) ran at once, {limit} allowed"
            # a grace in which a pool that allows too many would start one more (the pass on a correct
            # pool does not depend on it: the peak above is reached by events)
            cv.wait_for(lambda: running[0] > limit, timeout=0.2)
        with cv:
            running[0] -= 1
        if spec.name in fail:
            raise DatasetError(f"{spec.name}: no data")
        done.append(spec.name)
        return pipeline.RunOutcome(spec.job_id(), "uri", {}, {})

    monkeypatch.setattr(pipeline, "run", run)
    return peak, done


def test_members_run_at_most_n_at_once_and_come_back_in_order(tmp_path, monkeypatch):
    peak, done = _recording_run(monkeypatch, limit=2, total=5)
    spec = _spec(tmp_path, max_concurrent_jobs=2)
    members = [(f"m{i}", derive_job(spec, f"m{i}", {"train": {"seed": i}}, "test")) for i in range(5)]
    outcomes = studies.run_members(spec, members, progress=lambda m: None)
    assert [o.job_id for o in outcomes] == [v.job_id() for _t, v in members]
    assert peak[0] == 2 and sorted(done) == [f"m{i}" for i in range(5)]


def test_a_failing_member_lets_the_others_finish_then_fails_naming_it(tmp_path, monkeypatch):
    peak, done = _recording_run(monkeypatch, limit=3, total=5, fail={"m1", "m3"})
    spec = _spec(tmp_path, max_concurrent_jobs=3)
    members = [(f"m{i}", derive_job(spec, f"m{i}", {"train": {"seed": i}}, "test")) for i in range(5)]
    lines = []
    with pytest.raises(DatasetError, match=r"member m1: m1: no data \(1 other member\(s\) failed too\)"):
        studies.run_members(spec, members, progress=lines.append)
    assert sorted(done) == ["m0", "m2", "m4"]
    assert "[m3] failed: m3: no data" in lines


def test_validate_lists_the_heads_study_members_with_their_ids(tmp_path, capsys):
    import yaml

    from snp_service.cli import main

    job = {**tiny_job(tmp_path), "heads_study": {"num_heads": [1, 2]}}
    (tmp_path / "h.yaml").write_text(yaml.safe_dump(job))
    assert main(["validate", str(tmp_path / "h.yaml")]) == 0
    out = capsys.readouterr().out
    ids = [v.job_id() for v in spec_from_dict(job).heads_jobs()]
    assert f"# heads-study run: 1 head(s), job id {ids[0]}" in out
    assert f"# heads-study run: 2 head(s), job id {ids[1]}" in out
