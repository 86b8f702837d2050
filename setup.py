"""Build script for lewm_ros: one ament_python package that also installs with plain pip."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'lewm_ros'


def share(*patterns: str) -> list[str]:
    """Files matching ``patterns``, sorted, so the install manifest is stable."""
    return sorted(f for pattern in patterns for f in glob(pattern))


setup(
    name=PACKAGE,
    version='0.1.0',
    description='LeWorldModel (LeWM) world model, latent planner and surprise monitor for ROS 2.',
    license='Apache-2.0',
    python_requires='>=3.10',
    # Two import packages from one distribution: the runtime (lewm_ros) and the offline tools
    # (training). Plain directories, no package_dir mapping, so `pip install .`, `pip install -e .`
    # and `colcon build --symlink-install` (setup.py develop) all see the same layout.
    packages=find_packages(include=[PACKAGE, f'{PACKAGE}.*', 'training', 'training.*']),
    package_data={PACKAGE: ['sim/assets/*.xml']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        (f'share/{PACKAGE}/launch', share('launch/*.launch.py')),
        (f'share/{PACKAGE}/config', share('config/*.yaml')),
        (f'share/{PACKAGE}/config/train', share('config/train/*.yaml')),
        (f'share/{PACKAGE}/config/recipes', share('config/recipes/*.yaml')),
        # The embedded models, each built by its recipe config/recipes/<name>-cpu.yaml (lewm suite).
        (f'share/{PACKAGE}/models/tworoom', share('models/tworoom/*')),
        (f'share/{PACKAGE}/models/reacher', share('models/reacher/*')),
        (f'share/{PACKAGE}/models/pusht', share('models/pusht/*')),
        (f'share/{PACKAGE}/models/cube', share('models/cube/*')),
    ],
    # torch is deliberately unpinned here: the set-up script (or the ROS distro) installs the build
    # that fits the machine; pinning it here would let pip replace a CPU build with a CUDA one.
    install_requires=['numpy', 'pyyaml', 'torch', 'pillow', 'setuptools'],
    extras_require={
        'sim': ['mujoco>=3.1', 'gymnasium>=1.0'],
        # rosbags reads rosbag2 (MCAP, sqlite3) and ROS 1 bags without a ROS install: lewm import-bag
        'train': ['h5py', 'tqdm', 'matplotlib', 'tensorboard', 'opencv-python-headless', 'rosbags>=0.10'],
        'test': ['pytest', 'pytest-timeout', 'ruff', 'safetensors'],
    },
    zip_safe=False,
    entry_points={
        'console_scripts': [
            'planner_node = lewm_ros.nodes.entry_points:planner_node',
            'sim_node = lewm_ros.nodes.entry_points:sim_node',
            'goal_publisher = lewm_ros.nodes.entry_points:goal_publisher',
            'lewm = training.cli:main',
        ],
    },
)
