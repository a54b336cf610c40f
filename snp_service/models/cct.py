"""Compact convolutional transformer, as published by its authors (SHI-Labs Compact-Transformers).

Read top to bottom it is the paper's diagram: a conv tokenizer, encoder blocks, a final LayerNorm,
sequence pooling and a Linear classifier. Two identity modules mark measurement points that are
not module outputs in the original code: `attn.heads` (concatenated head outputs, before the
output projection) and `mlp.hidden` (GELU(linear1(x))). They change nothing numerically.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from snp_service.models.registry import CCTConfig, register_builder


class Tokenizer(nn.Module):
    """[Conv2d(bias=False) -> ReLU -> MaxPool(3, 2, 1)] x n_conv_layers, flattened to tokens."""

    def __init__(self, cfg: CCTConfig, in_channels: int = 3, in_planes: int = 64):
        super().__init__()
        widths = [in_channels] + [in_planes] * (cfg.n_conv_layers - 1) + [cfg.embedding_dim]
        self.conv_layers = nn.Sequential(*[
            nn.Sequential(
                nn.Conv2d(widths[i], widths[i + 1], cfg.kernel_size, cfg.stride, cfg.padding, bias=False),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            for i in range(cfg.n_conv_layers)
        ])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_layers(x).flatten(2).transpose(1, 2)  # (B, tokens, D)


class Attention(nn.Module):
    """Multi-head self-attention with fused qkv (no bias) and a projection, as in the CCT code."""

    def __init__(self, dim: int, num_heads: int, attention_dropout: float, projection_dropout: float,
                 kind: str = "sdpa"):
        super().__init__()
        self.num_heads, self.kind = num_heads, kind
        self.head_dim = dim // num_heads  # stays fixed when heads are removed (snp_service.structural)
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.heads = nn.Identity()  # measurement point: concatenated head outputs (attn @ v)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(projection_dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`key_mask` (B, N) bool, True where a token takes part: padding (text) is no key of any query."""
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        if self.kind == "reference":  # the published formulation, kept as the benchmark baseline
            scores = q @ k.transpose(-2, -1) * self.scale
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = self.attn_drop(scores.softmax(dim=-1)) @ v
        else:
            p = self.attn_drop.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)
        out = self.heads(out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))
        return self.proj_drop(self.proj(out))


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class MLP(nn.Module):
    """linear2(dropout(gelu(linear1(x)))); `hidden` marks the FF measurement point."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.hidden = nn.Identity()  # measurement point: FF hidden units
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(self.hidden(self.act(self.linear1(x)))))


class EncoderBlock(nn.Module):
    """x = x + drop_path(attn(pre_norm(x))); x = norm1(x); x = x + drop_path(mlp(x)).

    norm1 is applied to the residual stream itself, exactly as in the authors' code.
    """

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, dropout: float, attention_dropout: float,
                 drop_path: float, attention: str):
        super().__init__()
        self.pre_norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, attention_dropout, dropout, attention)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden, dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.pre_norm(x), key_mask))
        x = self.norm1(x)
        return x + self.drop_path(self.dropout2(self.mlp(x)))


def sine_embedding(n_tokens: int, dim: int) -> torch.Tensor:
    pos = torch.arange(n_tokens, dtype=torch.float32)[:, None]
    i = torch.arange(dim, dtype=torch.float32)[None, :]
    angle = pos / torch.pow(10000.0, 2 * (i // 2) / dim)
    pe = torch.where(i % 2 == 0, torch.sin(angle), torch.cos(angle))
    return pe[None]


class SeqPool(nn.Module):
    """Sequence pooling: a softmax-weighted average of the tokens (weights from one Linear); tokens
    outside `mask` (B, N) bool (padding) get no weight."""

    def __init__(self, dim: int):
        super().__init__()
        self.attention_pool = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.attention_pool(x)
        if mask is not None:
            logits = logits.masked_fill(~mask[:, :, None], float("-inf"))
        w = logits.softmax(dim=1)  # (B, N, 1)
        return (w.transpose(1, 2) @ x).squeeze(1)


def point_modules(conv_layers: nn.ModuleList, blocks: nn.ModuleList) -> dict[str, nn.Module]:
    """A CCT's measurement points, name -> module whose output is the point's activation: the names
    and kinds every CCT shares (vision and text), so the analysis runs on either unchanged."""
    pts: dict[str, nn.Module] = {f"tokenizer.{i}": m for i, m in enumerate(conv_layers)}
    for i, blk in enumerate(blocks):
        pts[f"blocks.{i}.attn.heads"] = blk.attn.heads
        pts[f"blocks.{i}.mlp.hidden"] = blk.mlp.hidden
        pts[f"blocks.{i}.out"] = blk
    return pts


def add_positional_embedding(module: nn.Module, kind: str, n_tok: int, d: int) -> None:
    """`module.positional_emb` of (1, n_tok, d): a learnable parameter (truncated normal, std 0.2), a
    fixed sine table (a buffer, not saved), or None (the CCT authors' three choices)."""
    if kind == "learnable":
        module.positional_emb = nn.Parameter(torch.zeros(1, n_tok, d))
        nn.init.trunc_normal_(module.positional_emb, std=0.2)
    elif kind == "sine":
        module.register_buffer("positional_emb", sine_embedding(n_tok, d), persistent=False)
    else:
        module.positional_emb = None


def init_weights(m: nn.Module) -> None:
    """The CCT authors' initialisation: truncated-normal linear weights (std 0.02), zero biases, unit
    LayerNorms (the text CCT uses it too)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class CCT(nn.Module):
    def __init__(self, cfg: CCTConfig, num_classes: int, img_size: int, positional_embedding: str = "learnable",
                 attention: str = "sdpa", dropout: float = 0.0, attention_dropout: float = 0.1,
                 stochastic_depth: float = 0.1):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        d = cfg.embedding_dim
        self.tokenizer = Tokenizer(cfg)
        n_tok = cfg.sequence_length(img_size)
        add_positional_embedding(self, positional_embedding, n_tok, d)
        self.dropout = nn.Dropout(dropout)
        dpr = torch.linspace(0, stochastic_depth, cfg.num_layers).tolist()
        self.blocks = nn.ModuleList([
            EncoderBlock(d, cfg.num_heads, cfg.mlp_hidden, dropout, attention_dropout, dpr[i], attention)
            for i in range(cfg.num_layers)
        ])
        self.norm = nn.LayerNorm(d)
        self.pool = SeqPool(d)
        self.fc = nn.Linear(d, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tokenizer(x)
        if self.positional_emb is not None:
            x = x + self.positional_emb
        x = self.dropout(x)
        for blk in self.blocks:
            x = blk(x)
        return self.fc(self.pool(self.norm(x)))

    def point_modules(self) -> dict[str, nn.Module]:
        """Measurement point name -> module whose output is the point's activation."""
        return point_modules(self.tokenizer.conv_layers, self.blocks)


@register_builder("cct")
def build_cct(cfg: CCTConfig, num_classes: int, img_size: int, vocab_size: int | None, options: dict) -> CCT:
    return CCT(cfg, num_classes, img_size, **options)
