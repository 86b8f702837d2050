"""LatentPlanner: bounds, warm start, batching, history handling and input checks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_rollout import random_model

from lewm_ros.device import usable_cores
from lewm_ros.model import ModelConfig, load_preset
from lewm_ros.planning import BlockHistory, LatentPlanner, PlannerConfig, shift_plan
from lewm_ros.planning.planner import cpu_has_native_bf16, resolve_dtype, resolve_threads

LOW = np.array([-0.2, -1.0], np.float32)
HIGH = np.array([0.5, 0.3], np.float32)


def cpuinfo_says_native_bf16() -> bool:
    """Whether /proc/cpuinfo lists the AVX512_BF16 or AMX-BF16 flag (parsed here, independently)."""
    cpuinfo = Path('/proc/cpuinfo')
    text = cpuinfo.read_text(encoding='utf-8') if cpuinfo.is_file() else ''
    return re.search(r'^flags\s*:.*\b(avx512_bf16|amx_bf16)\b', text, re.MULTILINE) is not None


def planner_model():
    # float64 world model (action encoder + predictor) for exact comparisons; the image encoder
    # stays float32 because LeWM.encode normalises pixels to float32
    model = random_model(3, dtype=torch.float32)
    model.action_encoder.double()
    model.predictor.double()
    # non-trivial normalisation so that clamping in normalised space is really tested
    model.action_mean.copy_(torch.tensor([0.4, -0.5]))
    model.action_std.copy_(torch.tensor([0.3, 2.0]))
    return model


def scene(envs: int, frames: int, seed: int = 0):
    B, T = envs, frames
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (B, T, 16, 16, 3), dtype=np.uint8)
    actions = rng.uniform(LOW, HIGH, (B, T - 1, 3, 2)).astype(np.float32)
    goal = rng.integers(0, 256, (B, 16, 16, 3), dtype=np.uint8)
    return frames, actions, goal


def make_planner(model=None, **overrides) -> LatentPlanner:
    cfg = PlannerConfig(**{'samples': 40, 'iterations': 4, 'elites': 8, 'horizon': 3, 'receding_horizon': 1,
                           'dtype': 'float64', **overrides})  # fmt: skip
    return LatentPlanner(model if model is not None else planner_model(), cfg, LOW, HIGH)


@pytest.mark.parametrize('solver', ['cem', 'icem', 'mppi'])
def test_every_candidate_and_every_returned_action_is_within_the_bounds(solver: str) -> None:
    planner = make_planner(solver=solver, init_std=3.0)  # wide sampling: many candidates hit the box
    scored = []
    solve = planner.solver.solve

    def recording_solve(cost_fn, *args):
        def recording_cost(candidates):
            scored.append(candidates.clone())
            return cost_fn(candidates)

        return solve(recording_cost, *args)

    planner.solver.solve = recording_solve
    frames, actions, goal = scene(2, 3)
    result = planner.plan(frames, actions, goal)
    assert result.action_block.shape == (2, 3, 2) and result.sequence.shape == (2, 3, 3, 2)
    dtype = result.sequence.dtype
    low, high = torch.as_tensor(LOW, dtype=dtype), torch.as_tensor(HIGH, dtype=dtype)
    assert bool(((result.sequence >= low) & (result.sequence <= high)).all())
    # candidates live in normalised units; mapped back they must respect the env bounds too
    candidates = planner.model.denormalize_actions(torch.cat([c.reshape(-1, 2) for c in scored]))
    assert bool(((candidates >= low - 1e-9) & (candidates <= high + 1e-9)).all())
    for bound in (low, high):  # the bounds are active, else this test proves nothing
        assert bool(torch.isclose(candidates, bound, atol=1e-9).any(dim=0).all())
    assert result.to_execute.shape == (2, 3, 2)
    assert set(result.timing) == {'encode_ms', 'rollout_ms', 'solver_ms', 'total_ms'}


def test_shift_plan_drops_executed_blocks_and_pads_with_the_mean() -> None:
    plan = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    shifted = shift_plan(plan, 1)
    torch.testing.assert_close(shifted[:, :3], plan[:, 1:])
    assert bool((shifted[:, 3] == 0).all())
    assert bool((shift_plan(plan, 4) == 0).all())
    torch.testing.assert_close(shift_plan(plan, 0), plan)


def test_warm_start_starts_from_the_previous_plan_shifted_by_the_executed_blocks() -> None:
    planner = make_planner(horizon=4)
    starts = []
    solve = planner.solver.solve

    def recording_solve(cost_fn, mean, *args):
        starts.append(mean.clone())
        return solve(cost_fn, mean, *args)

    planner.solver.solve = recording_solve
    frames, actions, goal = scene(2, 3)
    first = planner.plan(frames, actions, goal)
    planner.plan(frames, actions, goal, executed_blocks=2)
    assert bool((starts[0] == 0).all()), 'the first plan starts cold, from the data mean'
    first_norm = planner.model.normalize_actions(first.sequence)
    torch.testing.assert_close(starts[1][:, :2], first_norm[:, 2:], atol=1e-9, rtol=0)
    assert bool((starts[1][:, 2:] == 0).all())
    planner.reset(env_ids=[1])
    planner.plan(frames, actions, goal, executed_blocks=1)
    assert not bool((starts[2][0] == 0).all()) and bool((starts[2][1] == 0).all())


def test_batched_plan_equals_per_environment_plans() -> None:
    model = planner_model()
    frames, actions, goal = scene(3, 3, seed=5)
    batched = make_planner(model).plan(frames, actions, goal)
    for b in range(3):
        alone = make_planner(model).plan(frames[b : b + 1], actions[b : b + 1], goal[b : b + 1], env_ids=[b])
        torch.testing.assert_close(batched.sequence[b], alone.sequence[0], atol=1e-9, rtol=0)
        # the image encoder is float32, and batching changes its rounding: costs agree to ~1e-8
        torch.testing.assert_close(batched.cost[b], alone.cost[0], atol=0, rtol=1e-6)


def test_planner_uses_the_whole_history_and_drops_older_frames() -> None:
    model = planner_model()
    frames, actions, goal = scene(1, 4, seed=2)
    goal_z = make_planner(model).encode_goal(goal)
    full = make_planner(model).plan(frames, actions, goal_z)
    trimmed = make_planner(model).plan(frames[:, 1:], actions[:, 1:], goal_z)
    torch.testing.assert_close(full.sequence, trimmed.sequence, atol=0, rtol=0)
    older = frames.copy()
    older[:, 1] = 255 - older[:, 1]  # a frame inside the 3-frame window changes the plan
    changed = make_planner(model).plan(older, actions, goal_z)
    assert (changed.cost - full.cost).abs().item() > 1e-7  # float64 rollout: far above rounding


def test_planning_from_frame_embeddings_equals_planning_from_frames() -> None:
    # the ROS node encodes each frame once, on arrival, and plans from the kept embeddings
    model = planner_model()
    frames, actions, goal = scene(2, 3, seed=4)
    from_frames = make_planner(model).plan(frames, actions, goal)
    embeddings = model.encode(torch.from_numpy(frames))
    from_embeddings = make_planner(model).plan(embeddings, actions, goal)
    torch.testing.assert_close(from_embeddings.sequence, from_frames.sequence, atol=0, rtol=0)
    torch.testing.assert_close(from_embeddings.cost, from_frames.cost, atol=0, rtol=0)
    with pytest.raises(ValueError, match='frame embeddings must be'):
        make_planner(model).plan(embeddings[..., :-1], actions, goal)


def test_bad_inputs_get_clear_errors() -> None:
    planner = make_planner()
    frames, actions, goal = scene(1, 3)
    with pytest.raises(ValueError, match='executed_actions must be'):
        planner.plan(frames, actions[:, :1], goal)
    with pytest.raises(ValueError, match='no executed_actions'):
        planner.plan(frames, None, goal)
    with pytest.raises(TypeError, match='uint8'):
        planner.plan(frames.astype(np.float32), actions, goal)
    with pytest.raises(ValueError, match='goal must be'):
        planner.plan(frames, actions, np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match='below action_high'):
        LatentPlanner(planner.model, PlannerConfig(), HIGH, LOW)


def test_block_history_keeps_boundary_frames_and_blocks() -> None:
    hist = BlockHistory(history=3, frameskip=2, action_dim=1)
    frame = lambda i: np.full((4, 4, 3), i, np.uint8)  # noqa: E731
    hist.reset(frame(0))
    boundaries = [hist.step(np.array([s], np.float32), frame(s + 1)) for s in range(7)]
    assert boundaries == [False, True, False, True, False, True, False]
    assert not hist.at_boundary
    assert [f[0, 0, 0] for f in hist.frames()] == [2, 4, 6]
    np.testing.assert_array_equal(hist.actions()[:, :, 0], [[2, 3], [4, 5]])


def test_score_gives_the_cost_the_planner_reports_for_its_plan() -> None:
    planner = make_planner()
    frames, actions, goal = scene(2, 3, seed=7)
    result = planner.plan(frames, actions, goal)
    scored = planner.score(frames, actions, goal, result.sequence[:, None])
    torch.testing.assert_close(scored[:, 0], result.cost, rtol=1e-9, atol=1e-12)
    # a plan of all-zero actions is a different plan, with (here) a higher cost than the optimised one
    zeros = torch.zeros_like(result.sequence)[:, None]
    assert bool((planner.score(frames, actions, goal, zeros)[:, 0] > result.cost).all())


def test_mean_goal_cost_averages_the_final_cost_of_every_shorter_horizon() -> None:
    model = planner_model()
    frames, actions, goal = scene(2, 3, seed=5)
    rng = np.random.default_rng(1)
    sequences = rng.uniform(LOW, HIGH, (2, 4, 3, 3, 2))  # (B, K, horizon 3, frameskip 3, A)
    mean_cost = make_planner(model, goal_cost='mean').score(frames, actions, goal, sequences)
    final_costs = [
        make_planner(model, horizon=h, receding_horizon=1).score(frames, actions, goal, sequences[:, :, :h])
        for h in (1, 2, 3)
    ]
    torch.testing.assert_close(mean_cost, torch.stack(final_costs).mean(0), rtol=1e-9, atol=1e-12)
    assert not torch.allclose(mean_cost, final_costs[-1]), 'the mean must differ from the final cost'
    with pytest.raises(ValueError, match='goal_cost'):
        PlannerConfig(goal_cost='sum')


def test_naive_and_cached_rollouts_give_the_same_plan() -> None:
    model = planner_model()
    frames, actions, goal = scene(2, 2, seed=3)
    cached = make_planner(model, rollout='cached').plan(frames, actions, goal)
    naive = make_planner(model, rollout='naive').plan(frames, actions, goal)
    torch.testing.assert_close(cached.sequence, naive.sequence, atol=1e-9, rtol=0)
    torch.testing.assert_close(cached.cost, naive.cost, atol=1e-12, rtol=1e-9)


@pytest.mark.skipif(
    not any(shutil.which(cc) for cc in ('c++', 'g++', 'clang++')),
    reason='torch.compile on a CPU needs a C++ compiler',
)
def test_compiled_rollout_plans_like_the_eager_one() -> None:
    # torch.compile (PlannerConfig.compile) must change the speed, not the plan: same noise, same result
    model = planner_model()
    frames, actions, goal = scene(1, 3, seed=4)
    eager = make_planner(model, iterations=2).plan(frames, actions, goal)
    compiled = make_planner(model, iterations=2, compile=True).plan(frames, actions, goal)
    torch.testing.assert_close(compiled.sequence, eager.sequence, atol=1e-6, rtol=0)
    torch.testing.assert_close(compiled.cost, eager.cost, atol=1e-6, rtol=1e-6)


def test_rollout_dtype_auto_takes_bf16_only_where_it_is_native() -> None:
    cpu = torch.device('cpu')
    assert resolve_dtype('float32', cpu) == torch.float32 and resolve_dtype('bfloat16', cpu) == torch.bfloat16
    native = cpuinfo_says_native_bf16()
    assert cpu_has_native_bf16() is native
    assert resolve_dtype('auto', cpu) == (torch.bfloat16 if native else torch.float32)
    assert make_planner(dtype='float64').rollout_dtype == torch.float64


def test_small_forwards_plan_on_one_cpu_thread_and_large_ones_on_all_cores() -> None:
    tiny = ModelConfig.from_dict(load_preset('tiny')['model'])  # predictor 4 heads x 32
    paper = ModelConfig.from_dict(load_preset('paper')['model'])  # 16 heads x 64
    assert resolve_threads(0, 64, tiny) == 1  # 64 candidates: 10 Hz MPC on a small CPU
    assert resolve_threads(0, 3000, tiny) == usable_cores()  # 300 candidates x 10 envs
    assert resolve_threads(0, 64, paper) == usable_cores()
    assert resolve_threads(3, 64, tiny) == 3  # an explicit count wins
    before = torch.get_num_threads()
    try:
        frames, actions, goal = scene(envs=1, frames=2)
        make_planner(threads=2).plan(frames, actions, goal)
        assert torch.get_num_threads() == 2  # applied at plan time (a process-wide setting)
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match='threads must be 0'):
        PlannerConfig(threads=-1)
