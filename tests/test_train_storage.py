"""Ray Train's storage filesystem retries an S3 outage as long as the store does (issue 29, item 5):
pyarrow's S3FileSystem loses its retry strategy when pickled (Ray Train ships it to its workers),
so the service gives Ray Train one that keeps it; a stage failure whose root is an S3 outage is
the store's one-line message, also when the store answers again by the time it is checked."""

import pickle
import time

import pyarrow.fs as pafs
import pytest

from snp_service.errors import StoreError
from snp_service.spec import StorageSpec, spec_from_dict
from snp_service.store import RETRY_SECONDS, RetryingS3FileSystem, Store, retrying_s3, s3_attempts
from tests.conftest import tiny_job

CLOSED = {"endpoint_override": "127.0.0.1:1", "scheme": "http", "region": "us-east-1", "connect_timeout": 5,
          "request_timeout": 60}


def test_ray_trains_filesystem_keeps_its_retries_through_pickling():
    job = Store.from_spec(StorageSpec(root="s3://bucket/prefix", endpoint="http://127.0.0.1:1")).job("j-0123456789ab")
    path, fs = job.ray_storage()
    assert path == "bucket/prefix/j-0123456789ab/train"
    again = pickle.loads(pickle.dumps(fs))
    assert isinstance(again, pafs.S3FileSystem)  # Ray Train's S3 handling (single-threaded uploads) applies
    assert isinstance(again, RetryingS3FileSystem) and again.attempts == fs.attempts == s3_attempts(RETRY_SECONDS)
    assert s3_attempts(RETRY_SECONDS) == 12  # 60 s: 12 retries, 102 s of waits
    store_fs = Store.from_spec(StorageSpec(root="s3://bucket/prefix", endpoint="http://127.0.0.1:1")).fs
    assert isinstance(store_fs, RetryingS3FileSystem) and store_fs.attempts == fs.attempts  # the store's own too
    assert "secret" not in str(again.__reduce__()).lower()  # credentials come from each process's environment


def waits(retries: int) -> float:
    """Seconds the AWS SDK's default retry strategy waits in all over `retries` retries."""
    return 0.025 * (2**retries - 2)


def test_the_attempts_grow_with_the_retry_time():
    assert [s3_attempts(t) for t in (0, 1, 5, 60, 102, 120)] == [1, 6, 8, 12, 12, 13]
    for t in (0.01, 0.5, 2, 8, 30, 59.9, 200, 600):
        m = s3_attempts(t)
        assert waits(m) >= t > waits(m - 1)  # the fewest retries whose waits span t: at most about 2 t


@pytest.mark.slow
def test_a_pickled_filesystem_still_waits_out_an_outage():
    """Against a closed port: the filesystem Ray Train's workers get backs off for the retry time."""
    fs = pickle.loads(pickle.dumps(retrying_s3({**CLOSED, "access_key": "a", "secret_key": "b"}, seconds=8)))
    t0 = time.monotonic()
    with pytest.raises(OSError, match="NETWORK_CONNECTION"):
        fs.get_file_info("bucket/key")
    assert waits(s3_attempts(8)) <= time.monotonic() - t0 < waits(s3_attempts(8)) + 3  # 12.75 s: no jitter


def test_a_filesystem_retries_as_long_after_many_retries_as_at_first():
    """The strategy has no retry quota: the AWS SDK's standard one spends 5 of 500 tokens a retry,
    and pyarrow never passes on the successes that refill them, so its filesystems stopped retrying
    after about 100 retries, for the rest of the process (a long job's later outages failed at once)."""
    fs = retrying_s3({**CLOSED, "access_key": "a", "secret_key": "b"}, seconds=0.05)  # 2 retries: 0 + 50 ms
    spans = []
    for _ in range(120):
        t0 = time.monotonic()
        with pytest.raises(OSError, match="NETWORK_CONNECTION"):
            fs.get_file_info("bucket/key")
        spans.append(time.monotonic() - t0)
    assert min(spans[100:]) >= 0.045, spans[95:]


def test_a_stage_failed_by_an_s3_outage_is_the_stores_message(tmp_path):
    from snp_service.pipeline import run_stage

    spec = spec_from_dict(tiny_job(tmp_path))
    job = Store.from_spec(spec.storage).job(spec.job_id())  # a store that answers when checked

    def stage(_spec, _job, _progress):
        cause = OSError("When uploading part for key 'x/checkpoint_000001/state.pt' in bucket 'b': AWS Error "
                        "NETWORK_CONNECTION during UploadPart operation: curlCode: 7, Couldn't connect to server")
        raise RuntimeError("Training failed due to worker group error:\nTraceback ...\n" + str(cause)) from cause

    with pytest.raises(StoreError) as e:
        run_stage(stage, spec, job, lambda m: None, "train")
    msg = str(e.value)
    assert msg.startswith("stage train failed because the results store") and "NETWORK_CONNECTION" in msg
    assert "SNP_STORE_RETRY_SECONDS" in msg and "\n" not in msg

    def other(_spec, _job, _progress):
        raise ValueError("not the store")

    with pytest.raises(ValueError):
        run_stage(other, spec, job, lambda m: None, "train")
