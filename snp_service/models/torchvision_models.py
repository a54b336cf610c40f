"""torchvision classification models with the service's measurement points (registry:
TorchvisionConfig). The network is torchvision's own, so its state_dict keys are torchvision's and
a torchvision state_dict file loads as it is.

Heads at a ViT's attention: nn.MultiheadAttention computes its heads inside one functional call and
applies the output projection there, so no module sees the concatenated head outputs. A forward hook
on each self_attention recomputes them from the same input and weights (in-projection, scaled
dot-product attention per head, heads concatenated) and passes them through an identity probe
`<block>.self_attention.heads`, whose output capture hooks read. It runs only while the probe is
hooked; a test checks that the probe's output through the module's own output projection gives the
module's output to 1e-5."""

from __future__ import annotations

import types

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from snp_service.models.registry import TorchvisionConfig, register_builder


def concatenated_heads(mha: nn.MultiheadAttention, x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, T, D): every head's attention output (attn @ v), concatenated, before out_proj
    (self-attention, batch_first, no mask; dropout as the module is in eval mode)."""
    b, t, d = x.shape
    h = mha.num_heads
    q, k, v = F.linear(x, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=mha.dropout if mha.training else 0.0)
    return out.transpose(1, 2).reshape(b, t, d)


def _probe_hook(probe: nn.Module):
    def hook(mha, args, _output):
        if probe._forward_hooks:  # somebody is capturing this point
            probe(concatenated_heads(mha, args[0]))
    return hook


@register_builder("torchvision")
def build(cfg: TorchvisionConfig, num_classes: int, img_size: int, vocab_size: int | None = None,
          options: dict | None = None) -> nn.Module:
    """torchvision's network (`options` are the CCTs' and do not apply)."""
    builder = getattr(torchvision.models, cfg.arch)
    model = builder(num_classes=num_classes, image_size=img_size) if cfg.kind == "vit" else builder(num_classes=num_classes)
    if cfg.kind == "vit":
        for layer in model.encoder.layers:
            probe = nn.Identity()  # no parameters: the state_dict stays torchvision's
            layer.self_attention.heads = probe
            layer.self_attention.register_forward_hook(_probe_hook(probe))
    paths = {name: path for name, path, *_ in cfg.point_table}

    def point_modules(self) -> dict[str, nn.Module]:
        return {name: self.get_submodule(path) for name, path in paths.items()}

    model.point_modules = types.MethodType(point_modules, model)
    model.name = cfg.arch
    return model
