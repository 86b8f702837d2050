"""The LeWM training objective and one optimizer step, shared by ``lewm train`` and ``lewm bench train``.

L = MSE(ẑ_{t+1}, z_{t+1}) over the history positions (teacher forcing, no stop-gradient: the
targets carry gradient into the encoder) + λ · SIGReg(z) over every frame of the clip.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from training.fit.precision import autocast
from training.fit.sigreg import SIGReg


@dataclass
class LossTerms:
    """The loss and its parts for one batch (``z``: all frame embeddings, for health metrics)."""

    loss: torch.Tensor
    pred: torch.Tensor
    sigreg: torch.Tensor
    z: torch.Tensor


def clip_loss(
    model: nn.Module,
    sigreg: SIGReg,
    pixels: torch.Tensor,
    actions: torch.Tensor,
    sigreg_lambda: float,
    step: int | None = None,
) -> LossTerms:
    """Loss of a batch of clips: pixels uint8 (B, history + 1, H, W, 3), actions (B, history, fs * A)."""
    z, z_pred = model(pixels, actions)
    pred = F.mse_loss(z_pred.float(), z[:, 1:].float())
    sig = sigreg(z.transpose(0, 1), step=step)  # one statistic per frame over the batch
    return LossTerms(pred + sigreg_lambda * sig, pred, sig, z)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas=(0.9, 0.999)) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices only (not on biases, norms, embeddings' tokens)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and not name.endswith(('pos_embed', 'cls_token'))
        (decay if is_matrix else no_decay).append(param)
    groups = [{'params': decay, 'weight_decay': weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    # the fused kernel (one pass per tensor) exists for CPU and CUDA; MPS takes the default
    fused = next(model.parameters()).device.type in ('cpu', 'cuda')
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused)


def training_step(
    model: nn.Module,
    sigreg: SIGReg,
    optimizer: torch.optim.Optimizer,
    pixels: torch.Tensor,
    actions: torch.Tensor,
    *,
    sigreg_lambda: float,
    grad_clip: float | None,
    precision: str,
    step: int | None = None,
) -> tuple[LossTerms, torch.Tensor]:
    """Forward, backward, gradient clipping and one optimizer step; returns (detached terms, grad norm)."""
    with autocast(pixels.device, precision):
        terms = clip_loss(model, sigreg, pixels, actions, sigreg_lambda, step)
    optimizer.zero_grad(set_to_none=True)
    terms.loss.backward()
    if grad_clip:
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
    else:
        grad_norm = torch.zeros(())
    optimizer.step()
    detached = LossTerms(terms.loss.detach(), terms.pred.detach(), terms.sigreg.detach(), terms.z.detach())
    return detached, grad_norm.detach()
