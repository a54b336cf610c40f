"""Networks trained elsewhere (snp_service.checkpoints): the CCT authors' own checkpoints give their
logits, wrapped and prefixed state_dicts load, unsafe or foreign files are refused with one message;
end to end, a job with model.weights runs every analysis stage without training, and a second job
on the same file reuses its load stage."""

import argparse
import io
import json
from pathlib import Path

import pytest
import torch
import yaml

from snp_service.checkpoints import detect_format, load_weights, read_state_dict, to_model_keys
from snp_service.errors import CheckpointError
from snp_service.spec import ModelSpec
from tests.conftest import REPO, tiny_job

SHARED = REPO.parent / "shared" / "checkpoints"
AUTHORS = [("cct_7_3x1_32_c100-100cls", "cct_7_3x1_32"), ("cct_2_3x2_32_sine-10cls", "cct_2_3x2_32")]


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.skipif(not SHARED.exists(), reason="needs ../shared/checkpoints (the CCT authors' files)")
@pytest.mark.parametrize("stem, arch", AUTHORS)
@pytest.mark.parametrize("attention", ["reference", "sdpa"])
def test_the_authors_checkpoints_give_the_authors_logits(stem, arch, attention):
    facts = {f["file"]: f for f in json.loads((SHARED / "checkpoints.json").read_text())}[f"{stem}.pth"]
    data = (SHARED / f"{stem}.pth").read_bytes()
    assert detect_format(read_state_dict(data, stem)) == "authors"
    model = ModelSpec(name=arch, attention=attention).build(facts["num_classes"], facts["img_size"]).eval()
    load_weights(model, data, stem, "auto", facts["num_classes"], facts["img_size"])
    assert sum(p.numel() for p in model.parameters()) == facts["params"]
    expected = torch.load(SHARED / facts["expected"], weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(expected["inputs"]), expected["logits"], rtol=0, atol=1e-5)


def _small():
    return ModelSpec(name="cct_2_3x2_32", num_layers=1, embedding_dim=32, num_heads=2)


def test_wrapped_and_ddp_prefixed_state_dicts_load():
    src = _small().build(4, 32)
    for wrapped in ({"state_dict": src.state_dict(), "epoch": 3}, {"model": src.state_dict()},
                    {f"module.{k}": v for k, v in src.state_dict().items()}):
        dst = _small().build(4, 32)
        load_weights(dst, _bytes(wrapped), "ckpt", "auto", 4, 32)
        assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))


def test_authors_keys_map_onto_the_services_modules():
    keys = {"tokenizer.conv_layers.0.0.weight": 0, "classifier.positional_emb": 0, "classifier.attention_pool.bias": 0,
            "classifier.blocks.3.self_attn.qkv.weight": 0, "classifier.blocks.3.linear2.bias": 0,
            "classifier.blocks.3.norm1.weight": 0, "classifier.blocks.3.pre_norm.bias": 0, "classifier.norm.weight": 0,
            "classifier.fc.weight": 0}
    mapped = to_model_keys({k: torch.zeros(1) for k in keys}, "authors")
    assert sorted(mapped) == sorted(["tokenizer.conv_layers.0.0.weight", "positional_emb", "pool.attention_pool.bias",
                                     "blocks.3.attn.qkv.weight", "blocks.3.mlp.linear2.bias", "blocks.3.norm1.weight",
                                     "blocks.3.pre_norm.bias", "norm.weight", "fc.weight"])


@pytest.mark.parametrize("payload, message", [
    (lambda: {"model": _small().build(4, 32).state_dict(), "args": argparse.Namespace(lr=1)}, "cannot read it safely"),
    (lambda: b"plain text, not a checkpoint", "not a PyTorch checkpoint"),
    (lambda: {"epoch": 3, "lr": 0.1}, "holds no state_dict"),
    (lambda: ModelSpec(name="cct_2_3x2_32").build(4, 32).state_dict(), "does not fit model"),
    (lambda: _small().build(7, 32).state_dict(), "classifies 7 classes, the dataset has 4"),
    (lambda: _small().build(4, 64).state_dict(), "holds 256 tokens"),
])
def test_what_does_not_fit_is_refused_with_one_message(payload, message):
    obj = payload()
    data = obj if isinstance(obj, bytes) else _bytes(obj)
    with pytest.raises(CheckpointError, match="ckpt.pth") as e:
        load_weights(_small().build(4, 32), data, "ckpt.pth", "auto", 4, 32)
    assert message in str(e.value)


def test_a_sine_model_is_told_to_take_the_learnable_positions_of_the_file():
    data = _bytes(_small().build(4, 32).state_dict())
    sine = ModelSpec(name="cct_2_3x2_32", num_layers=1, embedding_dim=32, num_heads=2, positional_embedding="sine")
    with pytest.raises(CheckpointError, match="positional_embedding: learnable"):
        load_weights(sine.build(4, 32), data, "ckpt", "auto", 4, 32)


@pytest.mark.slow
def test_a_job_with_weights_runs_without_training_and_shares_its_load_stage(tmp_path, ray_cluster, capsys):
    from snp_service import cli, pipeline
    from snp_service.spec import spec_from_dict
    from snp_service.store import Store

    trained = spec_from_dict(tiny_job(tmp_path, **{"train.epochs": 2, "analysis.readout_epochs": 2,
                                                   "analysis.bootstrap": 50, "heads.null_draws": 200}))
    first = pipeline.run(trained, progress=lambda m: None)
    ckpt = tmp_path / "elsewhere.pth"
    weights = Store.from_spec(trained.storage).job(first.job_id).read_torch("model/weights.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, ckpt)

    def job(name, w, **extra):
        d = tiny_job(tmp_path, **{"analysis.readout_epochs": 2, "analysis.bootstrap": 50, "heads.null_draws": 200,
                                  **extra})
        d.pop("train")
        d["name"] = name
        d["model"] = {**d["model"], "weights": str(w)}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(d))
        return path

    assert cli.main(["validate", str(job("from-file", ckpt))]) == 0
    assert "# stages: data, load, evaluate, measure, cluster, heads, prune, structure, report" in capsys.readouterr().out
    assert cli.main(["run", str(job("from-file", ckpt))]) == 0
    out = capsys.readouterr().out
    assert "load: cct_2_3x2_32 from" in out and "train:" not in out and "Ray Train" not in out
    store = Store.from_spec(trained.storage)
    a = next(store.job(j) for j in store.job_ids() if j.startswith("from-file"))
    assert a.stage_result("train") is None and a.stage_result("load")["sha256"]
    assert a.stage_result("evaluate")["accuracy"] == first.stages["evaluate"]["accuracy"]  # the same network
    assert a.has("layers") and a.has("heads")
    # the same file by another path and job name: the load stage is copied, not redone
    copy = tmp_path / "copy.pth"
    copy.write_bytes(ckpt.read_bytes())
    assert cli.main(["run", str(job("same-file", copy, **{"analysis.threshold": 0.5}))]) == 0
    out = capsys.readouterr().out
    assert "load: same inputs as job from-file" in out
    assert "measure: same inputs as job from-file" in out  # another threshold: only clustered again
    assert "cluster: same inputs" not in out
    # a finished job's own weights: analysed again at other points, no retraining
    assert cli.main(["run", str(job("again", Path(first.uri), **{"measure.points": ["blocks.0.mlp.hidden"]}))]) == 0
    out = capsys.readouterr().out
    assert "(job tiny-" in out and "measure: 1 points" in out


def test_weights_from_the_bucket_a_file_or_a_finished_job(s3_server, tmp_path, monkeypatch):
    """model.weights: s3://bucket/key.pth, or s3://bucket/prefix/<job-id> (a finished job's weights),
    read through the store's filesystem with the environment's credentials and endpoint."""
    import uuid

    from snp_service.pipeline import Checkpoint
    from snp_service.spec import StorageSpec, spec_from_dict
    from snp_service.store import Store

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    prefix = f"weights-{uuid.uuid4().hex[:8]}"
    bucket = Store.from_spec(StorageSpec(root=f"s3://snp-test/{prefix}", endpoint=s3_server.endpoint))
    state = _small().build(4, 32).state_dict()
    bucket.job("files").write_bytes("model.pth", _bytes({"state_dict": state}))
    finished = bucket.job("tiny-0123456789ab")
    finished.write_torch("model/weights.pt", state)
    finished.write_manifest({"status": "complete"})  # a finished job: its manifest vouches for its weights
    for weights, is_job in ((f"s3://snp-test/{prefix}/files/model.pth", False),
                            (f"s3://snp-test/{prefix}/tiny-0123456789ab", True)):
        job = tiny_job(tmp_path)
        job.pop("train")
        job["model"] = {**job["model"], "weights": weights}
        spec = spec_from_dict(job)
        ckpt = Checkpoint.read(spec)
        assert ckpt.finished_job is is_job
        loaded = ckpt.fitted(spec, 4)
        assert all(torch.equal(loaded[k], v) for k, v in state.items())


# --- issue 30: a file the service reads is checked for type, size and content before it is trusted

_READ_WEIGHTS = """
import sys
from snp_service.errors import StoreError
from snp_service.store import read_weights
try:
    read_weights(sys.argv[1], None, 8 * 2**30)
except StoreError as e:
    print(e)
    sys.exit(3)
"""


def _limit_memory():  # a regression reads the file whole: let it fail in the child, not take the host
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))


@pytest.mark.parametrize("kind, make, message", [
    ("a link to /dev/zero", lambda p: p.symlink_to("/dev/zero"), "not a regular file (a device)"),
    ("a FIFO", lambda p: __import__("os").mkfifo(p), "not a regular file (a FIFO)"),
    ("a 40 GB sparse file", lambda p: __import__("os").truncate(p.open("wb").name, 40 * 2**30), "over the limit"),
])
def test_weights_that_are_not_a_bounded_regular_file_are_refused_before_reading(tmp_path, kind, make, message):
    import subprocess
    import sys

    path = tmp_path / "model.pth"
    make(path)
    done = subprocess.run([sys.executable, "-c", _READ_WEIGHTS, str(path)], capture_output=True, text=True,
                          timeout=60, preexec_fn=_limit_memory, cwd=REPO)
    assert done.returncode == 3, f"{kind}: {done.stdout}{done.stderr[-2000:]}"
    assert message in done.stdout and "Traceback" not in done.stderr


def test_a_zip_that_inflates_far_beyond_its_size_is_refused_before_torch_load():
    import zipfile

    plain = _bytes({"w": torch.zeros(16 * 2**20)})  # 64 MiB of zeros, stored as torch.save does
    bomb = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain)) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert len(bomb.getvalue()) < len(plain) / 100
    with pytest.raises(CheckpointError, match="bomb.pth: its records inflate to 67,1.* as a decompression bomb"):
        read_state_dict(bomb.getvalue(), "bomb.pth")
    with pytest.raises(CheckpointError, match="limits: 1,000 bytes"):  # the absolute limit, for stored records
        read_state_dict(_bytes(_small().build(4, 32).state_dict()), "big.pth", limit=1000)


def _altered(key: str, change) -> bytes:
    state = _small().build(4, 32).state_dict()
    state[key] = change(state[key].clone())
    return _bytes(state)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.index_fill_(0, torch.tensor([0]), float("nan")), "NaN or infinite values: fc.weight (32 of 128)"),
    (lambda t: t.fill_(float("inf")), "NaN or infinite values: fc.weight"),
    (lambda t: t.to(torch.complex64), "fc.weight complex (torch.complex64) where the model has real"),
    (lambda t: t.bool(), "fc.weight boolean (torch.bool) where the model has real"),
    (lambda t: t.to(torch.int64), "fc.weight integer (torch.int64) where the model has real"),
    (lambda t: t.to_sparse(), "sparse tensors: fc.weight"),
    (lambda t: t.to("meta"), "meta tensors (shapes without values): fc.weight"),
])
def test_weights_whose_values_the_model_cannot_take_are_refused_naming_the_tensor(change, message):
    with pytest.raises(CheckpointError) as e:
        load_weights(_small().build(4, 32), _altered("fc.weight", change), "ckpt.pth", "auto", 4, 32)
    assert str(e.value).startswith("ckpt.pth: ") and message in str(e.value)


def test_integer_buffers_and_half_precision_weights_still_load():
    src = ModelSpec(name="vgg11_bn").build(4, 32)  # BatchNorm's num_batches_tracked is int64
    dst = ModelSpec(name="vgg11_bn").build(4, 32)
    load_weights(dst, _bytes(src.state_dict()), "vgg.pth", "auto", 4, 32)
    half = {k: v.half() if v.is_floating_point() else v for k, v in _small().build(4, 32).state_dict().items()}
    load_weights(_small().build(4, 32), _bytes(half), "half.pth", "auto", 4, 32)


def test_a_finished_job_is_taken_as_weights_only_when_its_manifest_vouches_for_them(tmp_path):
    from snp_service.errors import DamagedError
    from snp_service.spec import StorageSpec
    from snp_service.store import Store, read_weights

    job = Store.from_spec(StorageSpec(root=str(tmp_path))).job("done-0123456789ab")
    job.write_torch("model/weights.pt", _small().build(4, 32).state_dict())
    job.write_manifest({"status": "complete"})
    data, source, finished = read_weights(job.base, None, 2**30)
    assert finished and data == (tmp_path / job.job_id / "model" / "weights.pt").read_bytes()
    weights = tmp_path / job.job_id / "model" / "weights.pt"
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, other content
    weights.write_bytes(bytes(flipped))
    with pytest.raises(DamagedError, match="weights.pt is damaged"):
        read_weights(job.base, None, 2**30)
    weights.write_bytes(data)
    (tmp_path / job.job_id / "manifest.json").write_text('{"job_id": "done-01')  # a truncated manifest
    with pytest.raises(DamagedError, match="is not intact"):
        read_weights(job.base, None, 2**30)
