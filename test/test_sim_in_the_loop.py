"""Sim-in-the-loop: sim_node and planner_node in one process, closing the loop over real DDS topics.

The default test uses a tiny random-weight checkpoint (it checks the wiring: actions applied,
frames flowing back, surprise published); the slow one runs ``lewm demo`` on the shipped demo
checkpoint and reports its success rate.
"""

from __future__ import annotations

import json
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
    # lockstep: every env step was caused by one action of the planner, and every frame it
    # produced was scored by the planner (the count lags by at most the message in flight)
    assert len(actions) >= steps and sim.steps <= len(actions) + 1
    assert wait_for(lambda: len(surprise) >= steps, 5.0)
    scored = [m for m in surprise if m.status[0].values[0].value != 'nan']
    assert len(scored) >= steps - planner.model.config.frameskip - 1
    assert all(abs(a) <= 1.0 for action in actions for a in action)


@pytest.mark.slow
def test_demo_runs_reports_success_and_flags_the_teleport(tmp_path: Path) -> None:
    """The README's main job, end to end, on the shipped demo checkpoint (success is reported)."""
    result = subprocess.run([sys.executable, '-m', 'training.cli', 'demo', '--episodes', '5', '--out',
                             str(tmp_path)], capture_output=True, text=True, timeout=1800, cwd=REPO)
    print(result.stdout[-3000:])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / 'demo.json').read_text())
    assert (tmp_path / 'surprise_trace.png').stat().st_size > 10_000
    print(f"demo success rate {summary['success_rate']:.0%} over {summary['episodes']} episodes")
    assert summary['episodes'] == 5 and 0.0 <= summary['success_rate'] <= 1.0
    s = summary['surprise']
    assert s['teleport_score'] is not None and s['teleport_score'] > s['threshold']
    assert s['teleport_score'] > s['recolour_score'] and s['teleport_score'] > 5 * s['normal_median']
