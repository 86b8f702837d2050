"""Run a recipe's stages one after the other, each a ``lewm`` subprocess, and resume where a run stopped.

A stage that finishes writes a stamp (``<task>/stages/<stage>.json``: its command line, with the task's
folder written ``<task>``, and its wall time).
On the next run a stage is skipped when its stamp holds the same command line and no stage before it
had to run again (a retrained model invalidates its calibration, tuning and evaluation). A stage that
was interrupted has no stamp, so it runs again: ``lewm collect`` and ``lewm train`` continue from
their partial output (``--resume``) when the interrupted attempt had the same command line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.reports import write_json
from training.suite.recipe import READ_ONLY, Stage, TaskPaths


class StageFailedError(RuntimeError):
    """A stage's command exited with an error; its stamp is not written, so a rerun retries it."""

    def __init__(self, task: str, stage: Stage, code: int) -> None:
        super().__init__(f'{task}: stage {stage.name} failed (exit code {code}): {stage.command}')
        self.code = code


def lewm_command() -> list[str]:
    """How to start ``lewm`` from here: the installed script, or this interpreter on the module."""
    if shutil.which('lewm'):
        return ['lewm']
    return [sys.executable, '-m', 'training.cli']


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or unreadable (a half-written stamp)."""
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None


def portable(argv: tuple[str, ...] | list[str], paths: TaskPaths) -> list[str]:
    """``argv`` with the task's folder written as ``<task>``: a stamp still matches after the folder moved."""
    root = str(paths.root)
    inside = [arg == root or arg.startswith(root + os.sep) for arg in argv]
    return ['<task>' + arg[len(root):] if moved else arg for arg, moved in zip(argv, inside, strict=True)]


def run_child(command: list[str]) -> int:
    """Run one stage's command; on Ctrl-C give it time to save its state (it got the Ctrl-C too)."""
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt:
        try:
            child.wait(timeout=120)  # lewm train writes a resumable checkpoint, lewm collect its partial file
        except subprocess.TimeoutExpired:
            child.kill()
        raise


def _resumable(stage: Stage, paths: TaskPaths, started: dict[str, Any] | None) -> list[str] | None:
    """The argv that continues an interrupted attempt of ``stage``, or None to start it afresh."""
    if started is None or started.get('argv') != portable(stage.argv, paths):
        return None
    argv = list(stage.argv)
    if stage.name.startswith('collect'):
        out = Path(argv[argv.index('--out') + 1])
        if out.with_name(out.name + '.partial').exists():
            return [*argv[:-1], '--resume'] if argv[-1] == '--overwrite' else None
    if stage.name == 'train' and (paths.run / 'last' / 'meta.json').is_file():
        return [*argv, '--resume']
    return None


def run_stages(
    task: str, stages: list[Stage], paths: TaskPaths, until: str | None = None,
    log: Callable[[str], None] = print, lewm: list[str] | None = None, dry_run: bool = False,
) -> list[dict[str, Any]]:
    """Run (or skip, when done earlier) each stage in order; returns one record per stage that was reached.

    ``until`` stops after the stage of that name. A stage that runs again makes every stage after it
    run again, except for the probe (``READ_ONLY``): nothing after it reads what it writes.
    ``dry_run`` only says which stages would run (and with which command), touching nothing.
    """
    lewm = lewm or lewm_command()
    records: list[dict[str, Any]] = []
    rerun_rest = False
    for stage in stages:
        stamp = read_json(paths.stamps / f'{stage.name}.json')
        if not rerun_rest and stamp is not None and stamp.get('argv') == portable(stage.argv, paths):
            log(f'[{task}] {stage.name}: done earlier ({stamp["wall_s"]:.0f} s), skipped')
            records.append({**stamp, 'ran': False})
        else:
            if not stage.name.startswith(READ_ONLY):
                rerun_rest = True  # what comes after reads this stage's output
            argv = _resumable(stage, paths, read_json(paths.stamps / f'{stage.name}.started.json'))
            if dry_run:
                log(f'[{task}] {stage.name}: would run $ {" ".join(["lewm", *(argv or stage.argv)])}')
                records.append({'stage': stage.name, 'ran': False})
            else:
                records.append(_run(task, stage, paths, argv, lewm, log))
        if stage.name == until:
            break
    return records


def _run(task: str, stage: Stage, paths: TaskPaths, argv: list[str] | None, lewm: list[str],
         log: Callable[[str], None]) -> dict[str, Any]:
    """Run one stage (``argv``: the command that resumes it, or None to start afresh); returns its stamp."""
    stamp_path = paths.stamps / f'{stage.name}.json'
    started_path = paths.stamps / f'{stage.name}.started.json'
    if argv is None and stage.name == 'train' and paths.run.exists():
        log(f'[{task}] train: starting afresh, removing {paths.run}')
        shutil.rmtree(paths.run)
    argv = argv or list(stage.argv)
    stamp_path.unlink(missing_ok=True)
    write_json(started_path, {'argv': portable(stage.argv, paths),
                               'started': time.strftime('%Y-%m-%d %H:%M:%S')})
    log(f'[{task}] {stage.name}: $ {" ".join(["lewm", *argv])}')
    start = time.monotonic()
    code = run_child([*lewm, *argv])
    wall = time.monotonic() - start
    if code != 0:
        raise StageFailedError(task, stage, code)
    stamp = {'stage': stage.name, 'argv': portable(stage.argv, paths), 'command': stage.command,
             'wall_s': round(wall, 1), 'finished': time.strftime('%Y-%m-%d %H:%M:%S'),
             'resumed': argv != list(stage.argv), 'load_avg_1min': round(os.getloadavg()[0], 2)}
    write_json(stamp_path, stamp)
    started_path.unlink(missing_ok=True)
    log(f'[{task}] {stage.name}: done in {wall:.0f} s')
    return {**stamp, 'ran': True}
