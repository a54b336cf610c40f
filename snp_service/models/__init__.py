"""Model registry: `create_model(spec, num_classes)` and `list_models()`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snp_service.models.registry import (
    REGISTRY,
    CCTConfig,
    PointInfo,
    VGGConfig,
    list_models,
    measurement_points,
    model_config,
)

if TYPE_CHECKING:
    from torch import nn

    from snp_service.spec import ModelSpec

__all__ = ["REGISTRY", "CCTConfig", "VGGConfig", "PointInfo", "create_model", "list_models",
           "measurement_points", "model_config"]


def create_model(spec: ModelSpec, num_classes: int, img_size: int) -> nn.Module:
    cfg = spec.config()
    if isinstance(cfg, CCTConfig):
        from snp_service.models.cct import CCT

        return CCT(cfg, num_classes, img_size, spec.positional_embedding, spec.attention,
                   spec.dropout, spec.attention_dropout, spec.stochastic_depth)
    from snp_service.models.vgg import VGG

    return VGG(cfg, num_classes)
