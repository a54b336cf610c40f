"""torchvision classification models by name: the per-head capture at a ViT's attention equals the
module's own computation, torchvision state_dicts load as they are, and (slow) ResNet-18 and ViT-B/16
run through `snp-service run` with SNP and, for the ViT, heads in the results."""

import io

import polars as pl
import pytest
import torch
import torchvision
import yaml

from snp_service.checkpoints import load_weights
from snp_service.models.torchvision_models import concatenated_heads
from snp_service.spec import ModelSpec
from tests.conftest import tiny_job


def test_captured_heads_through_the_output_projection_give_the_modules_output():
    torch.manual_seed(0)
    model = ModelSpec(name="vit_b_16").build(10, 32).eval()
    block = model.encoder.layers.encoder_layer_3
    x = torch.randn(4, 5, 768)
    with torch.no_grad():
        heads = concatenated_heads(block.self_attention, x)
        own, _ = block.self_attention(x, x, x, need_weights=False)
        mha = block.self_attention
        torch.testing.assert_close(heads @ mha.out_proj.weight.T + mha.out_proj.bias, own, rtol=0, atol=1e-5)
    # the probe receives exactly these during a forward pass, and only while it is hooked
    got = []
    h = block.self_attention.heads.register_forward_hook(lambda _m, _i, out: got.append(out))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    h.remove()
    assert len(got) == 1 and got[0].shape == (2, 5, 768)
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(got) == 1


def test_a_torchvision_state_dict_loads_as_it_is():
    src = torchvision.models.resnet18(num_classes=4)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    dst = ModelSpec(name="resnet18").build(4, 32)
    load_weights(dst, buf.getvalue(), "resnet18.pth", "auto", 4, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src.eval()(x))


@pytest.mark.parametrize("name, size, message", [("resnet18", 40, "multiple of 32"), ("vit_b_16", 40, "multiple of 16")])
def test_image_sizes_the_network_cannot_take_are_refused(tmp_path, name, size, message):
    from snp_service.errors import SpecError
    from snp_service.spec import spec_from_dict

    job = tiny_job(tmp_path, **{"model": {"name": name}})
    job["dataset"]["image_size"] = size
    with pytest.raises(SpecError, match=message):
        spec_from_dict(job)


@pytest.mark.slow
@pytest.mark.parametrize("name, points", [
    ("resnet18", ["all"]),
    ("vit_b_16", ["encoder.layers.encoder_layer_0.*.heads", "encoder.layers.encoder_layer_0.mlp.hidden",
                  "encoder.layers.encoder_layer_0.out", "encoder.layers.encoder_layer_11.self_attention.heads"]),
])
def test_torchvision_models_run_through_the_service(tmp_path, ray_cluster, name, points):
    from snp_service import cli
    from snp_service.spec import load_spec
    from snp_service.store import Store

    job = tiny_job(tmp_path, **{"model": {"name": name}, "measure.points": points, "train.epochs": 1,
                                "analysis.readout_epochs": 2, "analysis.bootstrap": 50, "heads.null_draws": 200})
    job["dataset"]["synthetic"] = {**job["dataset"]["synthetic"], "train_per_class": 24, "test_per_class": 8}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert cli.main(["run", str(path)]) == 0
    store = Store.from_spec(load_spec(path).storage)
    job_store = store.job(store.job_ids()[0])
    layers = job_store.layers()
    assert len(layers) == 4 and layers["snr"].is_not_null().all() and layers["effect_size"].is_not_null().all()
    assert layers["label_specific_fraction"].is_between(0, 1).all()
    if name == "vit_b_16":
        heads = job_store.heads()
        assert heads["point"].to_list() == ["encoder.layers.encoder_layer_0.self_attention.heads",
                                            "encoder.layers.encoder_layer_11.self_attention.heads"]
        assert set(heads["heads"]) == {12}
        assert set(layers.filter(pl.col("kind") == "mha")["readout"]) == {"seqpool"}
    else:
        assert set(layers["readout"]) == {"flatten"}
