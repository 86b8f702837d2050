"""Planner settings that travel with a checkpoint: stored, read back, overridden, refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lewm_ros.checkpoint import build_metadata, read_metadata, save_checkpoint, update_metadata
from lewm_ros.model import LeWM, ModelConfig
from lewm_ros.planning import PlannerConfig, settings
from lewm_ros.planning.settings import PlannerSettingsError, resolve, settings_block, stored_settings
from training.cli import main

CALIBRATED = {'goal_metric': {'kind': 'whitened'}}  # resolve() only asks whether one is stored


@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    model = LeWM(ModelConfig.from_preset('micro', frameskip=5))
    return save_checkpoint(tmp_path / 'ckpt', model, build_metadata(model, action_low=[-1, -1],
                                                                    action_high=[1, 1], env_id='robot/arm'))


def test_stored_settings_round_trip_through_meta_json(checkpoint: Path) -> None:
    config = PlannerConfig(solver='mppi', samples=123, iterations=7, elites=11, horizon=4, receding_horizon=2,
                           goal_cost='mean', goal_metric='euclidean')
    update_metadata(checkpoint, 'planner', settings_block(config, 'test', {'success_rate': 0.5}))
    meta = read_metadata(checkpoint)  # through the JSON file
    resolved = resolve(meta)
    for key in ('solver', 'samples', 'iterations', 'elites', 'horizon', 'receding_horizon', 'goal_cost'):
        assert getattr(resolved.config, key) == getattr(config, key)
        assert resolved.sources[key] == 'checkpoint'
    assert meta['planner']['measured'] == {'success_rate': 0.5}


def test_without_stored_settings_the_recommended_ones_apply() -> None:
    resolved = resolve(CALIBRATED)
    assert resolved.config.solver == 'icem' and resolved.config.icem_white_fraction == 0.5
    assert (resolved.config.goal_cost, resolved.config.goal_metric) == ('mean', 'whitened')
    assert set(resolved.sources.values()) == {'default'}
    # an uncalibrated checkpoint cannot measure whitened distances: euclidean, and the log says why
    plain = resolve({})
    assert plain.config.goal_metric == 'euclidean'
    assert 'no goal-metric calibration' in plain.sources['goal_metric']


def test_explicit_values_win_over_the_checkpoint_and_the_preset_over_both() -> None:
    meta = {**CALIBRATED, 'planner': {'settings': {'solver': 'mppi', 'samples': 40, 'elites': 10}}}
    resolved = resolve(meta, explicit={'samples': 64}, explicit_source='parameter')
    assert (resolved.config.solver, resolved.config.samples) == ('mppi', 64)
    assert resolved.sources['samples'] == 'parameter' and resolved.sources['solver'] == 'checkpoint'
    paper = resolve(meta, preset='paper')
    assert (paper.config.solver, paper.config.samples, paper.config.receding_horizon) == ('cem', 300, 5)
    assert (paper.config.goal_cost, paper.config.goal_metric) == ('final', 'euclidean')
    assert paper.sources['solver'] == 'preset paper'


def test_fewer_samples_than_the_stored_elites_keep_the_plan_valid() -> None:
    resolved = resolve(CALIBRATED, explicit={'samples': 8})
    assert resolved.config.elites == 4 and resolved.sources['elites'] == 'fitted to samples'
    with pytest.raises(PlannerSettingsError, match='elites'):  # both given: the user's contradiction
        resolve(CALIBRATED, explicit={'samples': 8, 'elites': 20})


@pytest.mark.parametrize('key,value', [('samples', -3), ('solver', 'gradient'), ('goal_cost', 'max'),
                                       ('icem_white_fraction', 1.5), ('horizon', 0), ('elites', 'many')])
def test_an_invalid_stored_setting_is_refused_naming_its_key(key: str, value) -> None:
    meta = {'planner': {'settings': {key: value}}}
    with pytest.raises(PlannerSettingsError, match=rf"planner\.settings\.{key}'"):
        stored_settings(meta)
    with pytest.raises(PlannerSettingsError, match=key):
        resolve(meta)


def test_unknown_stored_keys_and_a_malformed_block_are_refused() -> None:
    with pytest.raises(PlannerSettingsError, match=r"unknown key\(s\) \['temperature'\]"):
        stored_settings({'planner': {'settings': {'temperature': 3}}})
    with pytest.raises(PlannerSettingsError, match="'settings' object"):
        stored_settings({'planner': ['icem']})


def test_whitened_without_calibration_is_refused_with_what_to_run() -> None:
    with pytest.raises(PlannerSettingsError, match='lewm calibrate'):
        resolve({'planner': {'settings': {'goal_metric': 'whitened'}}})


def test_lewm_tune_store_writes_settings_that_info_and_eval_flags_read(checkpoint: Path, capsys) -> None:
    assert main(['tune', '--checkpoint', str(checkpoint), '--store', 'samples=48', 'solver=cem',
                 'goal_cost=final']) == 0
    meta = read_metadata(checkpoint)
    assert meta['planner']['settings']['samples'] == 48 and 'not measured' in meta['planner']['source']
    assert main(['info', str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert 'planner      cem 48 x 30' in out and 'samples: checkpoint' in out
    # a user's flag wins over the stored value; the rest stays the checkpoint's
    from training.cli import build_parser
    from training.evaluation.evaluate import planner_settings_from_args

    argv = ['eval', '--checkpoint', str(checkpoint), '--samples', '20']
    resolved = planner_settings_from_args(build_parser(argv).parse_args(argv), meta, 'cpu')
    assert (resolved.config.samples, resolved.config.solver) == (20, 'cem')
    assert resolved.sources['samples'] == 'flag' and resolved.sources['solver'] == 'checkpoint'


def test_lewm_tune_refuses_unknown_or_invalid_stored_values(checkpoint: Path, capsys) -> None:
    with pytest.raises(SystemExit, match='unknown setting'):
        main(['tune', '--checkpoint', str(checkpoint), '--store', 'speed=3'])
    assert main(['tune', '--checkpoint', str(checkpoint), '--store', 'samples=-1']) == 1
    assert 'samples' in capsys.readouterr().err
    assert read_metadata(checkpoint).get('planner') is None  # nothing was written


def test_a_hand_edited_bad_setting_stops_lewm_info_with_the_key(checkpoint: Path, capsys) -> None:
    meta_path = checkpoint / 'meta.json'
    meta = json.loads(meta_path.read_text())
    meta['planner'] = {'settings': {'iterations': 0}, 'source': 'hand'}
    meta_path.write_text(json.dumps(meta))
    assert main(['info', str(checkpoint)]) == 1
    assert "planner.settings.iterations'" in capsys.readouterr().err


def test_presets_are_valid_planner_configs() -> None:
    for name, values in settings.PRESETS.items():
        PlannerConfig(**values)  # raises if a preset drifts out of range
        assert set(values) <= set(settings.STORED_KEYS), name
