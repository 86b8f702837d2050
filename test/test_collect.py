"""``lewm collect`` writes complete, deterministic, resumable files that training reads; so does view."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from ros_test_utils import reap

pytest.importorskip('mujoco', reason='collection needs mujoco')
pytest.importorskip('h5py', reason='collection needs h5py')

from lewm_ros.sim import make_env  # noqa: E402
from training.cli import main as lewm  # noqa: E402
from training.data.episodes import EpisodeFile, partial_path  # noqa: E402

SMALL = ['--env', 'lewm/TwoRoom-v0', '--img-size', '32', '--steps', '20', '--noise', '0.1']


def collect(out: Path, *extra: str, episodes: int = 3) -> None:
    assert lewm(['collect', *SMALL, '--episodes', str(episodes), '--out', str(out), *extra]) == 0


def columns(path: Path) -> dict[str, np.ndarray]:
    with EpisodeFile(path) as f:
        names = ('pixels', 'actions', 'state', 'proprio', 'episode_offsets', 'episode_lengths')
        return {name: f.column(name)[:] for name in (*names, 'episode_success')}


def test_collect_writes_the_episode_format_with_metadata(tmp_path, capsys):
    out = tmp_path / 'two_room.h5'
    collect(out)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['frames'] == 3 * 21 and summary['episodes_collected'] == 3
    assert not partial_path(out).exists()
    with EpisodeFile(out) as f:
        attrs = f.attrs
        assert f.num_episodes == 3 and list(f.lengths) == [21, 21, 21]
        episode = f.episode(1)
    assert attrs['complete'] and attrs['env_id'] == 'lewm/TwoRoom-v0' and attrs['image_size'] == 32
    assert attrs['frameskip'] == 5 and attrs['control_rate_hz'] == 10.0
    assert attrs['policy'] == 'expert' and attrs['noise'] == pytest.approx(0.1) and attrs['seed'] == 0
    assert episode['pixels'].shape == (21, 32, 32, 3) and episode['pixels'].dtype == np.uint8
    assert np.isnan(episode['actions'][-1]).all() and np.isfinite(episode['actions'][:-1]).all()
    # episode i starts where the env starts with seed + i, and the pixels are the env's frames
    env = make_env('lewm/TwoRoom-v0', img_size=32)
    obs, info = env.reset(seed=1)
    np.testing.assert_allclose(episode['state'][0], info['state'], atol=1e-6)
    assert np.array_equal(episode['pixels'][0], obs)
    obs, *_ = env.step(episode['actions'][0])
    assert np.array_equal(episode['pixels'][1], obs)
    env.close()


def test_collect_mixed_records_its_expert_share_and_is_all_expert_at_share_one(tmp_path):
    mixed, expert = tmp_path / 'mixed.h5', tmp_path / 'expert.h5'
    noiseless = ('--noise', '0', '--goals', 'single')  # no random draws but the mixed policy's own
    collect(mixed, '--policy', 'mixed', '--expert-fraction', '1.0', *noiseless)
    collect(expert, *noiseless)
    with EpisodeFile(mixed) as f:
        assert f.attrs['policy'] == 'mixed' and f.attrs['expert_fraction'] == 1.0
    # at share 1 every episode is the expert's
    np.testing.assert_array_equal(columns(mixed)['actions'], columns(expert)['actions'])
    with pytest.raises(SystemExit, match='expert-fraction'):
        collect(tmp_path / 'bad.h5', '--policy', 'mixed', '--expert-fraction', '-0.1')


def test_training_dataset_reads_a_collected_file(tmp_path):
    from training.data.dataset import load_clip_data

    out = tmp_path / 'clips.h5'
    collect(out, episodes=2)
    data = load_clip_data(out, history=3, frameskip=None, image_size=32, val_fraction=0.0)
    assert data.frameskip == 5 and data.action_dim == 2
    assert data.report.clips_kept == 2 * (21 - 15)  # 16-frame clips in 21-frame episodes
    clip = data.train[0]
    assert tuple(clip['pixels'].shape) == (4, 32, 32, 3)
    assert tuple(clip['actions'].shape) == (3, 10)


def test_result_does_not_depend_on_the_number_of_workers(tmp_path):
    one, two = tmp_path / 'one.h5', tmp_path / 'two.h5'
    collect(one, '--workers', '1')
    collect(two, '--workers', '2')
    a, b = columns(one), columns(two)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name


# `lewm collect`, SIGKILLed by itself in the middle of adding episode KILL_AT: its frames are in the
# file (flushed) but the episode lengths, written last, are not. A kill at that point is the case
# the resume code must cut back; doing it from inside makes the point exact, not a matter of timing.
KILL_MID_EPISODE = """
import os, signal, sys
from training.data import episodes

kill_at = int(sys.argv[1])
add_episode = episodes.EpisodeWriter.add_episode


class KillBeforeCounting:
    def __init__(self, file):
        self.file = file

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __contains__(self, name):
        return name in self.file

    def __getitem__(self, name):
        if name == 'episode_offsets':  # all the episode's frames are written, none of its counts
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.file[name]


def add_then_die(writer, *args, **kwargs):
    if writer.num_episodes == kill_at:
        writer._file = KillBeforeCounting(writer._file)
    return add_episode(writer, *args, **kwargs)


episodes.EpisodeWriter.add_episode = add_then_die
from training.cli import main

sys.exit(main(sys.argv[2:]))
"""


def test_killed_run_leaves_no_complete_looking_file_and_resumes_to_the_same_result(tmp_path):
    out, reference = tmp_path / 'killed.h5', tmp_path / 'reference.h5'
    args = [*SMALL, '--episodes', '4']
    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, '-c', KILL_MID_EPISODE, '2', 'collect', *args, '--out', str(out)]
    env = {**os.environ, 'PYTHONPATH': str(repo)}
    killed = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    partial = partial_path(out)
    assert partial.exists() and not out.exists()
    with h5py.File(partial, 'r') as f:  # 2 episodes counted, the frames of a third one after them
        assert not f.attrs['complete'] and list(f['episode_lengths'][:]) == [21, 21]
        assert f['pixels'].shape[0] == 3 * 21 and f['actions'].shape[0] == 3 * 21
    with pytest.raises(FileNotFoundError, match='partial'):
        EpisodeFile(out)
    with pytest.raises(SystemExit, match='--resume'):
        lewm(['collect', *args, '--out', str(out)])
    with pytest.raises(SystemExit, match='other settings'):
        lewm(['collect', *args, '--out', str(out), '--resume', '--noise', '0.3'])
    assert lewm(['collect', *args, '--out', str(out), '--resume']) == 0
    assert lewm(['collect', *args, '--out', str(reference)]) == 0
    a, b = columns(out), columns(reference)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name


def test_a_damaged_partial_file_is_refused_and_never_completed(tmp_path):
    # HDF5 is not crash-safe: a kill inside a write can break the file. Resuming must then refuse
    # with a clear message; it must never produce a complete-looking file.
    out = tmp_path / 'damaged.h5'
    collect(out, episodes=2)
    partial = partial_path(out)
    out.rename(partial)
    with open(partial, 'r+b') as f:  # cut off the end, as a kill in the middle of growing it would
        f.truncate(partial.stat().st_size // 2)
    with pytest.raises(SystemExit, match='damaged'):
        collect(out, '--resume', episodes=3)
    assert not out.exists()


def interrupt_once_an_episode_is_written(command: list[str], done: int, total: int,
                                         whole_group: bool = False) -> tuple[int, str]:
    """Run ``command``; SIGINT it as soon as its progress bar passes ``done`` of ``total`` episodes.

    The progress bar advances only after an episode is flushed to the file, so the signal always
    arrives mid-run with at least one new episode written. Returns (exit code, all output).
    """
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, 'PYTHONPATH': str(repo), 'TQDM_MININTERVAL': '0', 'TQDM_MINITERS': '1'}
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=whole_group)
    seen, progress = b'', re.compile(rb'(\d+)/%d\b' % total)
    deadline = time.monotonic() + 60
    try:
        while not any(int(n) > done for n in progress.findall(seen)):
            assert time.monotonic() < deadline and process.poll() is None, seen.decode(errors='replace')
            if select.select([process.stderr], [], [], 0.5)[0]:
                seen += os.read(process.stderr.fileno(), 1 << 16)
        if whole_group:  # what Ctrl-C in a terminal does: the workers get the signal too
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        reap(process)
    return process.returncode, (seen + err).decode(errors='replace') + out.decode(errors='replace')


def test_ctrl_c_gives_the_resume_hint_and_repeated_resumes_reach_the_same_file(tmp_path):
    out, reference = tmp_path / 'interrupted.h5', tmp_path / 'reference.h5'
    total = 16
    args = [*SMALL, '--steps', '150', '--episodes', str(total)]
    command = [sys.executable, '-m', 'training.cli', 'collect', *args, '--out', str(out)]
    partial, done = partial_path(out), 0
    for attempt in range(4):
        extra = ['--resume'] if attempt else []
        workers = ['--workers', '2'] if attempt == 1 else []  # the pool path, signalled like a terminal
        rc, output = interrupt_once_an_episode_is_written(command + extra + workers, done, total,
                                                          whole_group=bool(workers))
        hint = re.search(r'interrupted: (\d+) complete episodes are in .*partial; run the same command '
                         r'with --resume to continue', output)
        assert rc == 130 and hint, output
        assert 'Traceback' not in output and 'Error' not in output, output
        assert done < int(hint[1]) < total, output
        done = int(hint[1])
        assert partial.exists() and not out.exists()
        with EpisodeFile(partial) as f:
            assert f.num_episodes == done and not f.attrs['complete']
    assert lewm(['collect', *args, '--out', str(out), '--resume']) == 0
    assert lewm(['collect', *args, '--out', str(reference)]) == 0
    with EpisodeFile(out) as f:
        assert f.num_episodes == total and f.attrs['complete']
    a, b = columns(out), columns(reference)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name


def test_existing_files_and_mismatched_resumes_are_refused(tmp_path):
    out = tmp_path / 'done.h5'
    collect(out, episodes=1)
    with pytest.raises(SystemExit, match='--overwrite'):
        collect(out, episodes=1)
    collect(out, '--overwrite', episodes=1)
    with pytest.raises(SystemExit, match='no .*partial'):
        collect(tmp_path / 'fresh.h5', '--resume', episodes=1)
    with pytest.raises(SystemExit, match='unknown --env'):
        lewm(['collect', '--env', 'lewm/Nope-v0', '--episodes', '1', '--out', str(tmp_path / 'x.h5')])


def test_perturbed_collection_records_the_event(tmp_path):
    out = tmp_path / 'teleport.h5'
    collect(out, '--perturb', 'teleport', '--perturb-step', '10', '--goals', 'single', episodes=1)
    with EpisodeFile(out) as f:
        attrs, state = f.attrs, f.episode(0)['state']
    assert attrs['perturb'] == 'teleport' and attrs['perturb_step'] == 10
    jumps = np.linalg.norm(np.diff(state[:, :2], axis=0), axis=1)
    assert int(np.argmax(jumps)) == 9  # between frame 9 and frame 10


@pytest.mark.parametrize('suffix', ['.png', '.gif'])
def test_view_writes_a_picture_of_an_episode(tmp_path, capsys, suffix):
    from PIL import Image

    out = tmp_path / f'reacher{suffix}'
    args = ['view', '--env', 'lewm/Reacher-v0', '--img-size', '48', '--steps', '20', '--out', str(out)]
    assert lewm(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report['out'] == str(out)
    image = Image.open(out)
    assert image.size[0] >= 48 and np.asarray(image.convert('RGB')).std() > 10
