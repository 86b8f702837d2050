"""Sim-in-the-loop: sim_node and planner_node in one process, closing the loop over real DDS topics.

One test uses a tiny random-weight checkpoint (it checks the wiring: actions applied, frames
flowing back, surprise published); the others run ``lewm demo`` on the embedded models with the
planner node's defaults: a few episodes in the default suite, 20 per model in the slow one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('mujoco', reason='the sim node needs mujoco')
rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from ros_test_utils import wait_for  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from lewm_ros.checkpoint import build_metadata, save_checkpoint  # noqa: E402
from lewm_ros.model import LeWM, ModelConfig  # noqa: E402
from lewm_ros.nodes.planner_node import PlannerNode  # noqa: E402
from lewm_ros.nodes.sim_node import SimNode  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = LeWM(ModelConfig.from_preset('micro', frameskip=5))
    path = tmp_path_factory.mktemp('loop') / 'micro'
    save_checkpoint(path, model, build_metadata(model, action_low=[-1.0, -1.0], action_high=[1.0, 1.0],
                                                env_id='lewm/TwoRoom-v0'))
    return path


def test_closed_loop_applies_actions_and_publishes_surprise(rclpy_context, spinner, checkpoint) -> None:
    sim = spinner.add(SimNode(context=rclpy_context, env_id='lewm/TwoRoom-v0', img_size=32, mode='lockstep',
                              control_rate_hz=20.0, episode_steps=1000, auto_reset=False))
    planner = spinner.add(PlannerNode(context=rclpy_context, checkpoint=str(checkpoint), device='cpu',
                                      control_rate_hz=20.0, samples=16, iterations=2, elites=4, horizon=2))
    probe = spinner.add(Node('loop_probe', context=rclpy_context))
    actions, surprise = [], []
    probe.create_subscription(Float64MultiArray, 'lewm/action', lambda m: actions.append(list(m.data)), 100)
    probe.create_subscription(DiagnosticArray, 'lewm/surprise', surprise.append, 100)

    steps = 20
    assert wait_for(lambda: sim.steps >= steps, 60.0), f'the loop made {sim.steps} steps in 60 s'
    # lockstep: every env step was caused by one action of the planner (the probe sees each one,
    # possibly a message later), and every frame it produced was scored by the planner
    stepped = sim.steps
    assert wait_for(lambda: len(actions) >= stepped, 5.0), f'{stepped} steps, {len(actions)} actions seen'
    assert wait_for(lambda: len(surprise) >= steps, 5.0)
    scored = [m for m in surprise if m.status[0].values[0].value != 'nan']
    assert len(scored) >= steps - planner.model.config.frameskip - 1
    assert all(abs(a) <= 1.0 for action in actions for a in action)


def _demo(tmp_path: Path, *args: str) -> dict:
    """Run ``lewm demo`` (the README's main job) in a process of its own; return its JSON summary."""
    # a DDS domain apart from this process's nodes
    env = {**os.environ, 'ROS_DOMAIN_ID': str((int(os.environ.get('ROS_DOMAIN_ID', '0')) + 1) % 100)}
    result = subprocess.run([sys.executable, '-m', 'training.cli', 'demo', '--out', str(tmp_path), *args],
                            capture_output=True, text=True, timeout=1800, cwd=REPO, env=env)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / 'surprise_trace.png').stat().st_size > 10_000
    summary = json.loads((tmp_path / 'demo.json').read_text())
    # the rate is the episodes the demo saw end in success within the paper's 50-step budget
    outcomes = re.findall(r'^episode \d+: (success|no success) after (\d+) steps$', result.stdout, re.M)
    assert len(outcomes) == summary['episodes'], result.stdout[-3000:]
    wins = [int(steps) for outcome, steps in outcomes if outcome == 'success']
    assert summary['success_rate'] == len(wins) / len(outcomes) and all(0 < s <= 50 for s in wins)
    return summary


def test_the_embedded_tworoom_model_reaches_goals_with_the_node_defaults(tmp_path: Path) -> None:
    summary = _demo(tmp_path, '--episodes', '3')
    assert summary['planner_sources']['solver'] == 'checkpoint'  # nothing overrode the stored settings
    # 99.7 % over 300 episodes (docs/results.md): 2 of 3 is a floor with room for a slow machine
    assert summary['episodes'] == 3 and summary['success_rate'] >= 2 / 3, summary
    assert summary['surprise']['teleport_flagged'], summary['surprise']


@pytest.mark.slow
@pytest.mark.parametrize('env,floor', [('tworoom', 0.9), ('reacher', 0.85)])
def test_demo_success_false_flags_and_teleport_over_recolour(tmp_path: Path, env: str, floor: float) -> None:
    """The figures the README quotes, on 20 episodes of each embedded model."""
    summary = _demo(tmp_path, '--env', env, '--episodes', '20')
    print(f"{env}: success {summary['success_rate']:.0%}, surprise {summary['surprise']}")
    assert summary['success_rate'] >= floor
    s = summary['surprise']
    assert s['false_flag_rate'] <= 0.01 and s['teleport_flagged']
