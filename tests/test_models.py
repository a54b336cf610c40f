"""Every registered variant: forward, backward, shapes, no NaNs, and measurement points (timm style)."""

import pytest
import torch

from snp_service.models import TextConfig, list_models, measurement_points, model_config
from snp_service.spec import ModelSpec


def _img_size(name: str) -> int:
    return getattr(model_config(name), "img_size", 32)


def _model_and_input(name: str, size: int):
    """The model with an input it takes: images, or for a text model word ids (one row padded)."""
    if isinstance(model_config(name), TextConfig):
        x = torch.randint(1, 50, (2, size))
        x[1, size // 3:] = 0
        return ModelSpec(name=name).build(num_classes=7, img_size=size, vocab_size=50), x
    return ModelSpec(name=name).build(num_classes=7, img_size=size), torch.randn(2, 3, size, size)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_and_points(name):
    torch.manual_seed(0)
    size = _img_size(name)
    model, x = _model_and_input(name, size)
    captured = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: captured.__setitem__(n, out.detach()))
             for n, m in model.point_modules().items()]
    out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

    info = measurement_points(model_config(name), size)
    assert list(captured) == list(info), "module points and registry metadata must agree, in forward order"
    for pname, act in captured.items():
        p = info[pname]
        if act.ndim == 4:  # (B, C, H, W)
            assert act.shape[1] == p.nodes and act.shape[2] * act.shape[3] == p.positions, pname
        else:  # (B, tokens, nodes)
            assert act.shape[1:] == (p.positions, p.nodes), pname


def test_cct7_parameter_count_matches_published():
    model = ModelSpec(name="cct_7_3x1_32").build(num_classes=10, img_size=32)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 3.76


def test_overrides_change_width_and_heads():
    spec = ModelSpec(name="cct_2_3x2_32", num_heads=4, embedding_dim=64, num_layers=3)
    model = spec.build(num_classes=5, img_size=32)
    assert len(model.blocks) == 3 and model.blocks[0].attn.num_heads == 4
    pts = measurement_points(spec.config(), 32)
    assert pts["blocks.2.attn.heads"].heads == 4 and pts["blocks.2.out"].nodes == 64


@pytest.mark.parametrize("pos", ["learnable", "sine", "none"])
def test_sdpa_matches_reference_attention(pos):
    torch.manual_seed(0)
    ref = ModelSpec(name="cct_2_3x2_32", attention="reference", positional_embedding=pos).build(10, 32)
    fast = ModelSpec(name="cct_2_3x2_32", attention="sdpa", positional_embedding=pos).build(10, 32)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), ref.eval()(x), atol=1e-4, rtol=0)


def test_block_applies_norm1_to_residual_stream():
    """METHOD.md 5: x = x + attn(pre_norm(x)); x = norm1(x); x = x + mlp(x)."""
    torch.manual_seed(0)
    model = ModelSpec(name="cct_2_3x2_32", stochastic_depth=0.0).build(10, 32).eval()
    blk = model.blocks[0]
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        h = blk.norm1(x + blk.attn(blk.pre_norm(x)))
        expected = h + blk.mlp.linear2(torch.nn.functional.gelu(blk.mlp.linear1(h)))
        torch.testing.assert_close(blk(x), expected)


def test_every_registered_family_has_a_builder_and_rules_of_its_own():
    """issue 28 item 2: families behind one interface, each with its builder registered where its
    network is defined; a family that lacks one is an error, never another family's default."""
    from snp_service.models import BUILDERS, REGISTRY, ModelFamily, create_model, measurement_points

    create_model("cct_2_3x2_32", 10, 32)  # imports the network modules, which register their builders
    for name, cfg in REGISTRY.items():
        assert isinstance(cfg, ModelFamily) and cfg.family in BUILDERS, name
        assert cfg.family_label in ("CCT", "text CCT", "text transformer", "CNN", "ViT")
        assert measurement_points(cfg, cfg.default_input_size), name
        assert cfg.input_problem(cfg.default_input_size, name) is None, name

    class Bare(ModelFamily):
        family = "bare"

    with pytest.raises(NotImplementedError, match="does not list its measurement points"):
        measurement_points(Bare(), 32)
    with pytest.raises(NotImplementedError, match="input-size rule"):
        Bare().input_problem(32, "bare")


def test_a_family_without_a_builder_is_refused(monkeypatch):
    from dataclasses import replace

    from snp_service.models import REGISTRY, create_model

    monkeypatch.setitem(REGISTRY, "odd", replace(REGISTRY["vgg11_bn"], family="odd"))
    with pytest.raises(ValueError, match="model family 'odd' of odd has no registered builder"):
        create_model("odd", 10, 32)


def test_no_module_outside_the_models_switches_on_a_config_type():
    """The families' rules live in snp_service/models; the spec, the studies and the CLI ask the
    family (cfg.text, cfg.cct, cfg.points, cfg.input_problem, cfg.family_label)."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "snp_service"
    names = ("CCTConfig", "TextConfig", "VGGConfig", "TorchvisionConfig")
    offenders = [f"{f.relative_to(package)}: {n}" for f in package.rglob("*.py") if f.parent.name != "models"
                 for n in names if n in f.read_text()]
    assert not offenders, offenders
