"""planner_node and the planner settings a checkpoint carries: unset parameters mean the checkpoint's.

Over real rclpy: the embedded models start with their own settings, a parameter given at start
or at run time wins over them (and 0/'' gives them back), and a bad stored setting stops the node
with a message naming the key.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed')
from rclpy.parameter import Parameter  # noqa: E402
from ros_test_utils import wait_for  # noqa: E402

from lewm_ros.checkpoint import build_metadata, read_metadata, save_checkpoint, update_metadata  # noqa: E402
from lewm_ros.model import LeWM, ModelConfig  # noqa: E402
from lewm_ros.nodes.planner_node import PlannerNode  # noqa: E402
from lewm_ros.paths import share_dir  # noqa: E402
from lewm_ros.planning import PlannerConfig  # noqa: E402
from lewm_ros.planning.settings import STORED_KEYS, resolve, settings_block  # noqa: E402

EMBEDDED = ('tworoom', 'reacher')
STORED = PlannerConfig(solver='mppi', samples=24, iterations=3, elites=6, horizon=3, receding_horizon=2,
                       goal_cost='mean', goal_metric='euclidean')


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = LeWM(ModelConfig.from_preset('micro', frameskip=5))
    path = save_checkpoint(tmp_path_factory.mktemp('settings') / 'micro', model,
                           build_metadata(model, action_low=[-1, -1], action_high=[1, 1]))
    update_metadata(path, 'planner', settings_block(STORED, 'test'))
    return path


def _node(rclpy_context, spinner, checkpoint, **params) -> PlannerNode:
    # frame driven: the plan budget is 2 s, so no setting here is capped to fit a control period
    return spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(checkpoint), device='cpu',
                                   frame_driven=True, **params))


@pytest.mark.parametrize('name', EMBEDDED)
def test_an_embedded_model_alone_plans_with_its_stored_settings(rclpy_context, spinner, name: str) -> None:
    path = share_dir() / 'models' / name
    meta = read_metadata(path)
    assert meta.get('planner'), f'{path} carries no planner settings (run `lewm tune`)'
    node = _node(rclpy_context, spinner, path)
    expected = resolve(meta).config
    in_force = node.mpc.planner.config
    for key in STORED_KEYS:
        assert getattr(node.settings.config, key) == getattr(expected, key), key
        assert node.settings.sources[key] == 'checkpoint', key
    for key in ('solver', 'horizon', 'receding_horizon', 'goal_cost', 'goal_metric', 'icem_white_fraction'):
        assert getattr(in_force, key) == getattr(expected, key), key
    assert node.mpc.replan_every == expected.receding_horizon
    assert node.mpc.surprise_threshold == meta['surprise']['threshold']


def test_parameters_given_at_start_win_and_the_rest_stay_the_checkpoints(rclpy_context, spinner,
                                                                         checkpoint) -> None:
    node = _node(rclpy_context, spinner, checkpoint, samples=40, goal_cost='final')
    config = node.mpc.planner.config
    assert (config.samples, config.goal_cost) == (40, 'final')
    assert (config.solver, config.iterations, config.horizon, node.mpc.replan_every) == ('mppi', 3, 3, 2)
    assert node.settings.sources['samples'] == 'parameter' and node.settings.sources['solver'] == 'checkpoint'


def test_the_paper_preset_replaces_the_stored_settings(rclpy_context, spinner, checkpoint) -> None:
    node = _node(rclpy_context, spinner, checkpoint, planner_preset='paper', iterations=2)
    config = node.mpc.planner.config
    assert (config.solver, config.samples, config.horizon, config.goal_cost) == ('cem', 300, 5, 'final')
    assert config.iterations == 2 and node.mpc.replan_every == 5


def test_a_run_time_update_wins_and_zero_gives_the_checkpoints_back(rclpy_context, spinner,
                                                                     checkpoint) -> None:
    node = _node(rclpy_context, spinner, checkpoint)
    assert node.set_parameters([Parameter('samples', value=12)])[0].successful
    assert wait_for(lambda: node.mpc.planner.config.samples == 12, 10.0)  # the loop's next tick rebuilds
    assert node.settings.sources['samples'] == 'parameter' and node.settings.sources['samples'] == 'parameter'
    assert node.set_parameters([Parameter('samples', value=0)])[0].successful
    assert wait_for(lambda: node.mpc.planner.config.samples == STORED.samples, 10.0)
    assert node.settings.sources['samples'] == 'checkpoint'


def test_an_update_the_checkpoint_cannot_serve_is_rejected(rclpy_context, spinner, checkpoint) -> None:
    node = _node(rclpy_context, spinner, checkpoint)
    result = node.set_parameters([Parameter('goal_metric', value='whitened')])[0]
    assert not result.successful and 'lewm calibrate' in result.reason
    assert node.mpc.planner.config.goal_metric == 'euclidean'


def test_a_bad_stored_setting_stops_the_node_naming_the_key(tmp_path: Path, checkpoint: Path) -> None:
    bad = tmp_path / 'bad'
    subprocess.run(['cp', '-r', str(checkpoint), str(bad)], check=True)
    meta = json.loads((bad / 'meta.json').read_text())
    meta['planner']['settings']['solver'] = 'gradient-descent'
    (bad / 'meta.json').write_text(json.dumps(meta))
    result = subprocess.run([sys.executable, '-m', 'lewm_ros.nodes.planner_node', '--ros-args', '-p',
                             f'checkpoint:={bad}'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "planner.settings.solver'" in result.stderr + result.stdout
