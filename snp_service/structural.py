"""Structural pruning of a CCT (beyond the paper, METHOD.md section 4): remove FF hidden units and
whole attention heads so the network really has fewer parameters, plus the one cost utility
(parameters, MACs, latency) used before and after. Pure torch, no I/O.

Removal is exact: a removed FF unit is a row of linear1 (and its bias) and a column of linear2;
a removed head is its q, k and v rows of the fused qkv and its columns of proj. `masked_cct`
builds the same network with those weights zeroed instead (GELU(0) = 0; a zero v gives a zero head
output), and a test checks the two give the same logits.

Which units go (lowest score first, ties: lower index first):
- snp: the unit's label dependence, eta2 of its field at blocks.<m>.mlp.hidden (snp.LabelDependence:
  the share of the field's variance the label explains; 0 for a dead or label-blind unit, whatever
  its clusters look like); head score = the mean eta2 of the head's dimensions at blocks.<m>.attn.heads.
  The statistics come from the selection images (pruning.selection_split).
- magnitude: FF unit score = |linear1 row| * |linear2 column|; head score = |v rows| * |proj columns|.
The scores themselves come from the criteria of snp_service.prune (one interface for readout masks
and unit scores); this module plans and performs the removal and measures its cost.
"""

from __future__ import annotations

import copy
import statistics
import time

import numpy as np
import torch
from torch import nn

from snp_service.units import units_removed




def ff_magnitude(block) -> np.ndarray:
    mlp = block.mlp
    return (mlp.linear1.weight.detach().norm(dim=1) * mlp.linear2.weight.detach().norm(dim=0)).double().numpy()


def head_magnitude(block) -> np.ndarray:
    attn = block.attn
    h, d = attn.num_heads, attn.head_dim
    v = attn.qkv.weight.detach()[2 * h * d:].reshape(h, d, -1).flatten(1).norm(dim=1)
    proj = attn.proj.weight.detach().reshape(-1, h, d).transpose(0, 1).flatten(1).norm(dim=1)
    return (v * proj).double().numpy()


def keep_indices(scores: np.ndarray, remove: int) -> list[int]:
    """Indices kept after removing the `remove` lowest scores (ties: lower index removed first)."""
    order = np.lexsort((np.arange(len(scores)), scores))
    return sorted(order[remove:].tolist())


def _head_rows(attn, heads: list[int]) -> torch.Tensor:
    h, d = attn.num_heads, attn.head_dim
    dims = torch.tensor([hh * d + i for hh in heads for i in range(d)], dtype=torch.long)
    return torch.cat([dims + part * h * d for part in range(3)]), dims


def prune_cct(model: nn.Module, keep_ff: dict[int, list[int]], keep_heads: dict[int, list[int]]) -> nn.Module:
    """A copy of the CCT with only the listed FF units / heads of each block (blocks not listed: all)."""
    pruned = copy.deepcopy(model)
    for m, keep in keep_ff.items():
        mlp = pruned.blocks[m].mlp
        idx = torch.tensor(keep, dtype=torch.long)
        l1, l2 = mlp.linear1, mlp.linear2
        new1, new2 = nn.Linear(l1.in_features, len(keep)), nn.Linear(len(keep), l2.out_features)
        with torch.no_grad():
            new1.weight.copy_(l1.weight[idx])
            new1.bias.copy_(l1.bias[idx])
            new2.weight.copy_(l2.weight[:, idx])
            new2.bias.copy_(l2.bias)
        mlp.linear1, mlp.linear2 = new1, new2
    for m, keep in keep_heads.items():
        attn = pruned.blocks[m].attn
        rows, dims = _head_rows(attn, keep)
        qkv = nn.Linear(attn.qkv.in_features, len(rows), bias=False)
        proj = nn.Linear(len(dims), attn.proj.out_features)
        with torch.no_grad():
            qkv.weight.copy_(attn.qkv.weight[rows])
            proj.weight.copy_(attn.proj.weight[:, dims])
            proj.bias.copy_(attn.proj.bias)
        attn.qkv, attn.proj, attn.num_heads = qkv, proj, len(keep)
    return pruned.to(next(model.parameters()).device)  # the new layers were made on the CPU


def masked_cct(model: nn.Module, keep_ff: dict[int, list[int]], keep_heads: dict[int, list[int]]) -> nn.Module:
    """The same network with removed units' weights zeroed instead of removed (the reference)."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for m, keep in keep_ff.items():
            mlp = masked.blocks[m].mlp
            drop = [i for i in range(mlp.linear1.out_features) if i not in set(keep)]
            mlp.linear1.weight[drop] = 0.0
            mlp.linear1.bias[drop] = 0.0
        for m, keep in keep_heads.items():
            attn = masked.blocks[m].attn
            drop = [h for h in range(attn.num_heads) if h not in set(keep)]
            if drop:
                rows, _ = _head_rows(attn, drop)
                v_rows = rows[2 * len(rows) // 3:]
                attn.qkv.weight[v_rows] = 0.0
    return masked


def plan(model: nn.Module, fraction: float, ff_scores: dict[int, np.ndarray],
         head_scores: dict[int, np.ndarray]) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """Units and heads kept in every block when `fraction` of each is removed, lowest score first
    (blocks without scores keep everything)."""
    keep_ff, keep_heads = {}, {}
    for m, blk in enumerate(model.blocks):
        units, heads = blk.mlp.linear1.out_features, blk.attn.num_heads
        if ff_scores.get(m) is not None:
            keep_ff[m] = keep_indices(ff_scores[m], units_removed(fraction, units))
        if head_scores.get(m) is not None:
            keep_heads[m] = keep_indices(head_scores[m], units_removed(fraction, heads))
    return keep_ff, keep_heads


def magnitude_scores(model: nn.Module) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Weight-magnitude scores of every block's FF units and heads."""
    return ({m: ff_magnitude(b) for m, b in enumerate(model.blocks)},
            {m: head_magnitude(b) for m, b in enumerate(model.blocks)})


# --- cost: one utility for before/after --------------------------------------------------------

def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `example` (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2


@torch.no_grad()
def latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 10, warmup: int = 2) -> float:
    """Median wall time of a forward pass in milliseconds (eval mode, no grad), on the example's
    device (a GPU is synchronised around every pass, so the time is the kernels', not the launch's)."""
    model.eval()
    sync = torch.cuda.synchronize if example.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(example)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        model(example)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def example_input(model: nn.Module, batch: int, image_size: int) -> torch.Tensor:
    """A batch the model takes, on its device: random images, or the model's own (a text model's word ids)."""
    device = next(model.parameters()).device
    if hasattr(model, "example_input"):
        return model.example_input(batch).to(device)
    return torch.randn(batch, 3, image_size, image_size, device=device)


def cost(model: nn.Module, image_size: int, batches: tuple[int, ...] = (1, 128), repeats: int = 10) -> dict:
    """Parameters, MACs per input and latency at each batch size, on the model's device (CPU: the
    current torch threads)."""
    device = next(model.parameters()).device
    out = {"params": count_params(model), "macs_per_image": count_macs(model, example_input(model, 1, image_size))}
    for b in batches:
        out[f"latency_ms_b{b}"] = latency_ms(model, example_input(model, b, image_size), repeats)
    out["latency_device"] = device.type
    return out
