"""ViT image encoder whose output is the CLS token (no pretrained weights, no timm/transformers)."""

from __future__ import annotations

import torch
from torch import nn

from lewm_ros.model.attention import Attention, Mlp
from lewm_ros.model.config import ModelConfig

LN_EPS = 1e-6


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, dim // heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full block on every token."""
        x = x + self.attn(self.norm1(x))[0]
        return x + self.mlp(self.norm2(x))

    def forward_first_token(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for token 0 only (B, 1, dim); equal to ``forward(x)[:, :1]``."""
        cls = x[:, :1] + self.attn.forward_first_query(self.norm1(x))
        return cls + self.mlp(self.norm2(cls))


class PatchEmbed(nn.Module):
    """Cut channels-last images into non-overlapping patches and project each with one Linear.

    Equal to a stride-``patch`` Conv2d, but a reshape plus one GEMM works directly on the
    (N, H, W, 3) layout cameras and HDF5 files give, with no channels-first copy.
    """

    def __init__(self, image_size: int, patch: int, dim: int) -> None:
        super().__init__()
        self.patch = patch
        self.grid = image_size // patch
        self.proj = nn.Linear(patch * patch * 3, dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) float -> (N, grid * grid, dim); patch values ordered (row, col, channel)."""
        N, g, p = images.shape[0], self.grid, self.patch
        x = images.reshape(N, g, p, g, p, 3).transpose(2, 3).reshape(N, g * g, p * p * 3)
        return self.proj(x)


class ViTEncoder(nn.Module):
    """ViT over normalised channels-last images; returns the final-LayerNorm CLS token (N, width)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.encoder_width
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, dim))
        self.blocks = nn.ModuleList(
            Block(dim, cfg.encoder_heads, cfg.encoder_mlp_dim) for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.xavier_uniform_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Encode (N, H, W, 3) normalised float images to CLS features (N, width)."""
        x = self.patch_embed(images)
        cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks[:-1]:
            x = block(x)
        x = self.blocks[-1].forward_first_token(x)
        return self.norm(x[:, 0])
