"""Action vectors <-> ROS messages, shared by the planner node (publisher) and the sim node (subscriber).

``std_msgs/Float64MultiArray`` carries any action (what ``forward_command_controller`` consumes).
``geometry_msgs/TwistStamped`` suits planar bases: a 2-D action is (linear.x, linear.y), a 3-D one
adds angular.z.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ACTION_TYPES = ('float64_multi_array', 'twist_stamped')
TWIST_DIMS = (2, 3)


def action_message_class(action_type: str) -> type:
    """The message class for ``action_type`` (one of ``ACTION_TYPES``)."""
    if action_type == 'float64_multi_array':
        from std_msgs.msg import Float64MultiArray

        return Float64MultiArray
    if action_type == 'twist_stamped':
        from geometry_msgs.msg import TwistStamped

        return TwistStamped
    raise ValueError(f'action_type must be one of {ACTION_TYPES}, got {action_type!r}')


def check_action_type(action_type: str, action_dim: int) -> None:
    """Fail early when the message type cannot carry ``action_dim`` values."""
    action_message_class(action_type)
    if action_type == 'twist_stamped' and action_dim not in TWIST_DIMS:
        raise ValueError(f'twist_stamped carries 2-D or 3-D actions; this model has {action_dim}-D actions: '
                         "use action_type 'float64_multi_array'")


def action_to_message(action: np.ndarray, action_type: str, stamp: Any = None, frame_id: str = '') -> Any:
    """Wrap an action vector (env units) in a message of ``action_type``."""
    values = [float(v) for v in np.asarray(action, dtype=np.float64).reshape(-1)]
    msg = action_message_class(action_type)()
    if action_type == 'float64_multi_array':
        msg.data = values
        return msg
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.twist.linear.x, msg.twist.linear.y = values[0], values[1]
    if len(values) == 3:
        msg.twist.angular.z = values[2]
    return msg


def message_to_action(msg: Any, action_dim: int) -> np.ndarray:
    """The action vector in ``msg``; raises ``ValueError`` when it does not fit ``action_dim``."""
    if hasattr(msg, 'twist'):
        values = [msg.twist.linear.x, msg.twist.linear.y, msg.twist.angular.z][:action_dim]
    else:
        values = list(msg.data)
    action = np.asarray(values, dtype=np.float64)
    if action.shape != (action_dim,):
        raise ValueError(f'expected a {action_dim}-D action, got {action.size} values')
    if not np.all(np.isfinite(action)):
        raise ValueError(f'action contains NaN or inf: {action.tolist()}')
    return action
