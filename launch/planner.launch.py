"""Start the LeWM planner node.

$ ros2 launch lewm_ros planner.launch.py checkpoint:=/path/to/ckpt
$ ros2 launch lewm_ros planner.launch.py checkpoint:=... device:=cuda namespace:=robot1 \
  camera_topic:=/camera/color/image_raw camera_transport:=compressed \
  action_topic:=/cmd_vel action_type:=twist_stamped

Topics are parameters of the node, not remappings (remapping ``lewm/surprise`` would not move
``lewm/surprise/score``). A parameter argument left empty (its default) passes nothing, so the value
in ``params_file`` stands. If the planner exits with an error (a checkpoint that cannot be loaded),
the launch shuts down and ``ros2 launch`` exits with code 1.
"""

import sys

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# (argument = the planner parameter of the same name, its type, description). Empty: not passed.
PLANNER_ARGUMENTS = (
    ('checkpoint', str, 'LeWM checkpoint directory (from `lewm train`); required, here or in params_file'),
    ('device', str, 'torch device for planning: auto, cpu, cuda, mps'),
    ('camera_topic', str, 'camera image topic to subscribe to'),
    ('camera_transport', str, 'raw, or compressed: subscribe to <camera_topic>/compressed'),
    ('camera_qos', str, 'QoS of the camera subscription: auto, sensor_data, reliable'),
    ('goal_topic', str, 'goal image topic to subscribe to'),
    ('action_topic', str, 'topic the actions are published on'),
    ('action_type', str, 'message type of the actions: float64_multi_array, twist_stamped'),
    ('plan_topic', str, 'topic of the whole planned action sequence'),
    ('surprise_topic', str, 'topic of the surprise diagnostics'),
    ('surprise_score_topic', str, 'topic of the bare surprise score (empty in params_file: '
     '<surprise_topic>/score)'),
    ('diagnostics_topic', str, 'topic of the node health diagnostics'),
    ('frame_driven', bool, 'true: one action per new camera frame (lock-step simulators)'),
)
# (argument, default, description): how the node is started.
ARGUMENTS = (
    ('params_file', PathJoinSubstitution([FindPackageShare('lewm_ros'), 'config', 'planner.yaml']),
     'ROS parameter file with the planner settings'),
    ('namespace', '', 'namespace for the node and its relative topics'),
)


def given_parameters(context, table) -> dict:
    """The parameters of ``table`` whose launch argument is not empty.

    Strings stay strings (a topic or a path is never read as YAML); other values are read as YAML
    and checked by the node, which names the parameter when one has the wrong type.
    """
    return {name: ParameterValue(LaunchConfiguration(name), value_type=str if kind is str else None)
            for name, kind, _ in table if LaunchConfiguration(name).perform(context)}


def shut_down_when_it_exits(node: Node, label: str) -> RegisterEventHandler:
    """End the whole launch when ``node``'s process exits; an exit code other than 0 fails it.

    ``LaunchService.run()`` (so ``ros2 launch``) returns 1 only when an action or event handler
    raises (Humble, Jazzy and Kilted alike): a ``Shutdown`` alone ends the launch with 0. Raising
    here makes launch log the message, shut everything down and return 1.
    """
    def on_exit(event, context):
        if event.returncode != 0:
            raise RuntimeError(f'{label} exited with code {event.returncode}: shutting down')
        return [Shutdown(reason=f'{label} exited')]

    return RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_exit))


def launch_planner(context):
    """The planner node, with only the parameter arguments that were given, and its exit handler."""
    planner = Node(
        package='lewm_ros',
        executable='planner_node',
        name='lewm_planner',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        # A pseudo-terminal makes the node colour its logs: only when ours is a terminal.
        emulate_tty=sys.stdout.isatty(),
        parameters=[LaunchConfiguration('params_file'), given_parameters(context, PLANNER_ARGUMENTS)],
        additional_env={'PYTHONUNBUFFERED': '1'},
    )
    return [planner, shut_down_when_it_exits(planner, 'lewm_planner')]


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the planner node."""
    args = [DeclareLaunchArgument(name, default_value='', description=f'{doc} (empty: from params_file)')
            for name, _, doc in PLANNER_ARGUMENTS]
    args += [DeclareLaunchArgument(name, default_value=default, description=doc)
             for name, default, doc in ARGUMENTS]
    return LaunchDescription([*args, OpaqueFunction(function=launch_planner)])
