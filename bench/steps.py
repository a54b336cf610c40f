"""The training step the throughput benchmarks time (torch only, so bench.gpu runs on a bare GPU
machine): forward under autocast when a dtype is given, label-smoothed cross-entropy, backward,
optimiser step; channels_last inputs when asked."""

from __future__ import annotations

import torch
from torch import nn

from snp_service.optim import optimiser_step


def model_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               dtype: torch.dtype | None, channels_last: bool, forward=None):
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    forward = forward or model
    model.train()

    def step():
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = forward(x)
        optimiser_step(nn.functional.cross_entropy(out.float(), y, label_smoothing=0.1), opt)

    return step
