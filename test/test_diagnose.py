"""`lewm diagnose`: failed episodes are split into model, search and objective failures as documented."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.evaluation.diagnose import _successes, as_plan, summarise


def row(index, expert_cost, planner_cost, expert_end, planner_end):
    return {'episode': index, 'start': [float(index)], 'replay_reaches_goal': True,
            'expert_cost': expert_cost, 'planner_cost': planner_cost,
            'expert_end': expert_end, 'planner_end': planner_end}


def test_failures_are_split_by_what_the_model_says_of_the_two_sequences():
    rows = [
        row(0, 1.0, 2.0, 0.1, 0.5),  # failed; expert cheaper and nearer: the search missed it
        row(1, 3.0, 2.0, 0.1, 0.5),  # failed; expert nearer, but the objective preferred the plan
        row(2, 1.0, 2.0, 0.5, 0.1),  # failed; the model says the plan ends nearer: the model is wrong
        row(3, 1.0, 2.0, 0.5, 0.5),  # failed; a tie counts against the model (it cannot tell them apart)
        row(4, 1.0, 2.0, 0.1, 0.5),  # succeeded: not a failure whatever the costs
    ]
    out = summarise(rows, [False, False, False, False, True])
    split = out['failures'], out['model_failures'], out['search_failures'], out['objective_failures']
    assert split == (4, 2, 1, 1)
    assert out['expert_cheaper'] == pytest.approx(4 / 5) and out['expert_ends_nearer'] == pytest.approx(3 / 5)
    assert 'failures' not in summarise(rows, None)  # without eval results: the cost figures only


def test_eval_results_of_other_episodes_are_refused(tmp_path):
    rows = [row(i, 1, 1, 1, 1) for i in range(2)]
    path = tmp_path / 'eval.json'
    path.write_text(json.dumps({'success_per_episode': [True, False],
                                'episode_states': [{'start': [0.0]}, {'start': [1.0]}]}))
    assert _successes([str(path)], rows) == [True, False]
    path.write_text(json.dumps({'success_per_episode': [True, False],
                                'episode_states': [{'start': [0.0]}, {'start': [7.0]}]}))
    with pytest.raises(SystemExit, match='other episodes'):
        _successes([str(path)], rows)


def test_the_expert_sequence_becomes_a_plan_of_the_planner_horizon():
    actions = np.arange(25 * 2, dtype=np.float32).reshape(25, 2)
    plan = as_plan(actions, horizon=5, frameskip=5)
    assert plan.shape == (5, 5, 2) and np.array_equal(plan.reshape(25, 2), actions)
    short = as_plan(actions, horizon=6, frameskip=5)  # a longer horizon: the rest is no motion
    assert np.array_equal(short.reshape(30, 2)[:25], actions) and not short.reshape(30, 2)[25:].any()
    assert as_plan(actions, horizon=4, frameskip=5).reshape(20, 2).tolist() == actions[:20].tolist()
