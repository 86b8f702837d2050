"""Start the LeWM planner node.

$ ros2 launch lewm_ros planner.launch.py checkpoint:=/path/to/ckpt
$ ros2 launch lewm_ros planner.launch.py checkpoint:=... device:=cuda namespace:=robot1 \
  camera_topic:=/camera/color/image_raw action_topic:=/forward_command_controller/commands
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = (
    ('checkpoint', '', 'LeWM checkpoint directory (from `lewm train`); required'),
    ('device', 'auto', 'torch device for planning: auto, cpu, cuda'),
    ('params_file', PathJoinSubstitution([FindPackageShare('lewm_ros'), 'config', 'planner.yaml']),
     'ROS parameter file with the planner settings'),
    ('namespace', '', 'namespace for the node and its relative topics'),
    ('frame_driven', 'false', 'true: one action per new camera frame (lock-step simulators)'),
    ('camera_topic', 'camera/image_raw', 'camera image topic to subscribe to'),
    ('goal_topic', 'lewm/goal_image', 'goal image topic to subscribe to'),
    ('action_topic', 'lewm/action', 'topic the actions are published on'),
    ('surprise_topic', 'lewm/surprise', 'topic of the surprise diagnostics'),
)


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments and the planner node with its remappings."""
    args = [DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, default, doc in ARGUMENTS]
    planner = Node(
        package='lewm_ros',
        executable='planner_node',
        name='lewm_planner',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('params_file'),
            {'checkpoint': LaunchConfiguration('checkpoint'), 'device': LaunchConfiguration('device'),
             'frame_driven': LaunchConfiguration('frame_driven')},
        ],
        remappings=[
            ('camera/image_raw', LaunchConfiguration('camera_topic')),
            ('lewm/goal_image', LaunchConfiguration('goal_topic')),
            ('lewm/action', LaunchConfiguration('action_topic')),
            ('lewm/surprise', LaunchConfiguration('surprise_topic')),
        ],
        additional_env={'PYTHONUNBUFFERED': '1'},
    )
    return LaunchDescription([*args, planner])
