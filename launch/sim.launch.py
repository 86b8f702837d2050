"""Sim-in-the-loop: a lewm MuJoCo task (sim_node) driven by the LeWM planner (planner.launch.py).

$ ros2 launch lewm_ros sim.launch.py checkpoint:=/path/to/ckpt env_id:=lewm/TwoRoom-v0
$ ros2 topic echo /lewm/surprise
$ ros2 service call /sim/teleport std_srvs/srv/Trigger
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = (
    ('checkpoint', '', 'LeWM checkpoint directory trained on this task; required'),
    ('device', 'auto', 'torch device for planning: auto, cpu, cuda'),
    ('env_id', 'lewm/TwoRoom-v0', 'task to simulate'),
    ('img_size', '64', 'camera image size (match the checkpoint to avoid resizing)'),
    ('mode', 'lockstep', 'lockstep (one env step per action) or realtime'),
    ('seed', '0', 'seed of the first episode'),
    ('namespace', '', 'namespace for both nodes'),
    ('sim_params_file', PathJoinSubstitution([FindPackageShare('lewm_ros'), 'config', 'sim.yaml']),
     'ROS parameter file with the sim settings'),
)


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments, the sim node and the planner launch file."""
    share = FindPackageShare('lewm_ros')
    args = [DeclareLaunchArgument(name, default_value=default, description=doc)
            for name, default, doc in ARGUMENTS]
    sim = Node(
        package='lewm_ros',
        executable='sim_node',
        name='lewm_sim',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[
            LaunchConfiguration('sim_params_file'),
            {'env_id': LaunchConfiguration('env_id'), 'img_size': LaunchConfiguration('img_size'),
             'mode': LaunchConfiguration('mode'), 'seed': LaunchConfiguration('seed')},
        ],
        additional_env={'PYTHONUNBUFFERED': '1', 'MUJOCO_GL': 'egl'},
    )
    # In lock-step the next frame answers the last action: the planner acts once per frame.
    lockstep = PythonExpression(["'", LaunchConfiguration('mode'), "' == 'lockstep'"])
    planner = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([share, 'launch', 'planner.launch.py'])),
        launch_arguments={'checkpoint': LaunchConfiguration('checkpoint'),
                          'device': LaunchConfiguration('device'),
                          'namespace': LaunchConfiguration('namespace'),
                          'frame_driven': lockstep}.items(),
    )
    return LaunchDescription([*args, sim, planner])
