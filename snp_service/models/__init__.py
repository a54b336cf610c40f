"""Model registry, timm style: `create_model(name, num_classes, img_size, **options)` and
`list_models()`. The package knows nothing of the job spec (`ModelSpec.build` calls this)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snp_service.models.registry import (
    BUILDERS,
    REGISTRY,
    CCTConfig,
    ModelFamily,
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

__all__ = ["REGISTRY", "ModelFamily", "CCTConfig", "TextConfig", "VGGConfig", "TorchvisionConfig", "PointInfo", "create_model", "list_models",
           "measurement_points", "model_config"]


def create_model(name: str, num_classes: int, img_size: int, *, num_heads: int | None = None,
                 num_layers: int | None = None, embedding_dim: int | None = None, mlp_ratio: float | None = None,
                 positional_embedding: str = "learnable", attention: str = "sdpa", dropout: float = 0.0,
                 attention_dropout: float = 0.1, stochastic_depth: float = 0.1,
                 vocab_size: int | None = None) -> nn.Module:
    """A registered variant by name; the shape overrides apply to CCTs (VGGs take none). A text model
    reads `img_size` as its sequence length and needs `vocab_size` (its word embedding's rows)."""
    # the network modules register their families' builders on import (register_builder); imported
    # here so that the registry (and `snp-service validate`, which imports it through the spec) stays
    # free of torch
    from snp_service.models import cct, text, torchvision_models, vgg  # noqa: F401

    cfg = model_config(name, num_heads=num_heads, num_layers=num_layers, embedding_dim=embedding_dim,
                       mlp_ratio=mlp_ratio)
    if cfg.family not in BUILDERS:
        raise ValueError(f"model family {cfg.family!r} of {name} has no registered builder")
    if cfg.text and vocab_size is None:
        raise ValueError(f"{name} is a text model: it needs vocab_size")
    return BUILDERS[cfg.family](cfg, num_classes, img_size, vocab_size, {
        "positional_embedding": positional_embedding, "attention": attention, "dropout": dropout,
        "attention_dropout": attention_dropout, "stochastic_depth": stochastic_depth})
