"""package.xml declares every package the code imports, so rosdep installs what a ROS user needs.

Static: the imports of lewm_ros/, training/ and launch/ are read with ``ast`` (none is executed),
each non-stdlib, non-first-party module is mapped to its rosdep key by the table below, and the
key must be an ``exec_depend`` (or ``depend``) of package.xml. A module missing from the table
fails the test, so the table (and package.xml) follow the code.
"""

from __future__ import annotations

import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCES = ('lewm_ros', 'training', 'launch')
FIRST_PARTY = {'lewm_ros', 'training'}

# Top-level import name -> rosdep key (https://github.com/ros/rosdistro, rosdep/*.yaml).
ROSDEP_KEYS = {
    # ROS 2 packages: the key is the package name.
    'ament_index_python': 'ament_index_python',
    'builtin_interfaces': 'builtin_interfaces',
    'cv_bridge': 'cv_bridge',
    'diagnostic_msgs': 'diagnostic_msgs',
    'geometry_msgs': 'geometry_msgs',
    'launch': 'launch',
    'launch_ros': 'launch_ros',
    'rcl_interfaces': 'rcl_interfaces',
    'rclpy': 'rclpy',
    'sensor_msgs': 'sensor_msgs',
    'std_msgs': 'std_msgs',
    'std_srvs': 'std_srvs',
    # Python packages.
    'cv2': 'python3-opencv',
    'gymnasium': 'python3-gymnasium-pip',
    'h5py': 'python3-h5py',
    'matplotlib': 'python3-matplotlib',
    'mujoco': 'python3-mujoco-pip',
    'numpy': 'python3-numpy',
    'PIL': 'python3-pil',
    'rosbags': 'python3-rosbags-pip',
    'torch': 'python3-torch',
    'tqdm': 'python3-tqdm',
    'yaml': 'python3-yaml',
}
# Submodules that need a package of their own besides their top-level one.
SUBMODULE_KEYS = {
    'torch.utils.tensorboard': 'python3-tensorboard-pip',
}


def _imports() -> dict[str, list[str]]:
    """Module imported -> the files (``path:line``) that import it, for every absolute import."""
    found: dict[str, list[str]] = {}
    for folder in SOURCES:
        for path in sorted((REPO / folder).rglob('*.py')):
            where = path.relative_to(REPO)
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    found.setdefault(module, []).append(f'{where}:{node.lineno}')
    return found


def _declared() -> set[str]:
    root = ET.parse(REPO / 'package.xml').getroot()
    return {e.text.strip() for tag in ('depend', 'exec_depend') for e in root.iter(tag) if e.text}


def _third_party(module: str) -> bool:
    top = module.split('.')[0]
    return top not in sys.stdlib_module_names and top not in FIRST_PARTY


def test_every_import_has_a_rosdep_key() -> None:
    unknown = {m.split('.')[0]: places for m, places in _imports().items()
               if _third_party(m) and m.split('.')[0] not in ROSDEP_KEYS}
    assert not unknown, ('imports with no rosdep key in ROSDEP_KEYS of this test (add the module with its '
                         'key, and the key to package.xml):\n'
                         + '\n'.join(f'  {top} ({", ".join(places[:3])})' for top, places in unknown.items()))


def test_package_xml_declares_every_import() -> None:
    declared = _declared()
    missing: dict[str, list[str]] = {}
    for module, places in _imports().items():
        if not _third_party(module):
            continue
        keys = [ROSDEP_KEYS.get(module.split('.')[0])]
        keys += [key for prefix, key in SUBMODULE_KEYS.items() if f'{module}.'.startswith(f'{prefix}.')]
        for key in keys:
            if key is not None and key not in declared:
                missing.setdefault(key, []).extend(f'{module} ({p})' for p in places)
    assert not missing, 'package.xml lacks these exec_depend keys:\n' + '\n'.join(
        f'  <exec_depend>{key}</exec_depend> for {", ".join(places[:3])}' for key, places in missing.items())


def test_the_scan_finds_the_imports_it_should() -> None:
    """The scan itself: a package every tree imports, and a submodule import, are seen."""
    imports = _imports()
    assert any(m == 'rclpy' or m.startswith('rclpy.') for m in imports)
    assert 'torch.utils.tensorboard' in imports  # training/fit/trainer.py, imported inside a method
    assert any(p.startswith('launch/') for places in imports.values() for p in places)


def test_the_runtime_never_imports_the_offline_tools() -> None:
    # A robot installs lewm_ros for the nodes; training/ (h5py, tqdm, the trainer) may be absent.
    offenders = [where for module, places in _imports().items() if module.split('.')[0] == 'training'
                 for where in places if where.startswith('lewm_ros/')]
    assert not offenders, offenders
