"""Model variants by name (timm style) and their measurement points.

This module is pure metadata (no torch import) so that `snp-service validate` can check a job
file's model, shapes and measurement points quickly. `snp_service.models.create_model` builds
the network itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal

PointKind = Literal["conv", "ff", "mha", "block"]


@dataclass(frozen=True)
class CCTConfig:
    """Compact convolutional transformer (Hassani et al., SHI-Labs), METHOD.md section 5."""

    num_layers: int
    num_heads: int
    mlp_ratio: float
    embedding_dim: int
    kernel_size: int
    n_conv_layers: int
    img_size: int
    family: str = "cct"

    @property
    def stride(self) -> int:  # as in the authors' _cct(): max(1, k // 2 - 1)
        return max(1, self.kernel_size // 2 - 1)

    @property
    def padding(self) -> int:  # as in the authors' _cct(): max(1, k // 2)
        return max(1, self.kernel_size // 2)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embedding_dim * self.mlp_ratio)

    def tokenizer_sizes(self, img_size: int) -> list[int]:
        """Side length after each conv+maxpool stage of the tokenizer."""
        sizes, s = [], img_size
        for _ in range(self.n_conv_layers):
            s = (s + 2 * self.padding - self.kernel_size) // self.stride + 1  # conv
            s = (s + 2 * 1 - 3) // 2 + 1  # MaxPool2d(3, 2, 1)
            sizes.append(s)
        return sizes

    def sequence_length(self, img_size: int) -> int:
        return self.tokenizer_sizes(img_size)[-1] ** 2


@dataclass(frozen=True)
class VGGConfig:
    """VGG with batch norm, CIFAR form (features, global average pool, one Linear)."""

    layers: tuple[int | str, ...]
    family: str = "vgg"


_VGG_LAYERS = {
    "vgg11_bn": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16_bn": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}

# (layers, heads, mlp_ratio, width) of the authors' CCT sizes.
_CCT_SIZES = {2: (2, 2, 1.0, 128), 4: (4, 2, 1.0, 128), 6: (6, 4, 2.0, 256), 7: (7, 4, 2.0, 256), 14: (14, 6, 3.0, 384)}
# The authors' registered (size, kernel, n_conv, img) combinations.
_CCT_VARIANTS = [
    (2, 3, 2, 32), (4, 3, 2, 32), (6, 3, 1, 32), (6, 3, 2, 32), (7, 3, 1, 32), (7, 3, 2, 32),
    (7, 7, 2, 224), (14, 7, 2, 224), (14, 7, 2, 384),
]

REGISTRY: dict[str, CCTConfig | VGGConfig] = {}
for _size, _k, _n, _img in _CCT_VARIANTS:
    _l, _h, _m, _d = _CCT_SIZES[_size]
    REGISTRY[f"cct_{_size}_{_k}x{_n}_{_img}"] = CCTConfig(_l, _h, _m, _d, _k, _n, _img)
for _name, _layers in _VGG_LAYERS.items():
    REGISTRY[_name] = VGGConfig(_layers)


def list_models() -> list[str]:
    return sorted(REGISTRY)


def model_config(name: str, **overrides) -> CCTConfig | VGGConfig:
    """The registered config of `name` with non-None `overrides` applied."""
    if name not in REGISTRY:
        raise KeyError(name)
    cfg = REGISTRY[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(cfg, VGGConfig) and overrides:
        raise ValueError(f"VGG models take no overrides, got {sorted(overrides)}")
    return replace(cfg, **overrides)


@dataclass(frozen=True)
class PointInfo:
    """A measurement point: where activations are captured and what its nodes are.

    `nodes` is the number of channels (METHOD.md 2.2); `positions` the number of spatial positions
    or tokens each node has; `heads` the number of attention heads (MHA points only).
    """

    name: str
    kind: PointKind
    nodes: int
    positions: int
    heads: int | None = None


def measurement_points(cfg: CCTConfig | VGGConfig, img_size: int) -> dict[str, PointInfo]:
    """Every measurement point of a model, in forward order, by stable name."""
    points: list[PointInfo] = []
    if isinstance(cfg, CCTConfig):
        sizes = cfg.tokenizer_sizes(img_size)
        for i, s in enumerate(sizes):
            channels = cfg.embedding_dim if i == len(sizes) - 1 else 64
            points.append(PointInfo(f"tokenizer.{i}", "conv", channels, s * s))
        n_tok = sizes[-1] ** 2
        for m in range(cfg.num_layers):
            points.append(PointInfo(f"blocks.{m}.attn.heads", "mha", cfg.embedding_dim, n_tok, cfg.num_heads))
            points.append(PointInfo(f"blocks.{m}.mlp.hidden", "ff", cfg.mlp_hidden, n_tok))
            points.append(PointInfo(f"blocks.{m}.out", "block", cfg.embedding_dim, n_tok))
    else:
        s, idx, channels = img_size, 0, 3
        for v in cfg.layers:
            if v == "M":
                s //= 2
                points.append(PointInfo(f"features.{idx}", "conv", channels, s * s))
                idx += 1
            else:
                channels = int(v)
                points.append(PointInfo(f"features.{idx + 2}", "conv", channels, s * s))  # after ReLU
                idx += 3  # Conv2d, BatchNorm2d, ReLU
    return {p.name: p for p in points}


def match_points(available: dict[str, PointInfo], patterns: list[str]) -> dict[str, list[str]]:
    """For each pattern (`blocks.*.mlp.hidden`; `all`), the point names it selects."""
    out = {}
    for pat in patterns:
        if pat == "all":
            out[pat] = list(available)
            continue
        rx = re.compile("^" + re.escape(pat).replace(r"\*", r"[^.]+") + "$")
        out[pat] = [name for name in available if rx.match(name)]
    return out
