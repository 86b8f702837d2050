"""Declarative node parameters: one table gives the declarations, validation and ``--help`` text.

Keeping the three in one place means a parameter can never be documented with one range and
validated with another. rclpy is imported lazily so the table (and ``--help``) work without ROS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: its default, what it means, and the values it accepts."""

    name: str
    default: Any
    description: str
    read_only: bool = True
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    array_of: type | None = None  # element type of an array parameter whose default [] means unset

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not acceptable, or None when it is.

        Arrays are checked element by element whatever their type: rclpy hands ``array.array``
        to parameter callbacks, not lists.
        """
        if self.choices and value not in self.choices:
            return f'{self.name} must be one of {list(self.choices)}, got {value!r}'
        is_array = isinstance(value, Iterable) and not isinstance(value, (str, bytes))
        if self.array_of is not None and not is_array:
            return f'{self.name} must be a list of numbers, got {value!r}'
        values = list(value) if is_array else [value]
        for v in values:
            if self.array_of is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
                return f'{self.name} must be a list of numbers, got {list(values)!r}'
            if isinstance(v, float) and math.isnan(v):
                return f'{self.name} must not be NaN'
            if isinstance(v, float) and (is_array or self.low is not None) and math.isinf(v):
                return f'{self.name} must be finite, got {v}'
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if self.low is not None and v < self.low:
                    return f'{self.name} must be >= {self.low}, got {v}'
                if self.high is not None and v > self.high:
                    return f'{self.name} must be <= {self.high}, got {v}'
        return None


def declare(node: Any, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """Declare every parameter on ``node`` with a descriptor; return the validated start values.

    Raises ``ValueError`` naming each bad value, so a bad YAML file stops the node at start.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    from rclpy.exceptions import ParameterException
    from rclpy.parameter import Parameter

    values, problems = {}, []
    for spec in specs:
        descriptor = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
        if spec.choices:
            descriptor.additional_constraints = f'one of {list(spec.choices)}'
        if spec.low is not None and spec.high is not None and not isinstance(spec.default, (list, tuple)):
            if isinstance(spec.default, float):
                descriptor.floating_point_range = [FloatingPointRange(from_value=float(spec.low),
                                                                      to_value=float(spec.high))]
            elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
                descriptor.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high))]
        default = spec.default
        if spec.array_of is not None:
            # An empty default has no type of its own (rclpy would call it a byte array), so array
            # parameters are dynamically typed; check() keeps their elements numbers. Declared with
            # a value, never as NOT_SET, so `ros2 param get/dump` can read every parameter.
            descriptor.dynamic_typing = True
            default = list(default)
        try:
            value = node.declare_parameter(spec.name, default, descriptor).value
        except ParameterException as err:  # rclpy's own range/type checks on the override
            problems.append(f'{spec.name}: {err}')
            continue
        if spec.array_of is not None and value is None:  # `name: []` in a YAML file reads as NOT_SET
            node.set_parameters([Parameter(spec.name, Parameter.Type.DOUBLE_ARRAY, [])])
            value = []
        problem = None if value is None else spec.check(value)
        if problem:
            problems.append(problem)
        values[spec.name] = value
    if problems:
        raise ValueError('invalid parameters: ' + '; '.join(problems))
    return values


def usage(executable: str, summary: str, specs: Iterable[ParamSpec], extra: str = '') -> str:
    """The text ``<executable> --help`` prints: how to run it and every parameter."""
    lines = [f'usage: ros2 run lewm_ros {executable} [--ros-args -p NAME:=VALUE ... '
             f'--params-file FILE]', '', summary, '', 'parameters:']
    for spec in specs:
        has_range = spec.low is not None or spec.high is not None
        accepted = (f'; one of {list(spec.choices)}' if spec.choices else
                    f'; range [{spec.low}, {spec.high}]' if has_range else '')
        mode = 'read-only' if spec.read_only else 'dynamic'
        default = repr(list(spec.default)) if spec.array_of is not None else repr(spec.default)
        lines.append(f'  {spec.name} (default {default}; {mode}{accepted})')
        lines.append(f'      {spec.description}')
    if extra:
        lines += ['', extra]
    return '\n'.join(lines)


def wants_help(argv: Sequence[str]) -> bool:
    """True when ``-h``/``--help`` comes before any ``--ros-args`` section."""
    head = list(argv[1:])
    if '--ros-args' in head:
        head = head[:head.index('--ros-args')]
    return '-h' in head or '--help' in head
