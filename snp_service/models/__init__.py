"""Model registry, timm style: `create_model(name, num_classes, img_size, **options)` and
`list_models()`. The package knows nothing of the job spec (`ModelSpec.build` calls this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snp_service.models.registry import (
    REGISTRY,
    CCTConfig,
    PointInfo,
    TextConfig,
    TorchvisionConfig,
    VGGConfig,
    list_models,
    measurement_points,
    model_config,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = ["REGISTRY", "CCTConfig", "TextConfig", "VGGConfig", "TorchvisionConfig", "PointInfo", "create_model", "list_models",
           "measurement_points", "model_config"]


def create_model(name: str, num_classes: int, img_size: int, *, num_heads: int | None = None,
                 num_layers: int | None = None, embedding_dim: int | None = None, mlp_ratio: float | None = None,
                 positional_embedding: str = "learnable", attention: str = "sdpa", dropout: float = 0.0,
                 attention_dropout: float = 0.1, stochastic_depth: float = 0.1,
                 vocab_size: int | None = None) -> nn.Module:
    """A registered variant by name; the shape overrides apply to CCTs (VGGs take none). A text model
    reads `img_size` as its sequence length and needs `vocab_size` (its word embedding's rows)."""
    # the networks import torch: imported here so that the registry (and `snp-service validate`,
    # which imports it through the spec) stays free of torch
    from snp_service.models import torchvision_models
    from snp_service.models.cct import CCT
    from snp_service.models.text import TextTransformer
    from snp_service.models.vgg import VGG

    cfg = model_config(name, num_heads=num_heads, num_layers=num_layers, embedding_dim=embedding_dim,
                       mlp_ratio=mlp_ratio)
    if isinstance(cfg, TorchvisionConfig):
        return torchvision_models.build(cfg, num_classes, img_size)
    if isinstance(cfg, TextConfig):
        if vocab_size is None:
            raise ValueError(f"{name} is a text model: it needs vocab_size")
        return TextTransformer(cfg, num_classes, img_size, vocab_size, positional_embedding, attention, dropout,
                               attention_dropout, stochastic_depth)
    if isinstance(cfg, CCTConfig):
        return CCT(cfg, num_classes, img_size, positional_embedding, attention, dropout, attention_dropout,
                   stochastic_depth)
    return VGG(cfg, num_classes)
