"""The goal-conditioned controller: it learns to reach goals, it travels in the checkpoint, it plans.

A toy linear system (embeddings = state, known dynamics) shows the hindsight training reaches
goals it never saw; a real (random-weight) LeWM shows the hybrid never returns a plan costlier
than the controller's own; real checkpoint directories show the save/load checks; and a micro
checkpoint trained on real MuJoCo episodes runs ``lewm train-controller`` and ``lewm eval
--solver controller`` end to end.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lewm_ros.checkpoint import (
    CONTROLLER_FILE,
    CheckpointError,
    build_metadata,
    load_controller,
    read_metadata,
    save_checkpoint,
    save_controller,
)
from lewm_ros.model import LeWM, ModelConfig
from lewm_ros.planning import LatentPlanner, PlannerConfig
from lewm_ros.planning.controller import ControllerConfig, GoalController
from training.evaluation.tune import CONTROLLER_CANDIDATES, default_candidates
from training.fit.controller import EmbeddedEpisodes, HindsightSampler, fit_controller, split_pools

# -- a linear system: state x in R^2, x' = x + STEP * M a, a in [-1, 1]^2 ---------------------------
M = np.array([[0.8, -0.5], [0.3, 0.9]])
STEP, FS = 0.05, 2


def linear_episodes(episodes: int, length: int, seed: int) -> EmbeddedEpisodes:
    """Random-action episodes of the linear system, as the embedded episodes the trainer reads."""
    rng = np.random.default_rng(seed)
    z, actions, first, last, episode = [], [], [], [], []
    for e in range(episodes):
        x = rng.uniform(-1, 1, 2)
        acts = rng.uniform(-1, 1, (length, 2))
        xs = [x]
        for a in acts[:-1]:
            xs.append(xs[-1] + STEP * M @ a)
        offset = e * length
        z.append(np.stack(xs))
        actions.append(acts / np.sqrt(1 / 3))  # z-scored: uniform(-1, 1) has std 1/sqrt(3)
        first.append(np.full(length, offset))
        last.append(np.full(length, offset + length - 1))
        episode.append(np.full(length, e))
    cat = lambda parts, dtype: torch.from_numpy(np.concatenate(parts).astype(dtype))  # noqa: E731
    return EmbeddedEpisodes(
        cat(z, np.float32),
        cat(actions, np.float32),
        cat(first, np.int64),
        cat(last, np.int64),
        cat(episode, np.int64),
    )


def test_hindsight_samples_stay_in_their_episode_and_mask_what_it_does_not_hold() -> None:
    data = linear_episodes(episodes=5, length=23, seed=0)
    data.finite[30] = False  # a NaN action in episode 1: blocks holding it are no target
    pool, _, _ = split_pools(data, FS, 0.2, seed=0)
    sampler = HindsightSampler(data, pool, FS, history=3, horizon=4, max_ahead=6)
    z, blocks, goal, k, targets, mask = sampler.sample(4000, torch.Generator().manual_seed(0))
    assert int(k.min()) == 1 and int(k.max()) == 6
    for i in range(0, 4000, 37):  # rebuild a few samples by hand from the episode arrays
        current = int(torch.nonzero((data.z == z[i, -1]).all(1))[0, 0])
        start, end = int(data.first[current]), int(data.last[current])
        assert current + int(k[i]) * FS <= end
        assert torch.equal(goal[i], data.z[current + int(k[i]) * FS])
        assert torch.equal(targets[i, 0].reshape(-1), data.actions[current : current + FS].reshape(-1))
        for j in range(4):  # a block is a target if it ends before the episode's last action, NaN-free
            rows = range(current + j * FS, current + (j + 1) * FS)
            expected = rows[-1] < end and 30 not in rows
            assert mask[i, j] == float(expected), (current, j, end)
        for j in range(3):  # history frames FS apart; before the episode start, the oldest repeated
            back = 2 - j
            source = max(current - back * FS, current - ((current - start) // FS) * FS)
            assert torch.equal(z[i, j], data.z[source])
        if current - start < FS:  # the only frame: both blocks before it are zero (standing still)
            assert not blocks[i].any()


def rollout_linear(
    controller: GoalController, start: np.ndarray, goal: np.ndarray, blocks: int, ahead: int
) -> np.ndarray:
    """Closed loop on the true system: the controller re-applied at every block; returns the end state."""
    x, history, executed = start.copy(), [start.copy()], []
    for _ in range(blocks):
        z = torch.tensor(np.stack(history[-2:]), dtype=torch.float32)[None]
        b = (
            torch.tensor(np.stack(executed[-1:]), dtype=torch.float32).reshape(1, -1, FS * 2)
            if executed
            else None
        )
        with torch.no_grad():
            out = controller(z, b, torch.tensor(goal, dtype=torch.float32)[None], ahead)[0, 0]
        block = np.clip(out.numpy() * np.sqrt(1 / 3), -1, 1)
        for a in block:
            x = x + STEP * M @ a
        history.append(x.copy())
        executed.append(block / np.sqrt(1 / 3))
    return x


def test_controller_trained_on_a_linear_system_reaches_goals_it_never_saw() -> None:
    data = linear_episodes(episodes=300, length=40, seed=1)
    train, val, _ = split_pools(data, FS, 0.1, seed=0)
    config = ControllerConfig(
        embed_dim=2, action_dim=2, frameskip=FS, history=2, horizon=3, hidden=128, depth=2, max_steps_ahead=6
    )
    controller, history = fit_controller(
        data, config, train, val, steps=1500, batch_size=256, lr=3e-3, val_every=500
    )
    assert history[-1]['r2_next_block'] > 0.1  # random actions: most of each block is noise
    rng = np.random.default_rng(123)  # fresh starts and goals: none is a state of the training data
    errors, before = [], []
    for _ in range(40):
        start = rng.uniform(-0.8, 0.8, 2)
        goal = start + rng.uniform(-0.25, 0.25, 2)  # within reach: a block moves up to ~0.13
        end = rollout_linear(controller, start, goal, blocks=8, ahead=2)
        errors.append(np.linalg.norm(end - goal))
        before.append(np.linalg.norm(start - goal))
    errors, before = np.array(errors), np.array(before)
    assert np.median(errors) < 0.03, errors  # a zero controller stays at the start, ~0.2 away
    assert (errors < 0.3 * before).mean() >= 0.9, (errors, before)


# -- planner integration with a real (random-weight) LeWM ------------------------------------------
def small_model(seed: int = 0) -> LeWM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        image_size=16,
        patch_size=8,
        encoder_width=32,
        encoder_depth=1,
        encoder_heads=2,
        encoder_mlp_dim=64,
        embed_dim=16,
        projector_hidden=32,
        action_dim=2,
        frameskip=2,
        history=2,
        action_hidden=32,
        predictor_depth=1,
        predictor_heads=2,
        predictor_head_dim=16,
        predictor_mlp_dim=64,
    )
    model = LeWM(cfg)
    with torch.no_grad():  # AdaLN-zero starts blind to actions: give every weight a value, as training does
        for parameter in model.predictor.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model.eval()


def random_controller(model: LeWM, seed: int = 0) -> GoalController:
    mc = model.config
    torch.manual_seed(seed)
    controller = GoalController(
        ControllerConfig(
            embed_dim=mc.embed_dim,
            action_dim=mc.action_dim,
            frameskip=mc.frameskip,
            history=2,
            hidden=32,
            depth=1,
            horizon=3,
        )
    )
    torch.nn.init.normal_(controller.head.weight, std=0.1)  # a head that is not the zero plan
    return controller.eval()


def test_hybrid_never_returns_a_plan_costlier_than_the_controllers() -> None:
    model = small_model()
    controller = random_controller(model)
    c = controller.config
    goal_columns = c.history * c.embed_dim + (c.history - 1) * c.frameskip * c.action_dim
    with torch.no_grad():  # blind to the goal, so the goal below cannot change its plan
        controller.body[0].weight[:, goal_columns : goal_columns + 2 * c.embed_dim] = 0
    config = PlannerConfig(
        solver='icem',
        proposal='controller',
        samples=16,
        iterations=2,
        elites=4,
        horizon=3,
        receding_horizon=1,
        init_std=1.0,
        goal_cost='final',
        dtype='float32',
    )
    hybrid = LatentPlanner(model, config, [-1, -1], [1, 1], controller=controller)
    alone = LatentPlanner(model, config.replace(solver='controller'), [-1, -1], [1, 1], controller=controller)
    rng = np.random.default_rng(0)
    for trial in range(6):
        frames = rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
        executed = rng.uniform(-1, 1, (2, 1, 2, 2)).astype(np.float32)
        proposal = alone.plan(frames, executed, torch.zeros(2, 16)).sequence
        # the hardest goal for a search: exactly where the controller's plan ends (its cost is 0)
        goal = hybrid_goal(hybrid, frames, executed, proposal)
        result = hybrid.plan(frames, executed, goal)
        proposal_cost = hybrid.score(frames, executed, goal, proposal[:, None])[:, 0]
        assert torch.all(proposal_cost < 1e-6)
        assert torch.all(result.cost <= proposal_cost + 1e-6), (trial, result.cost, proposal_cost)
        assert torch.allclose(
            hybrid.score(frames, executed, goal, result.sequence[:, None])[:, 0], result.cost, atol=1e-5
        )
        assert torch.all((result.sequence >= -1) & (result.sequence <= 1))


def hybrid_goal(
    planner: LatentPlanner, frames: np.ndarray, executed: np.ndarray, sequence: torch.Tensor
) -> torch.Tensor:
    """The embedding the world model predicts at the end of ``sequence``: a goal of cost 0 for it."""
    planner._prepare(frames, executed, torch.zeros(len(frames), planner.embed_dim))
    norm = planner.model.normalize_actions(sequence.to(planner.dtype))
    B, H = norm.shape[:2]
    emb = planner._embed_actions(norm.reshape(B, 1, H, -1))
    return planner.rollout(emb)[:, 0].to(planner.dtype)


def test_a_planner_that_does_not_ask_for_the_controller_does_not_use_it() -> None:
    model = small_model()
    config = PlannerConfig(solver='icem', samples=16, iterations=2, elites=4, horizon=3, receding_horizon=1,
                           dtype='float32')
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 256, (2, 2, 16, 16, 3), dtype=np.uint8)
    executed = rng.uniform(-1, 1, (2, 1, 2, 2)).astype(np.float32)
    goal = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    plain = LatentPlanner(model, config, [-1, -1], [1, 1])
    handed = LatentPlanner(model, config, [-1, -1], [1, 1], controller=random_controller(model))
    assert handed.controller is None
    first, second = plain.plan(frames, executed, goal), handed.plan(frames, executed, goal)
    assert torch.equal(first.sequence, second.sequence) and first.evaluations == second.evaluations


def test_a_controller_reading_more_frames_than_the_planner_keeps_is_refused() -> None:
    model = small_model()  # history 2
    mc = model.config
    wide = GoalController(ControllerConfig(mc.embed_dim, mc.action_dim, mc.frameskip, history=3, hidden=8,
                                           depth=1))
    config = PlannerConfig(solver='controller', horizon=3, receding_horizon=1)
    with pytest.raises(ValueError, match='reads 3 frames; this planner keeps 2'):
        LatentPlanner(model, config, controller=wide)


def test_controller_solver_plays_the_controllers_plan_within_the_bounds() -> None:
    model = small_model()
    controller = random_controller(model)
    config = PlannerConfig(
        solver='controller', horizon=3, receding_horizon=1, controller_ahead=2, dtype='float32'
    )
    planner = LatentPlanner(model, config, [-0.2, -0.3], [0.2, 0.3], controller=controller)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8)
    executed = rng.uniform(-1, 1, (3, 1, 2, 2)).astype(np.float32)
    goal = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    result = planner.plan(frames, executed, goal)
    with torch.no_grad():
        z = model.encode(torch.from_numpy(frames))
        blocks = model.normalize_actions(torch.from_numpy(executed).reshape(3, 1, 4))
        expected = model.denormalize_actions(controller(z, blocks, planner.encode_goal(goal).float(), 2))
    expected = torch.clamp(expected, torch.tensor([-0.2, -0.3]), torch.tensor([0.2, 0.3]))
    assert torch.allclose(result.sequence.float(), expected, atol=1e-5)
    assert result.evaluations == 0 and bool(result.cost.isnan().all())  # no world-model rollout
    # the bounds bind: the random head asks for more than 0.2 in some dimension
    assert bool((result.sequence.abs() >= torch.tensor([0.2, 0.3]) - 1e-6).any())


# -- the controller in the checkpoint ---------------------------------------------------------------
def saved_checkpoint(path: Path, seed: int) -> Path:
    model = small_model(seed)
    save_checkpoint(path, model, build_metadata(model, action_low=[-1, -1], action_high=[1, 1]))
    return path


def test_controller_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    ckpt = saved_checkpoint(tmp_path / 'ckpt', seed=0)
    model = small_model(0)
    controller = random_controller(model, seed=3)
    block = save_controller(ckpt, controller, {'validation': {'loss': 0.5}})
    meta = read_metadata(ckpt)
    assert meta['controller'] == block and block['world_model_sha256'] == meta['weights']['sha256']
    loaded = load_controller(ckpt)
    assert loaded.config == controller.config
    for name, tensor in controller.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    planner = LatentPlanner.from_checkpoint(
        ckpt, PlannerConfig(solver='controller', horizon=3, receding_horizon=1, device='cpu')
    )
    assert planner.controller is not None


def test_a_checkpoint_without_a_controller_says_how_to_train_one(tmp_path: Path) -> None:
    ckpt = saved_checkpoint(tmp_path / 'ckpt', seed=0)
    with pytest.raises(CheckpointError, match='lewm train-controller'):
        load_controller(ckpt)
    with pytest.raises(CheckpointError, match='has no controller'):
        LatentPlanner.from_checkpoint(ckpt, PlannerConfig(solver='icem', proposal='controller', device='cpu'))
    with pytest.raises(ValueError, match='needs the checkpoint.s controller'):
        LatentPlanner(small_model(), PlannerConfig(solver='controller'))
    # a sampling planner does not need one
    assert LatentPlanner.from_checkpoint(ckpt, PlannerConfig(solver='icem', device='cpu')).controller is None


def test_a_controller_of_another_world_model_or_a_damaged_one_is_refused(tmp_path: Path) -> None:
    first = saved_checkpoint(tmp_path / 'first', seed=0)
    second = saved_checkpoint(tmp_path / 'second', seed=1)  # same shapes, other weights
    save_controller(first, random_controller(small_model(0)))
    # the controller file and its meta block carried over to another model, as a careless copy would
    shutil.copy(first / CONTROLLER_FILE, second / CONTROLLER_FILE)
    meta = json.loads((second / 'meta.json').read_text())
    meta['controller'] = read_metadata(first)['controller']
    (second / 'meta.json').write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match='another world model'):
        load_controller(second)
    # retraining the world model in place, keeping the old meta: refused too
    save_checkpoint(first, small_model(2), read_metadata(first))
    with pytest.raises(CheckpointError, match='another world model'):
        load_controller(first)
    # a damaged file
    third = saved_checkpoint(tmp_path / 'third', seed=0)
    save_controller(third, random_controller(small_model(0)))
    raw = bytearray((third / CONTROLLER_FILE).read_bytes())
    raw[-3] ^= 0xFF
    (third / CONTROLLER_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match='does not match the sha256'):
        load_controller(third)


# -- end to end on real MuJoCo episodes -------------------------------------------------------------
def test_train_controller_then_eval_tune_and_compare_with_it_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip('mujoco')
    pytest.importorskip('h5py')
    from training.cli import main

    data, run = tmp_path / 'tworoom.h5', tmp_path / 'run'
    assert main(['collect', '--env', 'lewm/TwoRoom-v0', '--episodes', '6', '--out', str(data),
                 '--img-size', '32', '--steps', '40', '--noise', '0.1']) == 0
    assert main(['train', '--config', 'micro', '--data', str(data), '--out', str(run), '--device', 'cpu',
                 '--set', 'optim.max_steps=10', '--set', 'train.log_every=10']) == 0
    ckpt, report = run / 'final', tmp_path / 'controller.json'
    assert main(['train-controller', '--checkpoint', str(ckpt), '--data', str(data), '--steps', '30',
                 '--val-every', '10', '--batch-size', '64', '--hidden', '64',
                 '--log-dir', str(tmp_path / 'tb'), '--json', str(report), '--no-progress']) == 0
    figures = json.loads(report.read_text())
    assert [h['step'] for h in figures['history']] == [10, 20, 30]
    assert figures['trained']['episodes_train'] + figures['trained']['episodes_val'] == 6
    assert list((tmp_path / 'tb').glob('events.out.tfevents.*'))
    assert read_metadata(ckpt)['controller']['validation'] == figures['validation']

    out = tmp_path / 'eval.json'
    assert main(['eval', '--checkpoint', str(ckpt), '--solver', 'controller', '--episodes', '2',
                 '--envs', '2', '--budget', '10', '--device', 'cpu', '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert result['planner']['solver'] == 'controller' and result['episodes'] == 2
    assert result['plan_calls'] == 2  # 10 steps = 2 blocks of 5, one plan per block

    compared = tmp_path / 'compare.json'
    assert main(['eval', '--checkpoint', str(ckpt), '--compare', 'controller', 'hybrid', '--episodes', '2',
                 '--envs', '2', '--budget', '5', '--device', 'cpu', '--json', str(compared)]) == 0
    rows = json.loads(compared.read_text())['candidates']
    assert [r['name'] for r in rows] == ['controller', 'hybrid'] and all(r['episodes'] == 2 for r in rows)
    assert rows[1]['planner']['proposal'] == 'controller' and rows[1]['planner']['iterations'] == 3

    tuned = tmp_path / 'tune.json'
    assert main(['tune', '--checkpoint', str(ckpt), '--episodes', '2', '--envs', '2', '--dry-run',
                 '--candidates', 'paper', 'controller', 'hybrid', '--json', str(tuned)]) == 0
    rows = json.loads(tuned.read_text())['candidates']
    assert [r['name'] for r in rows] == ['paper', 'controller', 'hybrid']
    assert rows[1]['settings']['solver'] == 'controller' and rows[2]['settings']['proposal'] == 'controller'
    # without --candidates a checkpoint with a controller tries it; one without does not
    assert set(CONTROLLER_CANDIDATES) <= set(default_candidates(read_metadata(ckpt)))
    assert not set(CONTROLLER_CANDIDATES) & set(default_candidates({'controller': None}))
