"""Model variants by name (timm style) and their measurement points.

This module is pure metadata (no torch import) so that `snp-service validate` can check a job
file's model, shapes and measurement points quickly. `snp_service.models.create_model` builds
the network itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

PointKind = Literal["conv", "ff", "mha", "block"]


class ModelFamily:
    """What every registered model family provides, defined where the family is (timm's way): its
    measurement points, its input-size rule and how tables name it; its network's builder registers
    itself under the family's name (`register_builder`, in the module that defines the network).
    Nothing else in the service switches on a config's type: a new family subclasses this, registers
    its variants in REGISTRY and its builder; a method or builder it lacks is an error, never another
    family's default.

    Capabilities: `text` (reads word ids from a text dataset, else images); `cct` (CCT encoder blocks:
    shape overrides, head-count studies, structural pruning of FF units and heads)."""

    family: str
    text: bool = False
    cct: bool = False

    @property
    def default_input_size(self) -> int:
        """The input size `snp-service models` lists points at."""
        return 32

    @property
    def family_label(self) -> str:
        raise NotImplementedError(f"{type(self).__name__} does not say how tables name its family")

    def points(self, input_size: int) -> list[PointInfo]:
        """Every measurement point, in forward order, at this input size (image side or sequence length)."""
        raise NotImplementedError(f"{type(self).__name__} does not list its measurement points")

    def input_problem(self, input_size: int, name: str) -> str | None:
        """Why `input_size` does not suit this model (a message naming the field), or None."""
        raise NotImplementedError(f"{type(self).__name__} does not state its input-size rule")


# family name -> builder(cfg, num_classes, input_size, vocab_size, options) -> nn.Module; filled by the
# network modules (cct, text, vgg, torchvision_models) as they are imported (snp_service.models.create_model)
BUILDERS: dict[str, Callable] = {}


def register_builder(*families: str) -> Callable[[Callable], Callable]:
    """Decorator: the network builder of these families (written where the network is defined)."""
    def register(fn: Callable) -> Callable:
        for f in families:
            BUILDERS[f] = fn
        return fn
    return register


@dataclass(frozen=True)
class CCTConfig(ModelFamily):
    """Compact convolutional transformer (Hassani et al., SHI-Labs), METHOD.md section 5."""

    num_layers: int
    num_heads: int
    mlp_ratio: float
    embedding_dim: int
    kernel_size: int
    n_conv_layers: int
    img_size: int
    family: str = "cct"
    cct = True

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

    @property
    def default_input_size(self) -> int:
        return self.img_size  # the variant's own image size (a text CCT's: its sequence length)

    @property
    def family_label(self) -> str:
        """How tables and figures name the family (the unified study's `family` column)."""
        return {"cct": "CCT", "text_cct": "text CCT", "text_transformer": "text transformer"}[self.family]

    def points(self, input_size: int) -> list[PointInfo]:
        # the vision CCT's tokenizer stages are 2-D maps (64 channels but the last), the text CCT's sequences
        sizes = self.tokenizer_sizes(input_size)
        out = []
        for i, s in enumerate(sizes):
            channels = self.embedding_dim if self.text or i == len(sizes) - 1 else 64
            out.append(PointInfo(f"tokenizer.{i}", "conv", channels, s if self.text else s * s))
        n_tok = self.sequence_length(input_size)
        for m in range(self.num_layers):
            out.append(PointInfo(f"blocks.{m}.attn.heads", "mha", self.embedding_dim, n_tok, self.num_heads))
            out.append(PointInfo(f"blocks.{m}.mlp.hidden", "ff", self.mlp_hidden, n_tok))
            out.append(PointInfo(f"blocks.{m}.out", "block", self.embedding_dim, n_tok))
        return out

    def input_problem(self, input_size: int, name: str) -> str | None:
        if self.tokenizer_sizes(input_size)[-1] < 1:
            return f"image_size {input_size} is too small for {name}'s tokenizer"
        return None


@dataclass(frozen=True)
class TextConfig(CCTConfig):
    """A transformer over word ids (issue 32): the CCT authors' text CCT (word embedding of
    `word_embedding_dim`, n_conv_layers x [Conv1d(k, stride, padding as the vision CCT) -> ReLU ->
    MaxPool1d(2, 2, 1)], the vision CCT's encoder blocks, sequence pooling), or with n_conv_layers 0
    a plain pre-norm transformer encoder of the same width over the embedded words (`family`
    text_transformer). `img_size` is the sequence length (dataset.max_length): a CCTConfig in every
    other respect (shape overrides, heads, structural pruning)."""

    word_embedding_dim: int = 300
    family: str = "text_cct"
    text = True
    pool_kernel: int = 2  # the authors' TextCCT pooling: MaxPool(2, 2, 1)
    pool_stride: int = 2
    pool_padding: int = 1

    def conv_length(self, n: int) -> int:
        return (n + 2 * self.padding - self.kernel_size) // self.stride + 1

    def pool_length(self, n: int) -> int:
        return (n + 2 * self.pool_padding - self.pool_kernel) // self.pool_stride + 1

    def tokenizer_sizes(self, img_size: int) -> list[int]:
        """Sequence length after each conv+pool stage, from `img_size` words (the same rule gives a
        text's own length from its unpadded word count: snp_service.models.text)."""
        sizes, s = [], img_size
        for _ in range(self.n_conv_layers):
            s = self.pool_length(self.conv_length(s))
            sizes.append(s)
        return sizes

    def sequence_length(self, img_size: int) -> int:
        return self.tokenizer_sizes(img_size)[-1] if self.n_conv_layers else img_size

    def input_problem(self, input_size: int, name: str) -> str | None:
        if self.n_conv_layers and self.tokenizer_sizes(input_size)[-1] < 1:
            return f"dataset.max_length {input_size} is too short for {name}"
        return None


@dataclass(frozen=True)
class VGGConfig(ModelFamily):
    """VGG with batch norm, CIFAR form (features, global average pool, one Linear)."""

    layers: tuple[int | str, ...]
    family: str = "vgg"

    @property
    def family_label(self) -> str:
        return "CNN"

    def points(self, input_size: int) -> list[PointInfo]:
        out, s, idx, channels = [], input_size, 0, 3
        for v in self.layers:
            if v == "M":
                s //= 2
                out.append(PointInfo(f"features.{idx}", "conv", channels, s * s))
                idx += 1
            else:
                channels = int(v)
                out.append(PointInfo(f"features.{idx + 2}", "conv", channels, s * s))  # after ReLU
                idx += 3  # Conv2d, BatchNorm2d, ReLU
        return out

    def input_problem(self, input_size: int, name: str) -> str | None:
        return f"{name} needs image_size >= 32 (five 2x poolings)" if input_size < 32 else None


@dataclass(frozen=True)
class TorchvisionConfig(ModelFamily):
    """A torchvision classification model by its builder name (torchvision.models.<arch>), random init
    or a state_dict file (model.weights). Measurement points are module paths plus a kind:
    (point name, module path, kind, nodes, stride): a conv point has (size / stride)^2 positions; a
    ViT point has (size / patch)^2 + 1 tokens (with the class token). A ViT's MHA point is a probe
    that receives the concatenated head outputs before the output projection (nn.MultiheadAttention
    does not expose them to hooks; snp_service.models.torchvision_models computes them)."""

    arch: str
    point_table: tuple[tuple[str, str, str, int, int], ...]
    kind: Literal["cnn", "vit"] = "cnn"
    num_heads: int | None = None
    patch: int = 16
    family: str = "torchvision"

    @property
    def family_label(self) -> str:
        return "ViT" if self.kind == "vit" else "CNN"

    @property
    def multiple(self) -> int:
        """image_size must be a multiple of this (32 for the CNNs' five halvings; the ViT's patch)."""
        return self.patch if self.kind == "vit" else 32

    def points(self, input_size: int) -> list[PointInfo]:
        tokens = (input_size // self.patch) ** 2 + 1
        return [PointInfo(name, kind, nodes, tokens if self.kind == "vit" else max(1, input_size // stride) ** 2,
                          self.num_heads if kind == "mha" else None)
                for name, _path, kind, nodes, stride in self.point_table]

    def input_problem(self, input_size: int, name: str) -> str | None:
        if input_size % self.multiple:
            return (f"{name} needs an image_size that is a multiple of {self.multiple} "
                    f"({'its patch size' if self.kind == 'vit' else 'five 2x halvings'}), not {input_size}")
        return None


def _resnet(arch: str, widths: tuple[int, int, int, int]) -> TorchvisionConfig:
    return TorchvisionConfig(arch, tuple((f"layer{i + 1}", f"layer{i + 1}", "conv", w, 4 * 2 ** i)
                                         for i, w in enumerate(widths)))


def _tv_vgg(arch: str, layers: tuple) -> TorchvisionConfig:
    pts, idx, channels, stride = [], 0, 3, 1
    for v in layers:
        if v == "M":
            stride *= 2
            pts.append((f"features.{idx}", f"features.{idx}", "conv", channels, stride))
            idx += 1
        else:
            channels = int(v)
            idx += 3  # Conv2d, BatchNorm2d, ReLU
    return TorchvisionConfig(arch, tuple(pts))


def _vit(arch: str, layers: int, heads: int, width: int, mlp: int, patch: int) -> TorchvisionConfig:
    pts = []
    for i in range(layers):
        block = f"encoder.layers.encoder_layer_{i}"
        pts += [(f"{block}.self_attention.heads", f"{block}.self_attention.heads", "mha", width, 0),
                (f"{block}.mlp.hidden", f"{block}.mlp.1", "ff", mlp, 0),  # after GELU
                (f"{block}.out", block, "block", width, 0)]
    return TorchvisionConfig(arch, tuple(pts), kind="vit", num_heads=heads, patch=patch)


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

REGISTRY: dict[str, ModelFamily] = {}
for _size, _k, _n, _img in _CCT_VARIANTS:
    _l, _h, _m, _d = _CCT_SIZES[_size]
    REGISTRY[f"cct_{_size}_{_k}x{_n}_{_img}"] = CCTConfig(_l, _h, _m, _d, _k, _n, _img)
for _name, _layers in _VGG_LAYERS.items():
    REGISTRY[_name] = VGGConfig(_layers)
# torchvision's own models (ImageNet form); its VGGs as tv_* beside the CIFAR-form VGGs above
REGISTRY["resnet18"] = _resnet("resnet18", (64, 128, 256, 512))
REGISTRY["resnet34"] = _resnet("resnet34", (64, 128, 256, 512))
REGISTRY["resnet50"] = _resnet("resnet50", (256, 512, 1024, 2048))
REGISTRY["tv_vgg11_bn"] = _tv_vgg("vgg11_bn", _VGG_LAYERS["vgg11_bn"])
REGISTRY["tv_vgg16_bn"] = _tv_vgg("vgg16_bn", _VGG_LAYERS["vgg16_bn"])
REGISTRY["mobilenet_v3_small"] = TorchvisionConfig("mobilenet_v3_small", (
    ("features.1", "features.1", "conv", 16, 4), ("features.3", "features.3", "conv", 24, 8),
    ("features.8", "features.8", "conv", 48, 16), ("features.12", "features.12", "conv", 576, 32)))
REGISTRY["vit_b_16"] = _vit("vit_b_16", 12, 12, 768, 3072, 16)
# text (issue 32): the authors' text_cct_{2,4,6} with their kernel sizes (one conv layer, 300-wide word
# embedding, default sequence length 64), and a plain pre-norm transformer encoder at each size
for _size in (2, 4, 6):
    _l, _h, _m, _d = _CCT_SIZES[_size]
    for _k in (1, 2, 4):
        REGISTRY[f"text_cct_{_size}_k{_k}"] = TextConfig(_l, _h, _m, _d, _k, 1, 64)
    REGISTRY[f"text_transformer_{_size}"] = TextConfig(_l, _h, _m, _d, 1, 0, 64, word_embedding_dim=_d,
                                                       family="text_transformer")


def list_models() -> list[str]:
    return sorted(REGISTRY)


def model_config(name: str, **overrides) -> ModelFamily:
    """The registered config of `name` with non-None `overrides` applied."""
    if name not in REGISTRY:
        raise KeyError(name)
    cfg = REGISTRY[name]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not cfg.cct and overrides:
        raise ValueError(f"{name} takes no shape overrides (num_heads, num_layers, embedding_dim, mlp_ratio are for "
                         f"CCTs), got {sorted(overrides)}")
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


def measurement_points(cfg: ModelFamily, img_size: int) -> dict[str, PointInfo]:
    """Every measurement point of a model, in forward order, by stable name."""
    return {p.name: p for p in cfg.points(img_size)}


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
