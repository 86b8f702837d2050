"""Surprise (violation of expectation): how badly the world model predicted the frame it now sees.

At each new frame t the score is the latent one-step prediction error

    s_t = ||ẑ_t - z_t||² / D,   ẑ_t = predict(z_{t-W..t-1}, executed action blocks)[last]

with up to ``W = history`` previous frames (at block boundaries, like the planner's history) and
the action blocks actually executed between them. A threshold calibrated on held-out normal
episodes (a high quantile of their scores, ``lewm calibrate``) turns the score into a flag. The
paper reports that this error jumps for physically implausible events (an object teleported)
and much less for purely visual ones (a colour change).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lewm_ros.model import LeWM, resize_pixels

DEFAULT_QUANTILE = 0.995


@dataclass
class SurpriseCalibration:
    """A calibrated threshold as stored in a checkpoint's ``meta['surprise']``.

    ``threshold`` is the ``quantile`` of the ``n`` scores of normal frames from ``data``, whose
    ``mean`` and ``std`` are kept too (to read a score as a z-value); ``history`` is the number of
    previous frames the scores were computed with; ``parts`` the per-source figures
    ``{threshold, mean, std, n}`` when several kinds of normal frames were scored (recorded
    episodes and planner-driven ones: the threshold is the higher of their quantiles).
    """

    threshold: float
    quantile: float
    mean: float
    std: float
    n: int
    data: str | None = None
    history: int | None = None
    parts: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict for ``update_metadata(path, 'surprise', ...)``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SurpriseCalibration:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer writers may add some)."""
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {'threshold', 'quantile', 'mean', 'std', 'n'} - set(values)
        if missing:
            raise ValueError(f'surprise calibration lacks {sorted(missing)}; re-run `lewm calibrate`')
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> SurpriseCalibration | None:
        """The calibration stored in checkpoint metadata, or None when it was never calibrated."""
        values = meta.get('surprise')
        return None if not values else cls.from_dict(values)


def calibrate(
    scores: np.ndarray | torch.Tensor,
    quantile: float = DEFAULT_QUANTILE,
    data: str | None = None,
    history: int | None = None,
) -> SurpriseCalibration:
    """Threshold = ``quantile`` of the finite ``scores`` of normal frames."""
    values = np.asarray(torch.as_tensor(scores).detach().cpu().double().reshape(-1))
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError(f'need at least 2 finite surprise scores to calibrate, got {values.size}')
    if not 0.0 < quantile < 1.0:
        raise ValueError(f'quantile must be in (0, 1), got {quantile}')
    return SurpriseCalibration(
        threshold=float(np.quantile(values, quantile)),
        quantile=float(quantile),
        mean=float(values.mean()),
        std=float(values.std()),
        n=int(values.size),
        data=data,
        history=history,
    )


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))


def _model_history(model: LeWM, history: int | None) -> int:
    trained = model.config.history
    history = trained if history is None else int(history)
    if not 1 <= history <= trained:
        raise ValueError(
            f"surprise history must be in 1..{trained} (the model's trained history), got {history}"
        )
    return history


@torch.no_grad()
def scores_from_embeddings(
    model: LeWM, z: torch.Tensor, action_emb: torch.Tensor, history: int | None = None
) -> torch.Tensor:
    """Scores (B, T) from embeddings ``z`` (B, T, D) and embedded executed blocks (B, T - 1, D).

    ``scores[:, 0]`` is NaN (nothing precedes the first frame). Windows of the same length are
    batched into one predictor call.
    """
    W = _model_history(model, history)
    B, T, D = z.shape
    scores = torch.full((B, T), math.nan, device=z.device)
    for t in range(1, min(W, T)):  # short windows at the start of the sequence
        pred = model.predict(z[:, :t], action_emb[:, :t])[:, -1]
        scores[:, t] = (pred - z[:, t]).square().mean(-1)
    if T > W:
        # every full window z[t-W .. t-1] -> z[t], for t = W .. T-1, in one batch
        zw = z[:, :-1].unfold(1, W, 1).permute(0, 1, 3, 2)  # (B, T-W, W, D)
        aw = action_emb.unfold(1, W, 1).permute(0, 1, 3, 2)
        n = zw.shape[1]
        pred = model.predict(zw.reshape(B * n, W, D), aw.reshape(B * n, W, D))[:, -1].reshape(B, n, D)
        scores[:, W:] = (pred - z[:, W:]).square().mean(-1)
    return scores


@torch.no_grad()
def encode_frames(model: LeWM, frames: Any, chunk: int = 256) -> torch.Tensor:
    """Embeddings (B, T, D) of uint8 frames (B, T, H, W, 3) of any size, ``chunk`` frames at a time."""
    device = next(model.parameters()).device
    pixels = resize_pixels(_tensor(frames).to(device), model.config.image_size)
    B, T = pixels.shape[:2]
    flat = pixels.reshape(B * T, 1, *pixels.shape[2:])
    return torch.cat([model.encode(flat[i : i + chunk]) for i in range(0, B * T, chunk)]).reshape(B, T, -1)


@torch.no_grad()
def surprise_scores(
    model: LeWM, frames: Any, actions: Any, history: int | None = None, chunk: int = 256
) -> torch.Tensor:
    """Scores (B, T) of whole sequences, frames encoded ``chunk`` at a time.

    ``frames`` (B, T, H, W, 3) uint8 at block boundaries, or their embeddings (B, T, D) from
    :func:`encode_frames`; ``actions`` (B, T - 1, frameskip, A) env units, the blocks executed
    between them.
    """
    device = next(model.parameters()).device
    x = _tensor(frames).to(device)
    z = x if x.is_floating_point() and x.dim() == 3 else encode_frames(model, x, chunk)
    B, T = z.shape[:2]
    acts = _tensor(actions).to(device, torch.float32).reshape(B, T - 1, -1)
    action_emb = model.embed_actions(model.normalize_actions(acts))
    return scores_from_embeddings(model, z, action_emb, history)


class RunningStats:
    """Count, mean and standard deviation of a stream (Welford's algorithm, numerically stable)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything."""
        self.count, self.mean, self._m2 = 0, 0.0, 0.0

    def update(self, value: float) -> None:
        """Add one value."""
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self._m2 += delta * (value - self.mean)

    @property
    def std(self) -> float:
        """Population standard deviation (0 for fewer than two values)."""
        return math.sqrt(self._m2 / self.count) if self.count > 1 else 0.0


@dataclass
class SurpriseReading:
    """The monitor's answer for one frame; ``score`` is None for the first frame of an episode."""

    score: float | None
    flag: bool
    threshold: float | None
    mean: float
    std: float
    count: int

    @property
    def zscore(self) -> float | None:
        """Score in standard deviations above this stream's running mean (None when undefined)."""
        if self.score is None or self.std <= 0:
            return None
        return (self.score - self.mean) / self.std


class SurpriseMonitor:
    """Online surprise for one stream of frames at block boundaries.

    Feed ``update(frame, executed_block)`` every block: the frame just observed and the action
    block (frameskip, A), env units, executed since the previous frame (None for the first).
    Each frame is encoded once; the last ``history`` embeddings and blocks are kept.
    """

    def __init__(
        self, model: LeWM, calibration: SurpriseCalibration | None = None, history: int | None = None
    ):
        self.model = model.eval()
        if history is None and calibration is not None and calibration.history:
            history = min(calibration.history, model.config.history)
        self.history = _model_history(model, history)
        self.calibration = calibration
        self.device = next(model.parameters()).device
        self.stats = RunningStats()
        self._z: deque[torch.Tensor] = deque(maxlen=self.history)
        self._a: deque[torch.Tensor] = deque(maxlen=self.history)

    @property
    def threshold(self) -> float | None:
        """The calibrated threshold, or None before calibration (then nothing is flagged)."""
        return None if self.calibration is None else self.calibration.threshold

    def reset(self, keep_stats: bool = True) -> None:
        """Start a new episode (the next frame has no predecessor); optionally forget the statistics."""
        self._z.clear()
        self._a.clear()
        if not keep_stats:
            self.stats.reset()

    @torch.no_grad()
    def update(self, frame: Any, executed_block: Any | None = None) -> SurpriseReading:
        """Score ``frame`` (H, W, 3) uint8 against the prediction from the frames before it."""
        pixels = _tensor(frame)
        if pixels.dtype != torch.uint8 or pixels.dim() != 3 or pixels.shape[-1] != 3:
            raise ValueError(
                f'frame must be a (H, W, 3) uint8 RGB image, got {tuple(pixels.shape)} {pixels.dtype}'
            )
        pixels = resize_pixels(pixels.to(self.device), self.model.config.image_size)
        z = self.model.encode(pixels[None, None])[0, 0]
        score = None
        if self._z:
            if executed_block is None:
                raise ValueError(
                    'executed_block is required for every frame but the first; call reset() between episodes'
                )
            block = _tensor(executed_block).to(self.device, torch.float32).reshape(1, 1, -1)
            if block.shape[-1] != self.model.config.action_input_dim:
                raise ValueError(
                    f'executed_block has {block.shape[-1]} values; expected (frameskip, A) = '
                    f'{self.model.config.action_input_dim} values'
                )
            self._a.append(self.model.embed_actions(self.model.normalize_actions(block))[0, 0])
            z_win = torch.stack(list(self._z))[None]
            a_win = torch.stack(list(self._a)[-len(self._z) :])[None]
            pred = self.model.predict(z_win, a_win)[0, -1]
            score = float((pred - z).square().mean())
            self.stats.update(score)
        self._z.append(z)
        threshold = self.threshold
        flag = score is not None and threshold is not None and score > threshold
        return SurpriseReading(score, flag, threshold, self.stats.mean, self.stats.std, self.stats.count)
