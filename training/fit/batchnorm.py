"""Re-estimate BatchNorm running statistics for the current weights before evaluating or saving.

During training BatchNorm normalises with each batch's own statistics, and its running
averages (momentum 0.1) trail the weights. When the features vary little across frames (a small
agent on a fixed background) that lag is amplified by the division by a small std, and the
eval-mode model the planner uses can be far off. Recomputing the statistics as a plain average
over a few training batches, with dropout off, makes eval mode match the trained model.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], device: torch.device
) -> int:
    """Replace every BatchNorm's running mean/var by its average over ``batches``; returns batches used.

    The model's train/eval mode and the BatchNorm momenta are restored afterwards. No dropout
    runs, so the global RNG is not touched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
        m.train()
    used = 0
    try:
        for batch in batches:
            model(batch['pixels'].to(device), batch['actions'].to(device))
            used += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    return used
