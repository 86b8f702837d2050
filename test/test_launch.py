"""Launch-file tests: a static check that runs everywhere, then runs of the launch files in a ROS 2 distro.

The static tests read ``launch/*.launch.py`` with ``ast`` (no ``launch`` needed) and check that every
declared argument reaches a parameter the nodes really have, that topics travel as parameters,
that an argument left at its default passes nothing (so the params file's value stands), and that
in ``sim.launch.py`` every topic both nodes share reaches both, so the loop stays closed.

The other tests need ``launch`` and ``launch_ros`` (and ``launch_pytest`` for the message tests) and
the package installed in an ament prefix (``colcon build``): elsewhere they are skipped with the
reason. Node behaviour itself is tested in-process with real rclpy by test_planner_node.py and
test_sim_in_the_loop.py, which run everywhere.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from lewm_ros.nodes.planner_params import PLANNER_PARAMS

REPO = Path(__file__).resolve().parent.parent
LAUNCH_DIR = REPO / 'launch'
LAUNCH_FILES = ('planner.launch.py', 'sim.launch.py')
WAIT_S = 60.0  # bounds every wait: a launch error must fail the test, not hang it

def _sim_params() -> set[str]:
    """Names of sim_node's PARAMS, read from its source (importing it needs rclpy and mujoco)."""
    tree = ast.parse((REPO / 'lewm_ros' / 'nodes' / 'sim_node.py').read_text())
    table = next(s.value for s in tree.body if isinstance(s, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == 'PARAMS' for t in s.targets))
    return {call.args[0].value for call in table.elts if _called(call) == 'ParamSpec'}


def _called(node: ast.AST) -> str:
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ''
    return ''


NODE_PARAMS = {
    'planner_node': {p.name for p in PLANNER_PARAMS},
    'sim_node': _sim_params(),
}
# Settings of the planner's topics that planner.launch.py must offer, besides every *_topic.
PLANNER_TOPIC_SETTINGS = {'action_type', 'camera_qos', 'camera_transport'}


def _is_topic(name: str) -> bool:
    return name.endswith('_topic') or name == 'action_type'


# -- static analysis of the launch files ------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where a launch argument ends up: ``kind`` is parameter, remapping, params_file or namespace."""

    executable: str
    kind: str
    name: str = ''


@dataclass
class LaunchFile:
    """What ``ast`` can tell of a launch file written in this repository's style.

    Understood: module-level tables ``*ARGUMENTS = ((name, ...), ...)``; ``DeclareLaunchArgument``
    calls (also in comprehensions over tables); ``Node(executable=..., parameters=[...],
    remappings=[...], namespace=...)``, where a table named in ``parameters`` gives each of its
    arguments to the parameter of the same name, a dict gives ``key: <expression of arguments>``, and
    a bare ``LaunchConfiguration(x)`` is a parameter file; ``IncludeLaunchDescription`` of a file
    named ``*.launch.py`` with ``launch_arguments`` built from tables (same names), dicts or
    ``(name, value)`` pairs.
    """

    path: Path
    tables: dict[str, list[ast.Tuple]] = field(default_factory=dict)
    defaults: dict[str, ast.expr | None] = field(default_factory=dict)  # declared argument -> default
    targets: dict[str, set[Target]] = field(default_factory=dict)  # argument -> where it ends up
    includes: list[tuple[str, dict[str, set[str]]]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path) -> LaunchFile:
        self = cls(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        for stmt in tree.body:
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 else None
            if (isinstance(target, ast.Name) and target.id.endswith('ARGUMENTS')
                    and isinstance(stmt.value, ast.Tuple)):
                self.tables[target.id] = [row for row in stmt.value.elts if isinstance(row, ast.Tuple)]
        for node in ast.walk(tree):
            comprehension = isinstance(node, (ast.ListComp, ast.GeneratorExp))
            if comprehension and _called(node.elt) == 'DeclareLaunchArgument':
                self._declare_from_tables(node)
            elif isinstance(node, ast.Call) and _called(node) == 'DeclareLaunchArgument':
                if node.args and isinstance(node.args[0], ast.Constant):
                    self.defaults[node.args[0].value] = _keyword(node, 'default_value')
            elif isinstance(node, ast.Call) and _called(node) == 'Node':
                self._node(node)
            elif isinstance(node, ast.Call) and _called(node) == 'IncludeLaunchDescription':
                self._include(node)
        return self

    def rows(self, expr: ast.AST) -> list[str]:
        """Argument names of the tables named in ``expr``."""
        return [row.elts[0].value for n in ast.walk(expr) if isinstance(n, ast.Name) and n.id in self.tables
                for row in self.tables[n.id]]

    def _declare_from_tables(self, comp: ast.ListComp | ast.GeneratorExp) -> None:
        gen = comp.generators[0]
        default = _keyword(comp.elt, 'default_value')
        names = [t.id for t in gen.target.elts] if isinstance(gen.target, ast.Tuple) else []
        for table in (n.id for n in ast.walk(gen.iter) if isinstance(n, ast.Name) and n.id in self.tables):
            for row in self.tables[table]:
                value = default
                if isinstance(default, ast.Name) and default.id in names:  # the table's own column
                    value = row.elts[names.index(default.id)]
                self.defaults[row.elts[0].value] = value

    def _add(self, argument: str, target: Target) -> None:
        self.targets.setdefault(argument, set()).add(target)

    def _node(self, call: ast.Call) -> None:
        executable = _keyword(call, 'executable')
        exe = executable.value if isinstance(executable, ast.Constant) else '?'
        parameters = _keyword(call, 'parameters')
        if parameters is not None:
            for name in self.rows(parameters):
                self._add(name, Target(exe, 'parameter', name))
            for n in ast.walk(parameters):
                if isinstance(n, ast.Dict):
                    for key, value in zip(n.keys, n.values, strict=True):
                        if isinstance(key, ast.Constant):
                            for argument in _configurations(value):
                                self._add(argument, Target(exe, 'parameter', key.value))
            elements = parameters.elts if isinstance(parameters, ast.List) else []
            for element in elements:
                if _called(element) == 'LaunchConfiguration':
                    for argument in _configurations(element):
                        self._add(argument, Target(exe, 'params_file'))
        remappings = _keyword(call, 'remappings')
        for pair in (remappings.elts if isinstance(remappings, ast.List) else []):
            if isinstance(pair, ast.Tuple) and isinstance(pair.elts[0], ast.Constant):
                for argument in _configurations(pair.elts[1]):
                    self._add(argument, Target(exe, 'remapping', pair.elts[0].value))
        namespace = _keyword(call, 'namespace')
        for argument in _configurations(namespace) if namespace is not None else ():
            self._add(argument, Target(exe, 'namespace'))

    def _include(self, call: ast.Call) -> None:
        files = [n.value for a in call.args for n in ast.walk(a)
                 if isinstance(n, ast.Constant) and str(n.value).endswith('.launch.py')]
        assert len(files) == 1, f'{self.path.name}: cannot tell which file line {call.lineno} includes'
        forwarded: dict[str, set[str]] = {}
        arguments = _keyword(call, 'launch_arguments')
        if arguments is not None:
            for name in self.rows(arguments):
                forwarded.setdefault(name, set()).add(name)
            for n in ast.walk(arguments):
                if isinstance(n, ast.Dict):
                    pairs = list(zip(n.keys, n.values, strict=True))
                elif isinstance(n, ast.Tuple) and len(n.elts) == 2:
                    pairs = [tuple(n.elts)]
                else:
                    continue
                for key, value in pairs:
                    if isinstance(key, ast.Constant) and isinstance(key.value, str):
                        forwarded.setdefault(key.value, set()).update(_configurations(value))
        self.includes.append((files[0], forwarded))

    def reach(self, argument: str) -> set[Target]:
        """Every place ``argument`` ends up, through included launch files too."""
        found = set(self.targets.get(argument, ()))
        for name, forwarded in self.includes:
            included = LaunchFile.parse(self.path.parent / name)
            for included_argument, sources in forwarded.items():
                if argument in sources:
                    found |= included.reach(included_argument)
        return found


def _keyword(call: ast.AST, name: str) -> ast.expr | None:
    return next((k.value for k in getattr(call, 'keywords', ()) if k.arg == name), None)


def _configurations(expr: ast.AST) -> set[str]:
    """Arguments read in ``expr`` through ``LaunchConfiguration('name')``."""
    return {n.args[0].value for n in ast.walk(expr) if _called(n) == 'LaunchConfiguration'
            and n.args and isinstance(n.args[0], ast.Constant)}


def _parse(name: str) -> LaunchFile:
    return LaunchFile.parse(LAUNCH_DIR / name)


def test_the_launch_files_are_all_checked() -> None:
    assert sorted(p.name for p in LAUNCH_DIR.glob('*.launch.py')) == sorted(LAUNCH_FILES)


@pytest.mark.parametrize('name', LAUNCH_FILES)
def test_every_argument_reaches_a_real_parameter(name: str) -> None:
    launch_file = _parse(name)
    assert launch_file.defaults, f'{name}: no DeclareLaunchArgument found'
    problems = []
    for argument in launch_file.defaults:
        targets = launch_file.reach(argument)
        if not targets:
            problems.append(f'{argument} is declared but reaches no node')
        for t in targets:
            known = NODE_PARAMS.get(t.executable)
            if known is None:
                problems.append(f'{argument} goes to an unknown executable {t.executable!r}')
            elif t.kind == 'parameter' and t.name not in known:
                problems.append(f'{argument} sets {t.executable} parameter {t.name!r}, which it lacks')
            elif t.kind == 'remapping':
                problems.append(f'{argument} remaps {t.name!r} of {t.executable}: topics are parameters '
                                'of the nodes, pass it as the parameter (a remapping of a name misses the '
                                'topics derived from it, e.g. <surprise_topic>/score)')
    assert not problems, f'{name}:\n' + '\n'.join(problems)


@pytest.mark.parametrize('name', LAUNCH_FILES)
def test_an_argument_left_at_its_default_passes_nothing(name: str) -> None:
    """A parameter argument's default must be '' (= not passed), or it overrides the params file."""
    launch_file = _parse(name)
    problems = []
    for argument, default in launch_file.defaults.items():
        if any(t.kind == 'parameter' for t in launch_file.reach(argument)):
            if not (isinstance(default, ast.Constant) and default.value == ''):
                shown = ast.unparse(default) if default is not None else 'none (required)'
                problems.append(f'{argument} defaults to {shown}: left at its default, it would override the '
                                'params file; make it empty and pass only the arguments given')
    assert not problems, f'{name}:\n' + '\n'.join(problems)


def test_planner_launch_offers_every_topic_setting() -> None:
    launch_file = _parse('planner.launch.py')
    wanted = sorted({n for n in NODE_PARAMS['planner_node'] if n.endswith('_topic')} | PLANNER_TOPIC_SETTINGS)
    missing = [n for n in wanted if Target('planner_node', 'parameter', n) not in launch_file.reach(n)]
    assert not missing, f'planner.launch.py has no argument passed to the planner parameter(s) {missing}'


def test_sim_launch_gives_every_shared_topic_to_both_nodes() -> None:
    launch_file = _parse('sim.launch.py')
    shared = sorted(n for n in NODE_PARAMS['planner_node'] & NODE_PARAMS['sim_node'] if _is_topic(n))
    assert shared, 'the nodes share no topic parameter?'
    problems = []
    for topic in [*shared, 'namespace']:
        if topic not in launch_file.defaults:
            problems.append(f'sim.launch.py has no argument {topic!r}')
            continue
        for exe in ('sim_node', 'planner_node'):
            want = Target(exe, 'namespace') if topic == 'namespace' else Target(exe, 'parameter', topic)
            if want not in launch_file.reach(topic):
                problems.append(f'the {topic} argument of sim.launch.py does not reach {exe}: '
                                'the loop breaks')
    assert not problems, '\n'.join(problems)


def test_the_static_check_sees_a_remapped_topic_and_a_default_that_overrides(tmp_path: Path) -> None:
    """The analysis itself: the old style of planner.launch.py (remappings, defaults) is caught."""
    old = tmp_path / 'old.launch.py'
    old.write_text(
        "ARGUMENTS = (('device', 'auto', 'd'), ('camera_topic', 'camera/image_raw', 'c'))\n"
        'def generate_launch_description():\n'
        '    args = [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]\n'
        "    node = Node(executable='planner_node', parameters=[{'device': LaunchConfiguration('device')}],\n"
        "                remappings=[('camera/image_raw', LaunchConfiguration('camera_topic'))])\n")
    parsed = LaunchFile.parse(old)
    assert parsed.reach('device') == {Target('planner_node', 'parameter', 'device')}
    assert parsed.reach('camera_topic') == {Target('planner_node', 'remapping', 'camera/image_raw')}
    assert isinstance(parsed.defaults['device'], ast.Constant) and parsed.defaults['device'].value == 'auto'


# Variables that take DDS off loopback or onto another domain (scripts/env.sh sets the loopback ones).
DDS_VARIABLE_PREFIXES = ('ROS_', 'RMW_', 'FASTRTPS', 'FASTDDS', 'CYCLONEDDS', 'ZENOH')


@pytest.mark.parametrize('name', LAUNCH_FILES)
def test_the_nodes_inherit_the_shells_dds_environment(name: str) -> None:
    """No launch file replaces or changes the DDS settings of the shell it runs in (loopback, domain).

    A node started by ``ros2 launch`` gets the launching environment plus ``additional_env``;
    ``env=`` would replace all of it, and a DDS variable there (or a SetEnvironmentVariable action)
    would take the nodes off what scripts/env.sh set up.
    """
    tree = ast.parse((LAUNCH_DIR / name).read_text())
    processes = [n for n in ast.walk(tree) if _called(n) in ('Node', 'ExecuteProcess')]
    assert processes, f'{name}: no Node found'
    problems = []
    for call in processes:
        if _keyword(call, 'env') is not None:
            problems.append(f'line {call.lineno}: env= replaces the environment the node inherits')
        extra = _keyword(call, 'additional_env')
        if extra is None:
            continue
        if not isinstance(extra, ast.Dict) or not all(isinstance(k, ast.Constant) for k in extra.keys):
            problems.append(f'line {call.lineno}: additional_env is not a dict of constant names')
            continue
        problems += [f'line {call.lineno}: additional_env sets {k.value}' for k in extra.keys
                     if str(k.value).upper().startswith(DDS_VARIABLE_PREFIXES)]
    changers = ('SetEnvironmentVariable', 'UnsetEnvironmentVariable', 'AppendEnvironmentVariable')
    for call in (n for n in ast.walk(tree) if _called(n) in changers):
        problems.append(f'line {call.lineno}: {_called(call)} changes the environment of every node')
    assert not problems, f'{name}:\n' + '\n'.join(problems)


# -- runs of the launch files (a ROS 2 distro with launch and launch_ros) ---------------------------
def _launch_stack_or_skip() -> None:
    # Submodules: with the repository on sys.path, its launch/ folder passes for a `launch` package.
    for module in ('launch.actions', 'launch_ros.actions'):
        if importlib.util.find_spec(module.split('.')[0]) is None or importlib.util.find_spec(module) is None:
            pytest.skip(f'{module.split(".")[0]} is not installed: launch runs need a ROS 2 distro '
                        '(apt install ros-$ROS_DISTRO-launch-ros, then colcon test)')
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        prefix = Path(get_package_prefix('lewm_ros'))
    except PackageNotFoundError:
        pytest.skip('lewm_ros is not installed in an ament prefix (colcon build, then source '
                    'install/setup.sh)')
    if not (prefix / 'lib' / 'lewm_ros' / 'planner_node').exists():
        pytest.skip(f'{prefix}/lib/lewm_ros has no planner_node: install with colcon build')


# `ros2 launch FILE ARG:=VALUE ...` without ros2cli: LaunchService.run()'s return code is the exit code.
RUN_LAUNCH = '''
import sys
import launch
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
path, *pairs = sys.argv[1:]
arguments = [tuple(p.split(':=', 1)) for p in pairs]
service = launch.LaunchService(argv=pairs)
service.include_launch_description(launch.LaunchDescription([
    IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments)]))
sys.exit(service.run())
'''


def _start_launch(name: str, *arguments: str, log: Path) -> subprocess.Popen:
    with open(log, 'w') as out:
        return subprocess.Popen([sys.executable, '-c', RUN_LAUNCH, str(LAUNCH_DIR / name), *arguments],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, 'PYTHONUNBUFFERED': '1'})


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint: these tests check wiring, not plan quality."""
    from lewm_ros.checkpoint import build_metadata, save_checkpoint
    from lewm_ros.model import LeWM, ModelConfig

    model = LeWM(ModelConfig.from_preset('micro', frameskip=5))
    bounds = [1.0] * model.config.action_dim
    path = tmp_path_factory.mktemp('launch') / 'micro'
    save_checkpoint(path, model, build_metadata(model, action_low=[-b for b in bounds], action_high=bounds))
    return path


@pytest.mark.parametrize('name', LAUNCH_FILES)
def test_a_bad_checkpoint_fails_the_whole_launch(name: str, tmp_path: Path) -> None:
    """The planner exits 1; the launch shuts down (the sim too) and exits non-zero."""
    _launch_stack_or_skip()
    log = tmp_path / 'launch.log'
    process = _start_launch(name, 'checkpoint:=/nonexistent/checkpoint', 'device:=cpu', log=log)
    try:
        code = process.wait(timeout=WAIT_S * 2)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        pytest.fail(f'{name} with a bad checkpoint still ran after {WAIT_S * 2:g} s:\n{log.read_text()}')
    output = log.read_text()
    assert code != 0, f'{name} exited 0 after the planner failed:\n{output}'
    assert 'cannot start' in output and '/nonexistent/checkpoint' in output, output


def test_sigint_stops_the_sim_launch_cleanly(checkpoint: Path, tmp_path: Path) -> None:
    """Ctrl-C: both nodes stop, no traceback, no C++ abort, and the launch exits 0."""
    _launch_stack_or_skip()
    log = tmp_path / 'launch.log'
    process = _start_launch('sim.launch.py', f'checkpoint:={checkpoint}', 'device:=cpu', 'img_size:=64',
                            log=log)
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not all(s in log.read_text() for s in ('simulating', 'loaded')):
            assert process.poll() is None, f'the launch ended early:\n{log.read_text()}'
            time.sleep(0.2)
        time.sleep(2.0)  # a few control ticks
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert code == 0, output
    assert 'Traceback' not in output and 'terminate called' not in output, output
    assert output.count('process has finished cleanly') == 2, output


launch_pytest = None
if importlib.util.find_spec('launch_pytest') is not None:
    import launch_pytest

if launch_pytest is None:
    def test_launch_pytest_message_tests() -> None:
        pytest.skip('launch_pytest is not installed: the message tests run inside a ROS 2 distro '
                    '(apt install ros-$ROS_DISTRO-launch-pytest, then colcon test)')
else:
    import launch
    import rclpy
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    def _include(name: str, **arguments: str) -> IncludeLaunchDescription:
        return IncludeLaunchDescription(PythonLaunchDescriptionSource(str(LAUNCH_DIR / name)),
                                        launch_arguments=arguments.items())

    @launch_pytest.fixture
    def planner_launch(checkpoint: Path) -> launch.LaunchDescription:
        return launch.LaunchDescription([
            _include('planner.launch.py', checkpoint=str(checkpoint), device='cpu'),
            launch_pytest.actions.ReadyToTest(),
        ])

    @launch_pytest.fixture
    def sim_launch(checkpoint: Path) -> launch.LaunchDescription:
        return launch.LaunchDescription([
            _include('sim.launch.py', checkpoint=str(checkpoint), device='cpu', img_size='64'),
            launch_pytest.actions.ReadyToTest(),
        ])

    class Probe:
        """A test node that counts messages on the planner's outputs and can feed it images."""

        def __init__(self) -> None:
            from diagnostic_msgs.msg import DiagnosticArray
            from std_msgs.msg import Float64MultiArray

            rclpy.init()
            self.node = Node('launch_probe')
            self.surprise, self.actions = threading.Event(), threading.Event()
            self.node.create_subscription(DiagnosticArray, '/lewm/surprise',
                                          lambda m: self.surprise.set(), 10)
            self.node.create_subscription(Float64MultiArray, '/lewm/action',
                                          lambda m: self.actions.set(), 10)
            self._thread = threading.Thread(target=rclpy.spin, args=(self.node,), daemon=True)
            self._thread.start()

        def feed_images(self, until: threading.Event, size: int = 64) -> None:
            """Publish camera frames and a goal until ``until`` is set (or the wait bound passes)."""
            from sensor_msgs.msg import Image

            from lewm_ros.image_conversion import rgb_to_image_fields

            goal_qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                  durability=DurabilityPolicy.TRANSIENT_LOCAL)
            camera = self.node.create_publisher(Image, '/camera/image_raw', 10)
            goal = self.node.create_publisher(Image, '/lewm/goal_image', goal_qos)
            rng = np.random.default_rng(0)

            def image() -> Image:
                return Image(**rgb_to_image_fields(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))

            goal.publish(image())
            for _ in range(int(WAIT_S * 10)):
                camera.publish(image())
                if until.wait(0.1):
                    return

        def close(self) -> None:
            self.node.destroy_node()
            rclpy.shutdown()
            self._thread.join(timeout=5.0)

    @pytest.mark.launch(fixture=planner_launch)
    def test_planner_launch_publishes_surprise_and_actions() -> None:
        probe = Probe()
        try:
            both = threading.Event()
            feeder = threading.Thread(target=probe.feed_images, args=(both,), daemon=True)
            feeder.start()
            assert probe.surprise.wait(WAIT_S), 'no message on /lewm/surprise'
            assert probe.actions.wait(WAIT_S), 'no message on /lewm/action'
            both.set()
            feeder.join(timeout=5.0)
        finally:
            probe.close()

    @pytest.mark.launch(fixture=sim_launch)
    def test_sim_launch_closes_the_loop() -> None:
        probe = Probe()
        try:
            assert probe.surprise.wait(WAIT_S), 'no message on /lewm/surprise'
            assert probe.actions.wait(WAIT_S), 'no message on /lewm/action'
        finally:
            probe.close()
