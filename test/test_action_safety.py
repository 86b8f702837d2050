"""The action gate and the bounds it enforces, without ROS: what may reach a robot."""

from __future__ import annotations

import array
import math

import numpy as np
import pytest

from lewm_ros.action_safety import ActionBounds, ActionGate, BoundsError, as_vector


def bounds(**kwargs) -> ActionBounds:
    return ActionBounds.resolve(2, [-1.0, -1.0], [1.0, 1.0], **kwargs)


@pytest.mark.parametrize('value', [[0.5, 0.5], (0.5, 0.5), np.array([0.5, 0.5]),
                                   array.array('d', [0.5, 0.5])])
def test_any_sequence_type_is_read(value) -> None:
    np.testing.assert_array_equal(as_vector(value, 'x'), [0.5, 0.5])


@pytest.mark.parametrize('value,reason', [
    ([math.nan, 0.0], 'finite'), (array.array('d', [math.inf, 0.0]), 'finite'), ('0.5', 'list of numbers'),
    ([True, 0.0], 'list of numbers'), (0.5, 'list of numbers'),
])
def test_non_finite_and_non_numeric_values_are_refused(value, reason: str) -> None:
    with pytest.raises(BoundsError, match=reason):
        as_vector(value, 'action_high')


def test_empty_means_unset() -> None:
    assert as_vector([], 'x') is None and as_vector(array.array('d'), 'x') is None
    assert as_vector(None, 'x') is None


def test_parameters_only_tighten_the_checkpoint_bounds() -> None:
    b = bounds(low=[-2.0, -0.5], high=[3.0, 0.25])
    np.testing.assert_array_equal(b.low, [-1.0, -0.5])
    np.testing.assert_array_equal(b.high, [1.0, 0.25])


@pytest.mark.parametrize('kwargs,reason', [
    ({'low': [0.5, 0.5], 'high': [0.2, 0.2]}, 'empty'),
    ({'low': [2.0, 2.0]}, 'no room inside the checkpoint'),
    ({'high': [-1.0, 0.0]}, 'empty'),
    ({'low': [0.0]}, '2 values'),
])
def test_a_pair_that_would_empty_the_box_is_refused(kwargs, reason: str) -> None:
    with pytest.raises(BoundsError, match=reason):
        bounds(**kwargs)


def test_no_bounds_need_an_explicit_opt_out() -> None:
    with pytest.raises(BoundsError, match='allow_unbounded_actions'):
        ActionBounds.resolve(2, None, None)
    with pytest.raises(BoundsError, match='allow_unbounded_actions'):
        ActionBounds.resolve(2, None, None, high=[1.0, 1.0])  # one side is not enough
    assert ActionBounds.resolve(2, None, None, low=[-1, -1], high=[1, 1]).bounded
    assert not ActionBounds.resolve(2, None, None, allow_unbounded=True).bounded


def test_checkpoint_bounds_that_are_inverted_or_not_finite_are_refused() -> None:
    with pytest.raises(BoundsError, match='empty'):
        ActionBounds.resolve(2, [1.0, 1.0], [-1.0, -1.0])
    with pytest.raises(BoundsError, match='finite'):
        ActionBounds.resolve(2, [-1.0, -1.0], [math.nan, 1.0])


def test_gate_clips_finite_actions_and_replaces_bad_ones_with_the_safe_action() -> None:
    gate = ActionGate(bounds(low=[-0.3, -0.2], high=[0.3, 0.25]))
    sent, problem = gate.gate(np.array([0.9, -0.9]))
    np.testing.assert_array_equal(sent, [0.3, -0.2])
    assert problem is None
    for bad in ([math.nan, 0.0], [0.0, math.inf], [0.1]):
        sent, problem = gate.gate(np.array(bad))
        np.testing.assert_array_equal(sent, [0.0, 0.0])
        assert problem


def test_safe_action_is_clipped_to_the_bounds_in_force() -> None:
    # zero outside the box: the nearest command inside it, never zero itself
    gate = ActionGate(bounds(low=[0.2, -1.0], high=[0.5, 1.0]), 'zero')
    np.testing.assert_array_equal(gate.gate(None)[0], [0.2, 0.0])
    hold = ActionGate(bounds(), 'hold')
    hold.gate(np.array([0.8, -0.6]))
    hold.bounds = bounds(low=[-0.5, -0.5], high=[0.5, 0.5])
    np.testing.assert_array_equal(hold.gate(None)[0], [0.5, -0.5])
