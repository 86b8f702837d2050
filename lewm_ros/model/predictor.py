"""Causal transformer over time that predicts the next frame embedding, conditioned on actions.

Actions enter through AdaLN-zero: each block turns the token's action embedding into shift,
scale and gate for its attention and MLP branches. The layer producing them starts at zero, so
at initialisation every block is the identity and the prediction ignores the actions; their
influence grows with training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lewm_ros.model.attention import Attention, KeyValue, Mlp
from lewm_ros.model.config import ModelConfig
from lewm_ros.model.projector import Projector

LN_EPS = 1e-6


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.addcmul(shift, x, 1 + scale)


class ConditionedBlock(nn.Module):
    """Pre-norm causal block with AdaLN-zero conditioning on the per-token action embedding."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.attn = Attention(dim, heads, head_dim, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.mlp = Mlp(dim, mlp_dim, dropout)
        self.ada = nn.Linear(dim, 6 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        prefix: KeyValue | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, KeyValue]:
        """One block on tokens ``x`` (B, T, dim) with their action embeddings ``cond`` (B, T, dim)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(cond)).chunk(6, dim=-1)
        h, kv = self.attn(
            _modulate(self.norm1(x), shift1, scale1), causal=True, prefix=prefix, attn_mask=attn_mask
        )
        x = x + gate1 * h
        x = x + gate2 * self.mlp(_modulate(self.norm2(x), shift2, scale2))
        return x, kv


class Predictor(nn.Module):
    """Causal predictor: output token t is the predicted embedding of frame t + 1.

    ``forward(x, cond, prefix, start_pos, return_prefix)`` supports a key/value prefix so a
    planner can compute the tokens that do not depend on candidate actions once and reuse them
    for all candidates (a batch-1 prefix broadcasts over the candidates).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.history = cfg.history
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.history, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.drop = nn.Dropout(cfg.predictor_dropout) if cfg.predictor_dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(
            ConditionedBlock(
                dim, cfg.predictor_heads, cfg.predictor_head_dim, cfg.predictor_mlp_dim, cfg.predictor_dropout
            )
            for _ in range(cfg.predictor_depth)
        )
        for block in self.blocks:
            for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.trunc_normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.projector = Projector(dim, cfg.projector_hidden, dim)

    def forward(
        self,
        x: torch.Tensor,
        cond: torch.Tensor,
        prefix: list[KeyValue] | None = None,
        start_pos: int = 0,
        return_prefix: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[KeyValue]]:
        """Predict next embeddings for tokens at window positions ``start_pos .. start_pos + T - 1``.

        Args:
            x: frame embeddings (B, T, D).
            cond: action embeddings (B, T, D); token t is modulated by action t.
            prefix: per-layer (k, v) of positions ``0 .. start_pos - 1``, each (B or 1, heads, start_pos,
                head_dim), as returned with ``return_prefix=True``. ``None`` for the plain causal pass.
            start_pos: window position of the first new token; must equal the prefix length.
            return_prefix: also return the per-layer (k, v) of prefix + new tokens.

        Returns:
            Predicted embeddings (B, T, D), and the new per-layer (k, v) list if ``return_prefix``.

        """
        B, T, _ = x.shape
        if cond.dim() != 3 or cond.shape[1] != T or cond.shape[0] not in (1, B):
            raise ValueError(f'cond has shape {tuple(cond.shape)}, expected ({B}, {T}, D) to match x')
        if start_pos + T > self.history:
            raise ValueError(
                f'window positions {start_pos}..{start_pos + T - 1} exceed the trained history '
                f'of {self.history}'
            )
        if prefix is not None and len(prefix) != len(self.blocks):
            raise ValueError(f'prefix has {len(prefix)} layers, the predictor has {len(self.blocks)}')
        attn_mask = None
        if prefix is not None:
            prefix_len = prefix[0][0].shape[2]
            if prefix_len != start_pos:
                raise ValueError(f'prefix covers {prefix_len} positions but start_pos is {start_pos}')
            # new token i (position start_pos + i) sees every prefix position and new tokens <= i
            attn_mask = torch.ones(T, prefix_len + T, dtype=torch.bool, device=x.device).tril(prefix_len)
        elif start_pos != 0:
            raise ValueError('start_pos > 0 needs the prefix of the earlier positions')
        h = self.drop(x + self.pos_embed[:, start_pos : start_pos + T].to(x.dtype))
        new_prefix: list[KeyValue] = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, cond, prefix=None if prefix is None else prefix[i], attn_mask=attn_mask)
            if return_prefix:
                new_prefix.append(kv)
        out = self.projector(self.norm(h))
        return (out, new_prefix) if return_prefix else out
