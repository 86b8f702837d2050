"""Which planner settings are in force, and where each came from.

A checkpoint can carry the settings that plan best for it (``meta['planner']``, written by
``lewm tune``). Every tool that plans (the planner node, ``lewm eval``, ``lewm demo``,
``lewm bench plan --checkpoint``) resolves its settings the same way, from the lowest layer to
the highest:

1. ``default``: our recommended settings (:data:`RECOMMENDED`: mixed-noise iCEM, mean goal cost,
   whitened goal metric where the checkpoint is calibrated) — they beat the paper's CEM on every
   task we measured (docs/results.md);
2. ``checkpoint``: the stored settings;
3. ``preset <name>``: a named set chosen by the user (``paper`` is the reference planner's CEM);
4. the caller's explicit values (a ROS parameter, a CLI flag), labelled by the caller.

The result is a :class:`PlannerConfig` plus a source per setting, for start-up logs and
``lewm info``. No ROS.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lewm_ros.planning.config import PlannerConfig
from lewm_ros.planning.goal_metric import NOT_CALIBRATED

META_KEY = 'planner'
# The settings a checkpoint may carry: what decides plan quality for a model, not where it runs
# (device, dtype, threads, compile belong to the machine, seed to the run).
STORED_KEYS = ('solver', 'proposal', 'controller_ahead', 'samples', 'iterations', 'elites', 'horizon',
               'receding_horizon', 'icem_white_fraction', 'goal_cost', 'goal_metric', 'init_std')

RECOMMENDED: dict[str, Any] = {
    'solver': 'icem', 'proposal': 'none', 'controller_ahead': 1, 'samples': 300, 'iterations': 30,
    'elites': 30, 'horizon': 5, 'receding_horizon': 1, 'icem_white_fraction': 0.5, 'goal_cost': 'mean',
    'goal_metric': 'whitened', 'init_std': 1.0,
}
PRESETS: dict[str, dict[str, Any]] = {
    # the reference implementation's CEM, re-planning after the whole 5-block plan
    'paper': {'solver': 'cem', 'proposal': 'none', 'samples': 300, 'iterations': 30, 'elites': 30,
              'horizon': 5, 'receding_horizon': 5, 'icem_white_fraction': 0.0, 'goal_cost': 'final',
              'goal_metric': 'euclidean', 'init_std': 1.0},
    'recommended': dict(RECOMMENDED),
    # the checkpoint's goal-conditioned controller alone: one forward pass per decision
    'controller': {'solver': 'controller', 'proposal': 'none', 'horizon': 5, 'receding_horizon': 1},
    # iCEM started from the controller's plan: a few small iterations refine it (docs/planning.md)
    'hybrid': {**RECOMMENDED, 'proposal': 'controller', 'samples': 100, 'iterations': 3, 'elites': 10,
               'init_std': 0.5},
}


class PlannerSettingsError(ValueError):
    """Stored or requested planner settings that cannot be used; the message names the key."""


@dataclass
class ResolvedSettings:
    """The planner config in force and, for each stored key, the layer it came from."""

    config: PlannerConfig
    sources: dict[str, str]

    def describe(self, keys: tuple[str, ...] = STORED_KEYS) -> str:
        """One line: ``solver icem (checkpoint), samples 300 (default), ...``."""
        return ', '.join(f'{k} {getattr(self.config, k)} ({self.sources.get(k, "default")})' for k in keys)


def stored_settings(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The planner settings a checkpoint's ``meta.json`` carries ({} when none), checked key by key.

    Raises :class:`PlannerSettingsError` naming the offending ``planner.settings.<key>``.
    """
    block = meta.get(META_KEY)
    if block is None:
        return {}
    if not isinstance(block, Mapping) or not isinstance(block.get('settings'), Mapping):
        raise PlannerSettingsError(f"meta.json '{META_KEY}' must be an object with a 'settings' object, "
                                   f'got {block!r}')
    settings = dict(block['settings'])
    unknown = sorted(set(settings) - set(STORED_KEYS))
    if unknown:
        raise PlannerSettingsError(f"meta.json '{META_KEY}.settings' has unknown key(s) {unknown}; "
                                   f'known: {list(STORED_KEYS)}')
    for key, value in settings.items():
        try:  # each key on its own, so the message names the one that is wrong
            _check_one(key, value)
        except ValueError as err:
            raise PlannerSettingsError(f"meta.json '{META_KEY}.settings.{key}': {_reason(err)}") from err
    return settings


def _check_one(key: str, value: Any) -> None:
    """Validate one setting on its own: the others at values that cannot conflict with it."""
    neutral = {'samples': 100000, 'elites': 2, 'horizon': 100, 'receding_horizon': 1}
    PlannerConfig(**{**neutral, key: value})


def _reason(err: ValueError) -> str:
    return str(err).removeprefix('invalid planner config: ')


def resolve(
    meta: Mapping[str, Any] | None,
    preset: str | None = None,
    explicit: Mapping[str, Any] | None = None,
    explicit_source: str = 'explicit',
    base: PlannerConfig | None = None,
) -> ResolvedSettings:
    """The settings in force: defaults < checkpoint < ``preset`` < ``explicit`` (see the module docstring).

    ``explicit`` may set any :class:`PlannerConfig` field (device, threads, seed too); ``base``
    supplies the fields no layer sets (default ``PlannerConfig()``). Without a goal-metric
    calibration in ``meta`` the default goal metric is euclidean; asking for ``whitened`` then is
    an error. Raises :class:`PlannerSettingsError`.
    """
    meta = meta or {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def layer(settings: Mapping[str, Any], source: str) -> None:
        for key, value in settings.items():
            values[key], sources[key] = value, source

    defaults = dict(RECOMMENDED)
    calibrated = bool(meta.get('goal_metric'))
    if not calibrated:
        defaults['goal_metric'] = 'euclidean'
    layer(defaults, 'default')
    if not calibrated:
        sources['goal_metric'] = 'default: the checkpoint has no goal-metric calibration'
    layer(stored_settings(meta), 'checkpoint')
    if preset:
        if preset not in PRESETS:
            raise PlannerSettingsError(f'unknown planner preset {preset!r}; known: {sorted(PRESETS)}')
        chosen = dict(PRESETS[preset])
        if preset != 'paper' and not calibrated:
            chosen['goal_metric'] = 'euclidean'
        layer(chosen, f'preset {preset}')
    explicit = dict(explicit or {})
    layer(explicit, explicit_source)
    # a later layer that changed the population or the horizon keeps the earlier elites/steps valid
    if values['elites'] > values['samples'] and 'elites' not in explicit:
        values['elites'], sources['elites'] = max(2, values['samples'] // 2), 'fitted to samples'
    if values['receding_horizon'] > values['horizon'] and 'receding_horizon' not in explicit:
        values['receding_horizon'], sources['receding_horizon'] = values['horizon'], 'fitted to horizon'
    if values['goal_metric'] == 'whitened' and not calibrated:
        raise PlannerSettingsError(f"{NOT_CALIBRATED} (goal_metric from {sources['goal_metric']})")
    base_values = dataclasses.asdict(base or PlannerConfig())
    try:
        config = PlannerConfig(**{**base_values, **values})
    except ValueError as err:
        named = ', '.join(f'{k} from {sources[k]}' for k in sorted(values) if k in str(err))
        raise PlannerSettingsError(f'{_reason(err)}{f" ({named})" if named else ""}') from err
    return ResolvedSettings(config, {k: sources.get(k, 'default') for k in STORED_KEYS})


def settings_block(config: PlannerConfig, source: str, measured: Mapping[str, Any] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """The ``meta['planner']`` object for ``config``: its stored keys, who chose them, how well they did."""
    block: dict[str, Any] = {'settings': {k: getattr(config, k) for k in STORED_KEYS}, 'source': source}
    if measured is not None:
        block['measured'] = dict(measured)
    block.update(extra)
    return block
