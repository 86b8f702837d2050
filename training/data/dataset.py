"""Training clips from an HDF5 episode file: ``history + 1`` frames ``frameskip`` apart plus actions.

A clip starting at frame t uses frames t, t + fs, ..., t + history * fs and, for each of the first
``history`` frames, the ``fs`` actions that follow it, z-scored per action dimension with
statistics of the training split and concatenated (``fs * A`` values). Clips that would run past
their episode or touch a NaN action are skipped and counted (:class:`DropReport`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from training.data.episodes import EpisodeFile, EpisodeFormatError


@dataclass
class DropReport:
    """What the dataset could not use, and why."""

    episodes: int = 0
    frames: int = 0
    episodes_too_short: int = 0
    episodes_with_nan_actions: int = 0
    clips_possible: int = 0
    clips_dropped_nan_actions: int = 0
    clips_kept: int = 0
    constant_action_dims: list[int] = field(default_factory=list)

    def summary(self) -> str:
        """One human-readable line."""
        text = (
            f'{self.episodes} episodes, {self.frames} frames -> {self.clips_kept} clips; '
            f'dropped {self.episodes_too_short} episodes too short for a clip and '
            f'{self.clips_dropped_nan_actions} clips touching NaN actions '
            f'(in {self.episodes_with_nan_actions} episodes)'
        )
        if self.constant_action_dims:
            text += f'; action dims {self.constant_action_dims} are constant (std set to 1)'
        return text

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for logs and checkpoint provenance."""
        return dict(self.__dict__)


@dataclass
class ActionStats:
    """Per-dimension z-scoring statistics and bounds of the raw (env-unit) actions."""

    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray | None
    high: np.ndarray | None


def _bound(value: Any, action_dim: int, path: Path, key: str) -> np.ndarray | None:
    if value is None:
        return None
    bound = np.asarray(value, np.float32).reshape(-1)
    if len(bound) != action_dim:
        raise EpisodeFormatError(
            f'{path}: attribute {key} has {len(bound)} values for {action_dim} action dims'
        )
    return bound


def valid_clip_starts(
    offsets: np.ndarray, lengths: np.ndarray, actions: np.ndarray, history: int, frameskip: int
) -> tuple[np.ndarray, np.ndarray, DropReport]:
    """Start frames of usable clips and the episode of each; NaN-touching clips are left out.

    Returns (starts, episode_index, report), starts as absolute frame indices into the file.
    """
    span = history * frameskip  # frames after the start; also the number of actions used
    report = DropReport(episodes=len(lengths), frames=int(lengths.sum()))
    bad_row = ~np.isfinite(actions).all(axis=1)
    # bad_before[i] = number of bad action rows before row i, so a window sum is one subtraction
    bad_before = np.concatenate([[0], np.cumsum(bad_row, dtype=np.int64)])
    starts, episode_of = [], []
    for e, (offset, length) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        count = length - span
        if count <= 0:
            report.episodes_too_short += 1
            continue
        s = np.arange(offset, offset + count, dtype=np.int64)
        ok = bad_before[s + span] - bad_before[s] == 0
        report.clips_possible += count
        dropped = int(count - ok.sum())
        if dropped:
            report.clips_dropped_nan_actions += dropped
            report.episodes_with_nan_actions += 1
        starts.append(s[ok])
        episode_of.append(np.full(int(ok.sum()), e, dtype=np.int64))
    starts_arr = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    episodes_arr = np.concatenate(episode_of) if episode_of else np.zeros(0, np.int64)
    report.clips_kept = len(starts_arr)
    return starts_arr, episodes_arr, report


def action_statistics(
    actions: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, episodes: np.ndarray, report: DropReport
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per action dimension over the finite actions of ``episodes``."""
    rows = (
        np.concatenate([np.arange(offsets[e], offsets[e] + lengths[e]) for e in episodes])
        if len(episodes)
        else []
    )
    values = actions[np.asarray(rows, dtype=np.int64)].astype(np.float64)
    values = values[np.isfinite(values).all(axis=1)]
    if len(values) == 0:
        raise ValueError('the training split has no finite actions; cannot compute action statistics')
    mean, std = values.mean(axis=0), values.std(axis=0)
    constant = np.where(std < 1e-6)[0]
    report.constant_action_dims = constant.tolist()
    std[constant] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


class PixelSource:
    """Frames of an episode file, either all in RAM or read from HDF5 on demand.

    The h5py handle is opened lazily and not pickled, so DataLoader worker processes each open
    their own (h5py handles must not cross a fork).
    """

    def __init__(self, path: Path, image_size: int, cache: bool) -> None:
        self.path = path
        self.image_size = image_size
        self._file = None
        self.frames: np.ndarray | None = self._load_all() if cache else None

    def _dataset(self):
        if self._file is None:
            self._file = EpisodeFile(self.path)
        return self._file.column('pixels')

    def _load_all(self) -> np.ndarray:
        from tqdm import tqdm

        pixels = self._dataset()
        n, stored = pixels.shape[0], pixels.shape[1]
        out = np.empty((n, self.image_size, self.image_size, 3), np.uint8)
        step = 1024
        for start in tqdm(
            range(0, n, step), desc=f'loading {self.path.name}', unit='block', leave=False, disable=n < 20_000
        ):
            block = pixels[start : start + step]
            out[start : start + len(block)] = self._resize(block) if stored != self.image_size else block
        return out

    def _resize(self, frames: np.ndarray) -> np.ndarray:
        from lewm_ros.model import resize_pixels

        return resize_pixels(torch.from_numpy(np.ascontiguousarray(frames)), self.image_size).numpy()

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Frames at the increasing absolute ``indices`` as uint8 (len, S, S, 3)."""
        if self.frames is not None:
            return self.frames[indices]
        block = self._dataset()[indices]
        return self._resize(block) if block.shape[1] != self.image_size else block

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state['_file'] = None
        return state


class ClipDataset(Dataset):
    """Clips of one split: ``{'pixels': uint8 (history+1, S, S, 3), 'actions': float32 (history, fs*A)}``."""

    def __init__(
        self, pixels: PixelSource, actions_norm: np.ndarray, starts: np.ndarray, history: int, frameskip: int
    ) -> None:
        self.pixels = pixels
        self.actions_norm = actions_norm
        self.starts = starts
        self.history = history
        self.frameskip = frameskip
        self._frame_steps = np.arange(history + 1, dtype=np.int64) * frameskip

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[index])
        frames = self.pixels.read(start + self._frame_steps)
        span = self.history * self.frameskip
        actions = self.actions_norm[start : start + span].reshape(self.history, -1)
        return {
            'pixels': torch.from_numpy(np.ascontiguousarray(frames)),
            'actions': torch.from_numpy(actions),
        }


@dataclass
class ClipData:
    """Both splits of an episode file and everything the checkpoint must remember about them."""

    train: ClipDataset
    val: ClipDataset | None
    stats: ActionStats
    report: DropReport
    attrs: dict[str, Any]
    history: int
    frameskip: int
    action_dim: int
    image_size: int
    train_episodes: np.ndarray
    val_episodes: np.ndarray


def load_clip_data(
    path: str | Path,
    *,
    history: int,
    frameskip: int | None,
    image_size: int,
    val_fraction: float = 0.05,
    seed: int = 0,
    cache_in_memory: bool | str = 'auto',
    max_cache_gb: float = 8.0,
) -> ClipData:
    """Open ``path``, split its episodes into train/val, compute action statistics on train.

    ``frameskip=None`` takes the file's recommended ``frameskip`` attribute. Frames recorded at a
    different size than ``image_size`` are resized (antialiased) when read.
    """
    path = Path(path)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
    with EpisodeFile(path) as f:
        attrs = f.attrs
        offsets, lengths = f.offsets, f.lengths
        actions = f.column('actions')[:].astype(np.float32)
        n_pixels = f.column('pixels').shape[0]
    if actions.ndim != 2 or len(actions) != n_pixels:
        raise EpisodeFormatError(
            f'{path}: actions has shape {actions.shape} but pixels has {n_pixels} frames; '
            'each frame needs one action row (NaN where none was applied)'
        )
    if frameskip is None:
        frameskip = int(attrs.get('frameskip', 1))
    if history < 1 or frameskip < 1:
        raise ValueError(f'history and frameskip must be >= 1, got {history} and {frameskip}')
    starts, episode_of, report = valid_clip_starts(offsets, lengths, actions, history, frameskip)
    usable = np.unique(episode_of)
    if len(usable) == 0:
        raise ValueError(
            f'{path}: no usable clip ({report.summary()}); a clip needs {history * frameskip + 1} frames '
            f'(history {history}, frameskip {frameskip}) without NaN actions'
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(usable)
    n_val = 0 if val_fraction == 0 or len(usable) < 2 else max(1, round(len(usable) * val_fraction))
    val_episodes, train_episodes = np.sort(shuffled[:n_val]), np.sort(shuffled[n_val:])
    mean, std = action_statistics(actions, offsets, lengths, train_episodes, report)
    actions_norm = ((actions - mean) / std).astype(np.float32)

    frame_bytes = image_size * image_size * 3
    if cache_in_memory == 'auto':
        cache = n_pixels * frame_bytes <= max_cache_gb * 1024**3
    else:
        cache = bool(cache_in_memory)
    pixels = PixelSource(path, image_size, cache)
    in_train = np.isin(episode_of, train_episodes)
    train = ClipDataset(pixels, actions_norm, starts[in_train], history, frameskip)
    val = ClipDataset(pixels, actions_norm, starts[~in_train], history, frameskip) if n_val else None

    action_dim = actions.shape[1]
    low, high = (_bound(attrs.get(key), action_dim, path, key) for key in ('action_low', 'action_high'))
    return ClipData(
        train=train,
        val=val,
        stats=ActionStats(mean=mean, std=std, low=low, high=high),
        report=report,
        attrs=attrs,
        history=history,
        frameskip=frameskip,
        action_dim=action_dim,
        image_size=image_size,
        train_episodes=train_episodes,
        val_episodes=val_episodes,
    )
