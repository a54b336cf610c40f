"""The one optimiser step every training loop takes: network training (snp_service.train),
readout fitting and fine-tunes (snp_service.readout) and the timed step of the benchmarks (bench).
torch only."""

from __future__ import annotations

import torch


def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer, scheduler=None) -> None:
    """Clear the gradients, back-propagate `loss`, step the optimiser and, if given, the scheduler."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()
