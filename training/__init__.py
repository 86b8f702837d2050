"""Offline tools for lewm_ros: collect or import episodes, train, evaluate and benchmark LeWM.

Never imported by a ROS node: the planner runs on robots without mujoco or h5py.
"""
