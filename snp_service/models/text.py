"""Transformers over word ids (issue 32): the CCT authors' text CCT and a plain pre-norm encoder.

Read top to bottom, the text CCT is the authors' TextCCT: a word embedding, a tokenizer of
[Conv1d over the embedded words -> ReLU -> MaxPool1d(2, 2, 1)] stages, the vision CCT's encoder
blocks (snp_service.models.cct, reused as they are), a final LayerNorm, sequence pooling and a Linear
classifier. The plain encoder replaces the conv tokenizer by nothing (the embedding is the width)
and the blocks by pre-norm ones (x + attn(LN(x)), x + mlp(LN(x))).

Padding (id PAD_ID at the end of a row) is masked, so a padded batch gives each text's unpadded
logits: the pad embedding is zero, as the conv's own zero padding; each tokenizer stage zeroes the
positions beyond the text's own length at that stage (computed by TextConfig's length rule, so a
pooling window never sees a padded position's value: after ReLU every value is >= 0, and a window
of a real position holds a real position); attention takes no padded key; sequence pooling gives
padding no weight. `position_masks` tells the capture (snp_service.readout) which positions of each
measurement point are real, so readouts and fields exclude padded ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from snp_service.models.cct import EncoderBlock, SeqPool, add_positional_embedding, init_weights, point_modules
from snp_service.models.registry import TextConfig, register_builder

PAD_ID = 0  # snp_service.text puts [PAD] first in every vocabulary


def valid_positions(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: position t < the row's length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class TextConvStage(nn.Module):
    """Conv1d(bias=False) -> ReLU -> MaxPool1d over a (B, T, C) sequence, positions beyond each row's
    length zeroed after the conv and after the pool. Output (B, T', D): a measurement point."""

    def __init__(self, cfg: TextConfig, in_channels: int):
        super().__init__()
        self.cfg = cfg
        self.conv = nn.Conv1d(in_channels, cfg.embedding_dim, cfg.kernel_size, cfg.stride, cfg.padding, bias=False)
        self.pool = nn.MaxPool1d(cfg.pool_kernel, cfg.pool_stride, cfg.pool_padding)
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(x.transpose(1, 2)))  # (B, D, T1)
        y = y * valid_positions(self.cfg.conv_length(lengths), y.shape[-1])[:, None, :]
        y = self.pool(y)
        y = y * valid_positions(self.cfg.pool_length(self.cfg.conv_length(lengths)), y.shape[-1])[:, None, :]
        return y.transpose(1, 2)


class PreNormBlock(EncoderBlock):
    """x = x + drop_path(attn(pre_norm(x))); x = x + drop_path(mlp(norm1(x))): the plain pre-norm encoder
    block, the CCT block's modules (same measurement points, same structural pruning) in pre-norm order."""

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.pre_norm(x), key_mask))
        return x + self.drop_path(self.dropout2(self.mlp(self.norm1(x))))


class TextTransformer(nn.Module):
    """The text CCT (cfg.n_conv_layers >= 1) or the plain pre-norm encoder (n_conv_layers 0)."""

    def __init__(self, cfg: TextConfig, num_classes: int, seq_len: int, vocab_size: int,
                 positional_embedding: str = "learnable", attention: str = "sdpa", dropout: float = 0.0,
                 attention_dropout: float = 0.1, stochastic_depth: float = 0.1):
        super().__init__()
        self.cfg, self.num_classes, self.seq_len, self.vocab_size = cfg, num_classes, seq_len, vocab_size
        d = cfg.embedding_dim
        self.embedder = nn.Embedding(vocab_size, cfg.word_embedding_dim, padding_idx=PAD_ID)
        widths = [cfg.word_embedding_dim] + [d] * cfg.n_conv_layers
        self.tokenizer = nn.Module()
        self.tokenizer.conv_layers = nn.ModuleList([TextConvStage(cfg, widths[i]) for i in range(cfg.n_conv_layers)])
        n_tok = cfg.sequence_length(seq_len)
        add_positional_embedding(self, positional_embedding, n_tok, d)
        self.dropout = nn.Dropout(dropout)
        block = EncoderBlock if cfg.n_conv_layers else PreNormBlock
        dpr = torch.linspace(0, stochastic_depth, cfg.num_layers).tolist()
        self.blocks = nn.ModuleList([block(d, cfg.num_heads, cfg.mlp_hidden, dropout, attention_dropout, dpr[i],
                                           attention) for i in range(cfg.num_layers)])
        self.norm = nn.LayerNorm(d)
        self.pool = SeqPool(d)
        self.fc = nn.Linear(d, num_classes)
        self.apply(init_weights)

    def lengths(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Each row's length (B,) at the input and after every tokenizer stage (rows padded at the end)."""
        out = [(ids != PAD_ID).sum(dim=1)]
        for _ in self.tokenizer.conv_layers:
            out.append(self.cfg.pool_length(self.cfg.conv_length(out[-1])))
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = self.lengths(ids)
        x = self.embedder(ids) * (ids != PAD_ID)[:, :, None]  # a zero pad embedding, whatever the weights say
        for stage, n in zip(self.tokenizer.conv_layers, lengths):
            x = stage(x, n)
        mask = valid_positions(lengths[-1], x.shape[1])
        if self.positional_emb is not None:
            x = x + self.positional_emb[:, :x.shape[1]]
        x = self.dropout(x)
        for blk in self.blocks:
            x = blk(x, mask)
        return self.fc(self.pool(self.norm(x), mask))

    def point_modules(self) -> dict[str, nn.Module]:
        """Measurement point name -> module whose output is the point's activation (as the vision CCT)."""
        return point_modules(self.tokenizer.conv_layers, self.blocks)

    def position_masks(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Point name -> (B, positions) bool, True at the text's own (unpadded) positions."""
        lengths = self.lengths(ids)
        sizes = self.cfg.tokenizer_sizes(ids.shape[1])
        masks = {f"tokenizer.{i}": valid_positions(lengths[i + 1], s) for i, s in enumerate(sizes)}
        final = valid_positions(lengths[-1], self.cfg.sequence_length(ids.shape[1]))
        for i in range(len(self.blocks)):
            masks.update({f"blocks.{i}.{p}": final for p in ("attn.heads", "mlp.hidden", "out")})
        return masks

    def example_input(self, batch: int) -> torch.Tensor:
        """Word ids of `batch` full-length texts (the cost utility's input: snp_service.structural)."""
        g = torch.Generator().manual_seed(0)
        return torch.randint(1, self.vocab_size, (batch, self.seq_len), generator=g)


@register_builder("text_cct", "text_transformer")
def build_text(cfg: TextConfig, num_classes: int, seq_len: int, vocab_size: int | None,
               options: dict) -> TextTransformer:
    return TextTransformer(cfg, num_classes, seq_len, vocab_size, **options)
