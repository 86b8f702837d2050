"""Clip dataset over real HDF5 episode files (moving squares written with EpisodeWriter)."""

import h5py
import numpy as np
import pytest
import torch

from training.data.dataset import load_clip_data
from training.data.episodes import EpisodeFile, EpisodeFormatError, EpisodeWriter
from training.data.squares import write_squares_file


@pytest.fixture
def squares(tmp_path):
    return write_squares_file(
        tmp_path / 'squares.h5', episodes=10, length=40, nan_action_episodes=2, short_episodes=1
    )


@pytest.mark.parametrize('cache', [True, False])
def test_clip_frames_and_actions_follow_the_format(squares, cache):
    data = load_clip_data(
        squares, history=3, frameskip=None, image_size=32, val_fraction=0.2, cache_in_memory=cache
    )
    assert data.frameskip == 2 and data.action_dim == 2  # frameskip from the file's attribute
    with EpisodeFile(squares) as f:
        pixels, actions = f.column('pixels')[:], f.column('actions')[:]
    for index in (0, len(data.train) - 1):
        item = data.train[index]
        start = int(data.train.starts[index])
        assert item['pixels'].dtype == torch.uint8 and item['pixels'].shape == (4, 32, 32, 3)
        np.testing.assert_array_equal(
            item['pixels'].numpy(), pixels[[start, start + 2, start + 4, start + 6]]
        )
        expected = ((actions[start : start + 6] - data.stats.mean) / data.stats.std).reshape(3, 4)
        np.testing.assert_allclose(item['actions'].numpy(), expected, rtol=1e-6)
        # a clip never leaves its episode
        with EpisodeFile(squares) as f:
            episode = np.searchsorted(f.offsets, start, side='right') - 1
            assert start + 6 < f.offsets[episode] + f.lengths[episode]


def test_nan_actions_and_short_episodes_are_counted_not_fatal(squares):
    data = load_clip_data(squares, history=3, frameskip=2, image_size=32, val_fraction=0.2)
    report = data.report
    assert report.episodes == 11 and report.episodes_too_short == 1
    # one NaN action (index 19 of 39) removes the 6 clips whose 6-action window covers it, in 2 episodes
    assert report.episodes_with_nan_actions == 2 and report.clips_dropped_nan_actions == 12
    assert report.clips_kept == 10 * 34 - 12 == len(data.train) + len(data.val)
    for split in (data.train, data.val):
        for i in range(len(split)):
            assert torch.isfinite(split[i]['actions']).all()
    assert 'too short' in report.summary()


def test_statistics_come_from_the_training_split_only(squares):
    data = load_clip_data(squares, history=3, frameskip=2, image_size=32, val_fraction=0.3, seed=1)
    assert not set(data.train_episodes) & set(data.val_episodes)
    with EpisodeFile(squares) as f:
        rows = np.concatenate(
            [np.arange(f.offsets[e], f.offsets[e] + f.lengths[e]) for e in data.train_episodes]
        )
        train_actions = f.column('actions')[:][rows]
    train_actions = train_actions[np.isfinite(train_actions).all(axis=1)]
    np.testing.assert_allclose(data.stats.mean, train_actions.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(data.stats.std, train_actions.std(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(data.stats.low, [-1, -1])
    # the split is a function of the seed
    again = load_clip_data(squares, history=3, frameskip=2, image_size=32, val_fraction=0.3, seed=1)
    np.testing.assert_array_equal(again.val_episodes, data.val_episodes)


def test_frames_are_resized_to_the_model_size(tmp_path):
    path = write_squares_file(tmp_path / 'big.h5', episodes=3, length=12, image_size=48)
    for cache in (True, False):
        data = load_clip_data(
            path, history=2, frameskip=1, image_size=32, val_fraction=0, cache_in_memory=cache
        )
        assert data.val is None and data.train[0]['pixels'].shape == (3, 32, 32, 3)


def test_unusable_files_give_clear_errors(tmp_path):
    path = write_squares_file(tmp_path / 'short.h5', episodes=2, length=5)
    with pytest.raises(ValueError, match='no usable clip.*needs 7 frames'):
        load_clip_data(path, history=3, frameskip=2, image_size=32)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_clip_data(tmp_path / 'missing.h5', history=3, frameskip=2, image_size=32)
    with h5py.File(tmp_path / 'other.h5', 'w') as f:
        f['x'] = np.zeros(3)
    with pytest.raises(EpisodeFormatError, match='not a lewm-episodes file'):
        load_clip_data(tmp_path / 'other.h5', history=3, frameskip=2, image_size=32)


def test_constant_action_dimension_does_not_divide_by_zero(tmp_path):
    rng = np.random.default_rng(0)
    with EpisodeWriter(tmp_path / 'const.h5', image_size=16, action_dim=2, attrs={'frameskip': 1}) as writer:
        for _ in range(3):
            actions = np.stack([rng.normal(size=9), np.full(9, 0.5)], axis=1)
            writer.add_episode(rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8), actions)
    data = load_clip_data(tmp_path / 'const.h5', history=3, frameskip=1, image_size=16, val_fraction=0)
    assert data.report.constant_action_dims == [1] and data.stats.std[1] == 1.0
    assert torch.isfinite(data.train[0]['actions']).all()


def test_an_episode_streamed_frame_by_frame_equals_one_added_whole(tmp_path):
    """begin_episode/put_frame/end_episode (frames in any order, more than one write batch)."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (150, 8, 8, 3), dtype=np.uint8)
    actions = rng.normal(size=(149, 2)).astype(np.float32)
    with EpisodeWriter(tmp_path / 'whole.h5', image_size=8, action_dim=2) as writer:
        writer.add_episode(pixels[:20], actions[:19])
        writer.add_episode(pixels, actions)
    with EpisodeWriter(tmp_path / 'stream.h5', image_size=8, action_dim=2) as writer:
        writer.add_episode(pixels[:20], actions[:19])
        writer.begin_episode(150)
        with pytest.raises(EpisodeFormatError, match='not ended'):
            writer.add_episode(pixels[:20], actions[:19])
        for index in rng.permutation(150):
            writer.put_frame(int(index), pixels[index])
        writer.end_episode(actions)
    with EpisodeFile(tmp_path / 'whole.h5') as whole, EpisodeFile(tmp_path / 'stream.h5') as stream:
        assert stream.lengths.tolist() == whole.lengths.tolist() == [20, 150]
        for name in ('pixels', 'actions'):
            np.testing.assert_array_equal(stream.column(name)[:], whole.column(name)[:])


def test_an_episode_begun_but_not_ended_never_looks_complete(tmp_path):
    writer = EpisodeWriter(tmp_path / 'cut.h5', image_size=8, action_dim=2)
    writer.begin_episode(5)
    writer.put_frame(0, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(EpisodeFormatError, match='not ended'):
        writer.close(complete=True)
    writer.close(complete=False)
    assert not (tmp_path / 'cut.h5').exists()
    with h5py.File(tmp_path / 'cut.h5.partial', 'r') as f:
        assert not f.attrs['complete'] and len(f['episode_lengths']) == 0
