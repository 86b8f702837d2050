"""lewm_ros: LeWorldModel on a robot through ROS 2.

The runtime package. ``lewm_ros.model``, ``lewm_ros.planning`` and ``lewm_ros.surprise`` are pure
torch/numpy; ``lewm_ros.nodes`` is the thin ROS 2 edge; ``lewm_ros.sim`` holds the MuJoCo tasks and is
the only place that imports mujoco.
"""

__version__ = '0.1.0'
