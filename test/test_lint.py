"""Lint as part of the tests: pyflakes, pycodestyle and pep257 docstrings via ruff (ruff.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _ruff() -> list[str]:
    exe = shutil.which('ruff') or str(Path(sys.executable).parent / 'ruff')
    if not Path(exe).exists():
        pytest.skip('ruff is not installed (pip install ruff, or scripts/setup.sh)')
    return [exe]


def test_ruff_clean() -> None:
    result = subprocess.run([*_ruff(), 'check', '--no-cache', str(REPO)], capture_output=True, text=True)
    assert result.returncode == 0, f'ruff found problems:\n{result.stdout}{result.stderr}'
