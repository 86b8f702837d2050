"""The console scripts of the nodes (``ros2 run lewm_ros planner_node``, ...).

Each catches SIGINT and SIGTERM before it imports its node: importing torch and rclpy takes
seconds on a small robot computer, and a Ctrl-C in that time should end in a clean exit, not a
``KeyboardInterrupt`` traceback from deep inside an import.
"""

from __future__ import annotations

from lewm_ros.nodes.node_runner import catch_signals


def planner_node() -> int:
    """``ros2 run lewm_ros planner_node``."""
    catch_signals()
    from lewm_ros.nodes.planner_node import main

    return main()


def sim_node() -> int:
    """``ros2 run lewm_ros sim_node``."""
    catch_signals()
    from lewm_ros.nodes.sim_node import main

    return main()


def goal_publisher() -> int:
    """``ros2 run lewm_ros goal_publisher``."""
    catch_signals()
    from lewm_ros.nodes.goal_publisher import main

    return main()
