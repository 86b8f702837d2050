"""LeWM: the joint-embedding world model (encoder + projector, action encoder, predictor)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lewm_ros.model.action_encoder import ActionEncoder
from lewm_ros.model.config import ModelConfig
from lewm_ros.model.image import normalize_pixels
from lewm_ros.model.predictor import Predictor
from lewm_ros.model.projector import Projector
from lewm_ros.model.vit import ViTEncoder


class LeWM(nn.Module):
    """World model in embedding space.

    Public API (used by the planner, the surprise monitor and the ROS node):

    - ``encode(pixels)``: uint8 RGB frames (B, T, H, W, 3), channels last, H = W =
      ``config.image_size`` -> embeddings z (B, T, D). ImageNet normalisation happens inside.
    - ``embed_actions(actions_norm)``: normalised, frameskip-concatenated actions (B, T, fs * A)
      -> (B, T, D).
    - ``predict(z, action_emb)``: causal; output t predicts z_{t+1}; T <= ``config.history``.
    - ``normalize_actions`` / ``denormalize_actions``: env units <-> z-scored, on (..., A) or on
      frameskip-concatenated (..., fs * A). The statistics are buffers saved with the weights.
    """

    def __init__(
        self,
        config: ModelConfig,
        action_mean: Sequence[float] | torch.Tensor | None = None,
        action_std: Sequence[float] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = ViTEncoder(config)
        self.projector = Projector(config.encoder_width, config.projector_hidden, config.embed_dim)
        self.action_encoder = ActionEncoder(config.action_input_dim, config.action_hidden, config.embed_dim)
        self.predictor = Predictor(config)
        A = config.action_dim
        mean = torch.zeros(A) if action_mean is None else torch.as_tensor(action_mean, dtype=torch.float32)
        std = torch.ones(A) if action_std is None else torch.as_tensor(action_std, dtype=torch.float32)
        if mean.shape != (A,) or std.shape != (A,):
            raise ValueError(
                f'action mean/std must have shape ({A},), got {tuple(mean.shape)} and {tuple(std.shape)}'
            )
        if std.device.type != 'meta' and not bool((std > 0).all()):  # meta: a shape-only build
            raise ValueError(f'action std must be positive, got {std.tolist()}')
        self.register_buffer('action_mean', mean.clone())
        self.register_buffer('action_std', std.clone())

    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters())

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 frames (B, T, H, W, 3) -> embeddings (B, T, D)."""
        size = self.config.image_size
        if pixels.dim() != 5 or pixels.shape[-1] != 3:
            raise ValueError(
                'encode expects uint8 frames shaped (B, T, H, W, 3) (channels last), '
                f'got {tuple(pixels.shape)}'
            )
        if pixels.dtype != torch.uint8:
            raise TypeError(f'encode expects uint8 pixels in [0, 255], got {pixels.dtype}')
        if pixels.shape[2] != size or pixels.shape[3] != size:
            raise ValueError(
                f'frames are {pixels.shape[2]}x{pixels.shape[3]} but the model was built for {size}x{size}; '
                'resize them first (lewm_ros.model.resize_pixels)'
            )
        B, T = pixels.shape[:2]
        images = normalize_pixels(pixels.reshape(B * T, size, size, 3))
        features = self.encoder(images)
        return self.projector(features).reshape(B, T, -1)

    def embed_actions(self, actions_norm: torch.Tensor) -> torch.Tensor:
        """Normalised action blocks (B, T, fs * A) -> action embeddings (B, T, D)."""
        return self.action_encoder(actions_norm)

    def predict(self, z: torch.Tensor, action_emb: torch.Tensor) -> torch.Tensor:
        """Causal next-embedding prediction: output t predicts z_{t+1} (B, T, D)."""
        return self.predictor(z, action_emb)

    def forward(self, pixels: torch.Tensor, actions_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over a clip.

        ``pixels`` (B, history + 1, H, W, 3) uint8 and ``actions_norm`` (B, history, fs * A) give
        ``(z, z_pred)``: embeddings of every frame (B, history + 1, D) and the predictions of frames
        1..history from the frames before them (B, history, D).
        """
        z = self.encode(pixels)
        T = actions_norm.shape[1]
        if z.shape[1] != T + 1:
            raise ValueError(f'a clip of {z.shape[1]} frames needs {z.shape[1] - 1} action blocks, got {T}')
        z_pred = self.predict(z[:, :T], self.embed_actions(actions_norm))
        return z, z_pred

    def _stats_for(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        A = self.config.action_dim
        if width % A:
            raise ValueError(f'last action dimension {width} is not a multiple of action_dim {A}')
        reps = width // A
        return self.action_mean.repeat(reps), self.action_std.repeat(reps)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Env-unit actions (..., A) or frameskip-concatenated (..., k * A) -> z-scored, same shape."""
        mean, std = self._stats_for(actions.shape[-1])
        return (actions - mean.to(actions)) / std.to(actions)

    def denormalize_actions(self, actions_norm: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_actions`."""
        mean, std = self._stats_for(actions_norm.shape[-1])
        return actions_norm * std.to(actions_norm) + mean.to(actions_norm)
