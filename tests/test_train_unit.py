"""Pieces of the training loop that do not need Ray: schedule, optimizer groups, mixup, precision."""

import pytest
import torch
from snp_service.spec import ModelSpec, spec_from_dict
from snp_service.train import batch_mixer, autocast_dtype, lr_factor, make_optimizer
from tests.conftest import tiny_job


def test_warmup_then_cosine_to_min():
    total, warm = 100, 10
    f = [lr_factor(s, total, warm, 0.01) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # non-increasing after warm-up
    assert f[-1] == pytest.approx(0.01)


def test_no_weight_decay_on_norms_biases_and_positions(tmp_path):
    spec = spec_from_dict(tiny_job(tmp_path))
    model = spec.model.build(4, 32)
    decay, no_decay = make_optimizer(model, spec.train).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == spec.train.weight_decay and no_decay["weight_decay"] == 0.0
    assert any("positional_emb" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim > 1 for p in decay["params"])


def test_mixup_gives_soft_targets(tmp_path):
    spec = spec_from_dict(tiny_job(tmp_path, dataset={**tiny_job(tmp_path)["dataset"],
                                                       "augment": {"mixup_alpha": 0.8, "cutmix_alpha": 1.0}}))
    mixer = batch_mixer(spec, 4)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    xm, target = mixer(x, y)
    assert xm.shape == x.shape and target.shape == (8, 4)
    torch.testing.assert_close(target.sum(1), torch.ones(8))
    assert batch_mixer(spec_from_dict(tiny_job(tmp_path)), 4) is None


def test_precision_choice():
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_bf16_autocast_forward_is_finite():
    model = ModelSpec(name="cct_2_3x2_32").build(10, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out.float()).all()


def test_the_injected_faults_fire_only_where_told(tmp_path):
    """tests/faults.py's hooks (the production loop calls hooks, knows no fault): a failure after its
    epoch alone; a kill halfway through its epoch, never once its marker exists; both survive the
    pickling that carries them to Ray Train's workers."""
    from ray import cloudpickle

    from snp_service.train import WorkerHook
    from tests.faults import FailAfterEpoch, KillMidEpoch

    fail = cloudpickle.loads(cloudpickle.dumps(FailAfterEpoch(1)))
    assert isinstance(fail, WorkerHook) and fail == FailAfterEpoch(1)
    fail.after_epoch(0)
    fail.before_step(1, 5, 10)
    with pytest.raises(RuntimeError, match="injected failure after epoch 1"):
        fail.after_epoch(1)
    marker = tmp_path / "killed"
    kill = cloudpickle.loads(cloudpickle.dumps(KillMidEpoch(1, str(marker))))
    for epoch, step in ((0, 5), (1, 4), (1, 6), (2, 5)):
        kill.before_step(epoch, step, 10)  # not halfway through epoch 1: the process lives on
    kill.after_epoch(1)
    marker.write_text("killed before\n")
    kill.before_step(1, 5, 10)  # halfway through epoch 1, but it already happened once
    assert marker.read_text() == "killed before\n"
