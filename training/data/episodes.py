"""Read and write the ``lewm-episodes`` HDF5 format (docs/data-format.md).

All episodes of a file share one array per column, concatenated along time; offsets and lengths
locate each episode. Writing goes to ``<file>.partial`` and is renamed on a clean close, so a file
under its final name is always complete, and a killed collection can be resumed.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

FORMAT = 'lewm-episodes'
FORMAT_VERSION = 1
PARTIAL_SUFFIX = '.partial'
_OPTIONAL_COLUMNS = ('state', 'proprio')


class EpisodeFormatError(ValueError):
    """A file is not a readable ``lewm-episodes`` file; the message says what is wrong."""


def partial_path(path: str | os.PathLike) -> Path:
    """Where an unfinished file lives until it is closed cleanly."""
    return Path(str(path) + PARTIAL_SUFFIX)


class EpisodeWriter:
    """Append whole episodes to an episode file.

    Use as a context manager; the file appears under its final name only when the block exits
    without an exception. With ``resume=True`` an existing ``.partial`` file is continued: its
    complete episodes are kept (``num_episodes`` says how many) and a half-written tail is cut.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_size: int,
        action_dim: int,
        state_dim: int | None = None,
        proprio_dim: int | None = None,
        attrs: dict[str, Any] | None = None,
        resume: bool = False,
        compression: str | None = 'lzf',
    ) -> None:
        self.path = Path(path)
        self._partial = partial_path(self.path)
        self._dims = {'state': state_dim, 'proprio': proprio_dim}
        if resume and self._partial.exists():
            self._file = h5py.File(self._partial, 'a')
            self._check_resumable(image_size, action_dim)
            self._truncate_to_complete_episodes()
        else:
            self._partial.parent.mkdir(parents=True, exist_ok=True)
            self._file = h5py.File(self._partial, 'w')
            self._create(image_size, action_dim, attrs or {}, compression)
        # kept here, not read from the file, so it is still known after close()
        self._num_episodes = int(self._file['episode_lengths'].shape[0])
        self._open_episode: tuple[int, int] | None = None  # (first frame, length) between begin/end

    # -- set-up -------------------------------------------------------------------------------
    def _create(self, size: int, action_dim: int, attrs: dict[str, Any], compression: str | None) -> None:
        f = self._file
        f.attrs['format'] = FORMAT
        f.attrs['format_version'] = FORMAT_VERSION
        f.attrs['image_size'] = int(size)
        f.attrs['created'] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')
        f.attrs['complete'] = False
        for key, value in attrs.items():
            f.attrs[key] = value
        f.create_dataset('pixels', (0, size, size, 3), np.uint8, maxshape=(None, size, size, 3),
                         chunks=(1, size, size, 3), compression=compression)
        f.create_dataset('actions', (0, action_dim), np.float32, maxshape=(None, action_dim),
                         chunks=(1024, action_dim))
        for name, dim in self._dims.items():
            if dim:
                f.create_dataset(name, (0, dim), np.float32, maxshape=(None, dim), chunks=(1024, dim))
        for name, dtype in (('episode_offsets', np.int64), ('episode_lengths', np.int64),
                            ('episode_success', bool)):
            f.create_dataset(name, (0,), dtype, maxshape=(None,), chunks=(1024,))

    def _check_resumable(self, size: int, action_dim: int) -> None:
        f = self._file
        same = f['pixels'].shape[1] == size and f['actions'].shape[1] == action_dim
        if f.attrs.get('format') != FORMAT or not same:
            raise EpisodeFormatError(
                f'{self._partial} cannot be resumed: it was written with other settings '
                f'(image size {f["pixels"].shape[1]}, action dim {f["actions"].shape[1]}); delete it or '
                'collect without --resume')

    def _truncate_to_complete_episodes(self) -> None:
        """Drop frames past the last complete episode (a run killed mid-episode)."""
        n = int(self._file['episode_lengths'][:].sum())
        for name in ('pixels', 'actions', *_OPTIONAL_COLUMNS):
            if name in self._file and self._file[name].shape[0] != n:
                self._file[name].resize(n, axis=0)

    # -- writing ------------------------------------------------------------------------------
    @property
    def num_episodes(self) -> int:
        """Number of complete episodes written so far (also after :meth:`close`)."""
        return self._num_episodes

    def add_episode(
        self,
        pixels: np.ndarray,
        actions: np.ndarray,
        *,
        state: np.ndarray | None = None,
        proprio: np.ndarray | None = None,
        success: bool = False,
    ) -> None:
        """Append one episode: ``pixels`` (L, H, W, 3) uint8 and ``actions`` (L, A) in env units.

        ``actions[i]`` follows frame ``i``; pass L - 1 actions and the final NaN row is added.
        """
        f = self._file
        if self._open_episode is not None:
            raise EpisodeFormatError('add_episode: an episode was begun but not ended')
        pixels = np.asarray(pixels)
        length = len(pixels)
        if pixels.dtype != np.uint8 or pixels.shape[1:] != f['pixels'].shape[1:]:
            raise EpisodeFormatError(
                f'pixels must be uint8 of shape (L, {", ".join(map(str, f["pixels"].shape[1:]))}), '
                f'got {pixels.dtype} {pixels.shape}')
        actions = _action_rows(actions, length, f['actions'].shape[1])
        columns = {'pixels': pixels, 'actions': actions}
        for name, value in (('state', state), ('proprio', proprio)):
            if name in f:
                if value is None or len(value) != length:
                    raise EpisodeFormatError(f'this file records {name!r}: pass {length} rows of it')
                columns[name] = np.asarray(value, dtype=np.float32)
        start = f['pixels'].shape[0]
        for name, value in columns.items():
            f[name].resize(start + length, axis=0)
            f[name][start:] = value
        # Lengths are written last: an episode counts only once all its frames are in.
        for name, value in (('episode_offsets', start), ('episode_success', success),
                            ('episode_lengths', length)):
            f[name].resize(f[name].shape[0] + 1, axis=0)
            f[name][-1] = value
        f.flush()
        self._num_episodes += 1

    def begin_episode(self, length: int) -> None:
        """Reserve the frames of an episode too long to hold in memory; fill with :meth:`put_frame`.

        The episode counts once :meth:`end_episode` writes its actions (a file closed or killed
        before that holds only the episodes before it, as with :meth:`add_episode`).
        """
        f = self._file
        if self._open_episode is not None:
            raise EpisodeFormatError('begin_episode: the previous episode was not ended')
        if any(name in f for name in _OPTIONAL_COLUMNS):
            raise EpisodeFormatError('begin_episode: files with state/proprio columns take add_episode')
        start = f['pixels'].shape[0]
        f['pixels'].resize(start + int(length), axis=0)
        self._open_episode = (start, int(length))
        self._pending: dict[int, np.ndarray] = {}

    _PENDING_FRAMES = 64  # frames put_frame gathers before writing them (runs of them in one call)

    def put_frame(self, index: int, pixels: np.ndarray) -> None:
        """Write frame ``index`` (0-based, any order) of the episode begun with :meth:`begin_episode`."""
        if self._open_episode is None:
            raise EpisodeFormatError('put_frame: no episode was begun')
        length = self._open_episode[1]
        if not 0 <= index < length:
            raise IndexError(f'frame {index} of an episode of {length}')
        self._pending[int(index)] = pixels
        if len(self._pending) >= self._PENDING_FRAMES:
            self._write_pending()

    def _write_pending(self) -> None:
        """Write the gathered frames, each run of consecutive indices as one slice (h5py calls are slow)."""
        start = self._open_episode[0]
        dataset = self._file['pixels']
        indices = sorted(self._pending)
        run_start = 0
        for i in range(1, len(indices) + 1):
            if i == len(indices) or indices[i] != indices[i - 1] + 1:
                run = indices[run_start:i]
                dataset[start + run[0]:start + run[-1] + 1] = np.stack([self._pending[j] for j in run])
                run_start = i
        self._pending.clear()

    def end_episode(self, actions: np.ndarray, success: bool = False) -> None:
        """Write the actions of the begun episode (L or L - 1 rows) and count it."""
        f = self._file
        if self._open_episode is None:
            raise EpisodeFormatError('end_episode: no episode was begun')
        self._write_pending()
        start, length = self._open_episode
        actions = _action_rows(actions, length, f['actions'].shape[1])
        f['actions'].resize(start + length, axis=0)
        f['actions'][start:] = actions
        for name, value in (('episode_offsets', start), ('episode_success', success),
                            ('episode_lengths', length)):
            f[name].resize(f[name].shape[0] + 1, axis=0)
            f[name][-1] = value
        f.flush()
        self._open_episode = None
        self._num_episodes += 1

    def close(self, complete: bool = True) -> None:
        """Close the file; with ``complete`` it is renamed to its final name."""
        if not self._file:
            return
        if complete and self._open_episode is not None:
            raise EpisodeFormatError('close: an episode was begun but not ended')
        if complete:
            self._file.attrs['complete'] = True
        self._file.close()
        if complete:
            os.replace(self._partial, self.path)

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


class EpisodeFile:
    """Read-only access to an episode file, with the format checked on open."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            hint = ' (an unfinished .partial file exists: resume or finish the collection)' \
                if partial_path(self.path).exists() else ''
            raise FileNotFoundError(f'episode file {self.path} does not exist{hint}')
        try:
            self._file = h5py.File(self.path, 'r')
        except OSError as err:
            raise EpisodeFormatError(f'{self.path} is not a readable HDF5 file: {err}') from err
        f = self._file
        if f.attrs.get('format') != FORMAT:
            raise EpisodeFormatError(f'{self.path} is not a {FORMAT} file (format attribute is '
                                     f'{f.attrs.get("format")!r}); see docs/data-format.md')
        if int(f.attrs.get('format_version', -1)) > FORMAT_VERSION:
            raise EpisodeFormatError(f'{self.path} has format version {f.attrs["format_version"]}; '
                                     f'this lewm_ros reads up to {FORMAT_VERSION}: upgrade lewm_ros')
        missing = [k for k in ('pixels', 'actions', 'episode_offsets', 'episode_lengths') if k not in f]
        if missing:
            raise EpisodeFormatError(f'{self.path} lacks the datasets {missing}')
        self.offsets = f['episode_offsets'][:].astype(np.int64)
        self.lengths = f['episode_lengths'][:].astype(np.int64)

    @property
    def attrs(self) -> dict[str, Any]:
        """File metadata with numpy scalars turned into plain Python values."""
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._file.attrs.items()}

    @property
    def num_episodes(self) -> int:
        """Number of episodes in the file."""
        return len(self.lengths)

    @property
    def num_frames(self) -> int:
        """Total number of frames over all episodes."""
        return int(self.lengths.sum())

    def has(self, column: str) -> bool:
        """Whether the optional column (``state``, ``proprio``, ``episode_success``) is present."""
        return column in self._file

    def column(self, name: str) -> h5py.Dataset:
        """The whole column ``name`` (lazy h5py dataset; slice it to read)."""
        return self._file[name]

    def episode(self, index: int) -> dict[str, np.ndarray]:
        """All columns of episode ``index`` as arrays."""
        if not 0 <= index < self.num_episodes:
            raise IndexError(f'episode {index} out of range (file has {self.num_episodes})')
        sl = slice(int(self.offsets[index]), int(self.offsets[index] + self.lengths[index]))
        out = {'pixels': self._file['pixels'][sl], 'actions': self._file['actions'][sl]}
        for name in _OPTIONAL_COLUMNS:
            if name in self._file:
                out[name] = self._file[name][sl]
        return out

    def close(self) -> None:
        """Close the underlying HDF5 file."""
        self._file.close()

    def __enter__(self) -> EpisodeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _action_rows(actions: np.ndarray, length: int, action_dim: int) -> np.ndarray:
    """``actions`` as (length, action_dim) float32; L - 1 rows get a NaN last row (no action after it)."""
    actions = np.asarray(actions, dtype=np.float32)
    if len(actions) == length - 1:
        actions = np.concatenate([actions, np.full((1, actions.shape[1]), np.nan, np.float32)])
    if actions.shape != (length, action_dim):
        raise EpisodeFormatError(f'actions must have shape ({length}, {action_dim}) or one row fewer, '
                                 f'got {actions.shape}')
    return actions
