"""planner_node with the goal-conditioned controller: the same safety, surprise and refusals as any solver.

Real rclpy over DDS, a real checkpoint directory holding a world model and a controller.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed')
import torch  # noqa: E402
from rclpy.node import Node  # noqa: E402
from ros_test_utils import wait_for  # noqa: E402
from test_planner_node import RATE_HZ, Harness, image, wait_ticks  # noqa: E402

from lewm_ros.checkpoint import CheckpointError, build_metadata, save_checkpoint, save_controller  # noqa: E402
from lewm_ros.model import LeWM, ModelConfig  # noqa: E402
from lewm_ros.nodes.planner_node import PlannerNode  # noqa: E402
from lewm_ros.planning.controller import ControllerConfig, GoalController  # noqa: E402


def _checkpoint(path: Path, controller: bool) -> Path:
    torch.manual_seed(0)
    model = LeWM(ModelConfig.from_preset('micro', frameskip=2), action_mean=[0.0, 0.0], action_std=[0.5, 0.5])
    save_checkpoint(path, model, build_metadata(model, action_low=[-1.0, -1.0], action_high=[1.0, 1.0]))
    if controller:
        mc = model.config
        head = GoalController(ControllerConfig(mc.embed_dim, mc.action_dim, mc.frameskip, history=mc.history,
                                               hidden=32, depth=1))
        torch.nn.init.normal_(head.head.weight, std=1.0)  # large actions: the bounds must bind
        save_controller(path, head)
    return path


@pytest.fixture(scope='module')
def with_controller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp('controller_node') / 'with', controller=True)


@pytest.fixture(scope='module')
def without_controller(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp('controller_node') / 'without', controller=False)


def _start(rclpy_context, spinner, checkpoint: Path, **params) -> tuple[PlannerNode, Harness]:
    node = spinner.add(
        PlannerNode(
            context=rclpy_context, checkpoint=str(checkpoint), device='cpu', control_rate_hz=RATE_HZ, **params
        )
    )
    harness = Harness(spinner.add(Node('planner_harness', context=rclpy_context)))
    assert wait_for(lambda: harness.camera.get_subscription_count() > 0, 10.0)
    return node, harness


def test_controller_actions_stay_in_bounds_surprise_flows_and_staleness_sends_the_safe_action(
    rclpy_context, spinner, with_controller
) -> None:
    node, h = _start(
        rclpy_context,
        spinner,
        with_controller,
        solver='controller',
        action_low=[-0.3, -0.3],
        action_high=[0.4, 0.4],
        stale_timeout=0.3,
        surprise_threshold=0.0,
    )
    assert node.mpc.planner.config.solver == 'controller' and node.controller is not None
    h.goal.publish(image(h.rng))
    with h.streaming():
        assert wait_for(lambda: len(h.actions) >= 12 and len(h.surprise) >= 4, 20.0)
    planned = np.stack([a for _, a in h.actions])
    assert np.isfinite(planned).all()
    assert (planned >= -0.3 - 1e-9).all() and (planned <= 0.4 + 1e-9).all()
    assert np.isclose(planned, -0.3).any() or np.isclose(planned, 0.4).any(), 'the bounds never bound'
    assert node.planner_errors == 0
    # surprise is scored and flagged as with any solver (threshold 0: every scored frame)
    scored = [m.status[0] for m in h.surprise if m.status[0].values[0].value != 'nan']
    assert scored, 'no frame was scored'
    assert all(status.level == status.WARN for status in scored)
    # the camera goes quiet: the safe action (zero), as with any solver
    assert wait_for(lambda: node.safe_actions.get('camera stale', 0) >= 2, 10.0)
    with node._send_lock:
        first_stale = node.actions_sent - node.safe_actions['camera stale']
    wait_ticks(node, 2)
    assert wait_for(lambda: len(h.actions) >= first_stale + 2, 10.0)
    for _, action in h.actions[first_stale:]:
        np.testing.assert_array_equal(action, np.zeros(2))


def test_solver_controller_without_a_controller_stops_the_node_with_the_reason(
    rclpy_context, without_controller
) -> None:
    with pytest.raises(CheckpointError, match='lewm train-controller'):
        PlannerNode(
            context=rclpy_context, checkpoint=str(without_controller), device='cpu', solver='controller'
        )


FAST = {'samples': 16, 'iterations': 2, 'elites': 4, 'horizon': 2}


def test_switching_to_the_hybrid_at_run_time_is_refused_without_a_controller(
    rclpy_context, spinner, without_controller
) -> None:
    node, h = _start(rclpy_context, spinner, without_controller, **FAST)
    result = h.set_params(proposal='controller')[0]
    assert not result.successful and 'lewm train-controller' in result.reason
    assert node.params['proposal'] == '' and node.mpc.planner.config.proposal == 'none'


def test_switching_to_the_hybrid_at_run_time_takes_effect_with_one(
    rclpy_context, spinner, with_controller
) -> None:
    node, h = _start(rclpy_context, spinner, with_controller, **FAST)
    assert node.mpc.planner.config.proposal == 'none'
    assert h.set_params(proposal='controller')[0].successful
    h.goal.publish(image(h.rng))
    with h.streaming():  # the loop rebuilds the planner between two plans
        assert wait_for(
            lambda: node.mpc.planner.config.proposal == 'controller' and len(h.actions) >= 3, 20.0
        )
    assert node.mpc.planner.controller is not None
