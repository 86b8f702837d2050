"""ROS 2 nodes: the thin edge between topics and the pure-torch planner, surprise monitor and sim."""
