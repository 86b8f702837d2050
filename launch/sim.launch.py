"""Sim-in-the-loop: a lewm MuJoCo task (sim_node) driven by the LeWM planner (planner.launch.py).

$ ros2 launch lewm_ros sim.launch.py checkpoint:=/path/to/ckpt env_id:=lewm/TwoRoom-v0
$ ros2 topic echo /lewm/surprise
$ ros2 service call /sim/teleport std_srvs/srv/Trigger

A topic argument shared by the two nodes (camera, goal, action, action_type) is passed to both, so
the loop stays closed. An argument left empty (its default) passes nothing: the value in the
node's parameter file stands. If either node exits, the launch shuts down; if one exits with an
error (bad checkpoint, unknown env_id, no renderer), ``ros2 launch`` exits with code 1.
"""

import os
import sys

import yaml
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
    Shutdown,
)
from launch.event_handlers import OnProcessExit
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, ThisLaunchFileDir
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# (argument = the parameter of the same name, its type, description). Empty: not passed.
# Parameters of both nodes: the sim publishes what the planner subscribes to, and the other way round.
SHARED_ARGUMENTS = (
    ('camera_topic', str, 'camera image topic (sim out, planner in)'),
    ('goal_topic', str, 'goal image topic (sim out, planner in)'),
    ('action_topic', str, 'action topic (planner out, sim in)'),
    ('action_type', str, 'message type of the actions: float64_multi_array, twist_stamped'),
)
# Parameters of the sim node only.
SIM_ARGUMENTS = (
    ('env_id', str, 'task to simulate: lewm/TwoRoom-v0, lewm/Reacher-v0, lewm/PushT-v0, lewm/Cube-v0'),
    ('img_size', int, 'camera image size (match the checkpoint to avoid resizing)'),
    ('mode', str, 'lockstep (one env step per action; the planner acts once per frame) or realtime'),
    ('seed', int, 'seed of the first episode'),
    ('success_topic', str, 'topic of the success flag (std_msgs/Bool)'),
)
# Arguments of planner.launch.py (parameters of the planner only). camera_transport is not offered:
# the sim publishes raw images only.
PLANNER_ARGUMENTS = (
    ('checkpoint', str, 'LeWM checkpoint directory trained on this task; required'),
    ('device', str, 'torch device for planning: auto, cpu, cuda, mps'),
    ('camera_qos', str, 'QoS of the planner camera subscription: auto, sensor_data, reliable'),
    ('plan_topic', str, 'topic of the whole planned action sequence'),
    ('surprise_topic', str, 'topic of the surprise diagnostics'),
    ('surprise_score_topic', str, 'topic of the bare surprise score (empty in the planner params_file: '
     '<surprise_topic>/score)'),
)
# (argument, default, description): how the nodes are started.
ARGUMENTS = (
    ('namespace', '', 'namespace for both nodes'),
    ('sim_params_file', PathJoinSubstitution([FindPackageShare('lewm_ros'), 'config', 'sim.yaml']),
     'ROS parameter file with the sim settings'),
    ('params_file', PathJoinSubstitution([FindPackageShare('lewm_ros'), 'config', 'planner.yaml']),
     'ROS parameter file with the planner settings'),
)
SIM_NODE = 'lewm_sim'
DEFAULT_MODE = 'lockstep'  # sim_node's default


def given_parameters(context, table) -> dict:
    """The parameters of ``table`` whose launch argument is not empty.

    Strings stay strings (a topic or a path is never read as YAML); other values are read as YAML
    and checked by the node, which names the parameter when one has the wrong type.
    """
    return {name: ParameterValue(LaunchConfiguration(name), value_type=str if kind is str else None)
            for name, kind, _ in table if LaunchConfiguration(name).perform(context)}


def forwarded(table) -> list:
    """The arguments of ``table`` passed on, as they are (empty included), to the included launch file."""
    return [(name, LaunchConfiguration(name)) for name, _, _ in table]


def shut_down_when_it_exits(node: Node, label: str) -> RegisterEventHandler:
    """End the whole launch when ``node``'s process exits; an exit code other than 0 fails it.

    ``LaunchService.run()`` (so ``ros2 launch``) returns 1 only when an action or event handler
    raises (Humble, Jazzy and Kilted alike): a ``Shutdown`` alone ends the launch with 0.
    """
    def on_exit(event, context):
        if event.returncode != 0:
            raise RuntimeError(f'{label} exited with code {event.returncode}: shutting down')
        return [Shutdown(reason=f'{label} exited')]

    return RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))


def sim_mode(context) -> str:
    """The sim's mode: the mode argument, else the one in sim_params_file, else the node's default."""
    mode = LaunchConfiguration('mode').perform(context)
    if mode:
        return mode
    try:
        with open(LaunchConfiguration('sim_params_file').perform(context)) as f:
            sections = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):  # the sim node reports a bad file itself and stops the launch
        return DEFAULT_MODE
    for key, section in (sections or {}).items() if isinstance(sections, dict) else ():
        # '/**/lewm_sim', 'lewm_sim', '/robot1/lewm_sim', '/**': the sections that reach the sim node.
        if str(key).rstrip('/').rsplit('/', 1)[-1] in (SIM_NODE, '*', '**') and isinstance(section, dict):
            mode = (section.get('ros__parameters') or {}).get('mode', mode)
    return mode or DEFAULT_MODE


def launch_sim_and_planner(context):
    """The sim node, the planner (frame-driven when the sim is lock-step), and their exit handlers."""
    sim = Node(
        package='lewm_ros',
        executable='sim_node',
        name=SIM_NODE,
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        # A pseudo-terminal makes the node colour its logs: only when ours is a terminal.
        emulate_tty=sys.stdout.isatty(),
        parameters=[LaunchConfiguration('sim_params_file'),
                    given_parameters(context, SHARED_ARGUMENTS + SIM_ARGUMENTS)],
        additional_env={'PYTHONUNBUFFERED': '1', 'MUJOCO_GL': os.environ.get('MUJOCO_GL', 'egl')},
    )
    # In lock-step the next frame answers the last action: the planner acts once per frame.
    frame_driven = 'true' if sim_mode(context) == 'lockstep' else 'false'
    planner = IncludeLaunchDescription(
        # The planner launch file next to this one (installed or in the source tree alike).
        PythonLaunchDescriptionSource(PathJoinSubstitution([ThisLaunchFileDir(), 'planner.launch.py'])),
        launch_arguments=[*forwarded(SHARED_ARGUMENTS + PLANNER_ARGUMENTS),
                          ('namespace', LaunchConfiguration('namespace')),
                          ('params_file', LaunchConfiguration('params_file')),
                          ('frame_driven', frame_driven)],
    )
    return [sim, shut_down_when_it_exits(sim, SIM_NODE), planner]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments, then the sim node and the planner launch file."""
    args = [DeclareLaunchArgument(name, default_value='', description=f'{doc} (empty: from the params file)')
            for name, _, doc in SHARED_ARGUMENTS + SIM_ARGUMENTS + PLANNER_ARGUMENTS]
    args += [DeclareLaunchArgument(name, default_value=default, description=doc)
             for name, default, doc in ARGUMENTS]
    return LaunchDescription([*args, OpaqueFunction(function=launch_sim_and_planner)])
