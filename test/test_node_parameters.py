"""The parameter tables, the shipped YAML files and --help agree, and validation rejects bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lewm_ros.nodes.parameter_specs import ParamSpec, usage, wants_help
from lewm_ros.nodes.planner_params import PLANNER_PARAMS

CONFIG = Path(__file__).resolve().parent.parent / 'config'


def _yaml_params(name: str, node: str) -> dict:
    data = yaml.safe_load((CONFIG / name).read_text())
    return data[f'/**/{node}']['ros__parameters']


def _sim_params() -> tuple[ParamSpec, ...]:
    pytest.importorskip('mujoco', reason='the sim node needs mujoco')
    pytest.importorskip('rclpy', reason='the sim node needs rclpy')
    from lewm_ros.nodes.sim_node import PARAMS

    return PARAMS


@pytest.mark.parametrize('file,node,specs', [
    ('planner.yaml', 'lewm_planner', lambda: PLANNER_PARAMS),
    ('sim.yaml', 'lewm_sim', _sim_params),
])
def test_yaml_defaults_match_the_declared_defaults(file: str, node: str, specs) -> None:
    # Array parameters default to [] (unset), which a ROS YAML file cannot spell: they stay comments.
    declared = {s.name: s.default for s in specs() if s.array_of is None}
    assert _yaml_params(file, node) == declared


def test_every_default_passes_its_own_validation() -> None:
    for spec in PLANNER_PARAMS:
        if spec.default is not None:
            assert spec.check(spec.default) is None, spec.name


@pytest.mark.parametrize('name,value,reason', [
    ('device', 'tpu', 'one of'),
    ('control_rate_hz', 0.0, '>='),
    ('samples', -1, '>='),
    ('safe_action', 'brake', 'one of'),
    ('stale_timeout', float('nan'), 'NaN'),
])
def test_bad_values_are_rejected_with_a_reason(name: str, value, reason: str) -> None:
    spec = next(s for s in PLANNER_PARAMS if s.name == name)
    problem = spec.check(value)
    assert problem is not None and reason in problem and name in problem


def test_help_lists_every_parameter() -> None:
    text = usage('planner_node', 'summary', PLANNER_PARAMS)
    assert text.startswith('usage: ros2 run lewm_ros planner_node')
    for spec in PLANNER_PARAMS:
        assert f'  {spec.name} (default' in text


def test_help_flag_is_seen_only_before_ros_args() -> None:
    assert wants_help(['planner_node', '--help'])
    assert not wants_help(['planner_node', '--ros-args', '-p', 'x:=--help'])
