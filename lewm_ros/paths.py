"""Find the package's shared files (config presets, launch files) wherever it was installed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = 'lewm_ros'


def share_dir() -> Path:
    """The directory holding ``config/`` and ``launch/`` for this installation.

    Looked up in order: ``$LEWM_SHARE_DIR``; the source checkout (editable installs and
    ``colcon build --symlink-install``); ``<prefix>/share/lewm_ros`` (pip install); the ament index.
    """
    candidates = []
    if os.environ.get('LEWM_SHARE_DIR'):
        candidates.append(Path(os.environ['LEWM_SHARE_DIR']))
    candidates.append(Path(__file__).resolve().parent.parent)
    candidates.append(Path(sys.prefix) / 'share' / PACKAGE)
    for base in candidates:
        if (base / 'config').is_dir():
            return base
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception as err:  # noqa: BLE001 - any failure means "not found" here
        raise FileNotFoundError(
            f'cannot find the {PACKAGE} share directory (looked in {[str(c) for c in candidates]} '
            'and the ament index); set LEWM_SHARE_DIR to the folder that holds config/'
        ) from err


def config_path(*parts: str) -> Path:
    """Path of a file under the package's ``config/`` directory."""
    return share_dir().joinpath('config', *parts)
