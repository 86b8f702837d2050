"""The sim-in-the-loop demo (``lewm demo``): sim node and planner node over real ROS 2 topics.

Separate from evaluation: it runs the ROS nodes themselves (rclpy), where ``lewm eval`` calls the
planner directly.
"""
