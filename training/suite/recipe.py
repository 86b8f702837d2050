"""A task's recipe: the versioned YAML ``config/recipes/<task>-<scale>.yaml``, and the commands it stands for.

A recipe says how to collect the task's data, which training preset to use, how to tune, calibrate and
evaluate. ``stages`` turns it into the ``lewm`` command lines that ``lewm suite`` runs one after the
other (and ``lewm demo --retrain`` runs up to the evaluation), so the recipe lives in one file and
nowhere else.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from training.fit.train_config import apply_overrides

TASKS = ('tworoom', 'reacher', 'pusht', 'cube')
SCALES = ('cpu', 'paper')

# the keys a recipe must have, with the keys each section may have (a typo must not pass unseen)
SCHEMA: dict[str, tuple[str, ...] | None] = {
    'name': None, 'env_id': None, 'paper_success': None, 'img_size': None, 'surprise_quantile': None,
    'data': ('episodes', 'policy', 'noise', 'expert_fraction', 'workers', 'seed', 'steps'),
    'calibration_data': ('episodes', 'policy', 'noise', 'seed', 'steps'),
    'train': ('config', 'set'),
    'tune': ('candidates', 'episodes', 'envs'),
    'controller': ('before_tune', 'steps'),
    'eval': ('episodes', 'seeds', 'envs', 'budget'),
    'calibrate': ('closed_loop',),
    'probe': ('dims', 'angle_dims', 'names'),
}
OPTIONAL = ('calibrate',)
# a stage that only reads the checkpoint and whose output no later stage reads: running it again does not
# make the stages after it run again (an evaluation does: the diagnosis reads its results)
READ_ONLY = ('probe',)

# what --smoke makes of any recipe: a few episodes and steps per stage, the model and its image size kept
SMOKE = [
    'data.episodes=3', 'data.workers=1', 'data.steps=40', 'calibration_data.episodes=2',
    'calibration_data.steps=40', 'tune.episodes=1', 'tune.envs=1', 'tune.candidates=[recommended]',
    'controller.steps=5', 'eval.episodes=2', 'eval.envs=2', 'eval.budget=10', 'calibrate.closed_loop=1',
]
SMOKE_TRAIN = ['optim.max_steps=3', 'optim.warmup_steps=1', 'data.batch_size=4', 'train.log_every=1',
               'data.val_fraction=0.34']


class RecipeError(ValueError):
    """A recipe file that is missing, malformed, or names keys we do not know."""


def recipe_path(task: str, scale: str) -> Path:
    """Where the recipe of ``task`` at ``scale`` lives (in the source tree or the installed share folder)."""
    from lewm_ros.paths import config_path

    return config_path('recipes', f'{task}-{scale}.yaml')


def load_recipe(
    task: str, scale: str, overrides: list[str] | None = None, smoke: bool = False
) -> dict[str, Any]:
    """The recipe of ``task`` at ``scale``, shrunk by ``smoke``, with ``section.key=value`` overrides."""
    if task not in TASKS:
        raise RecipeError(f'unknown task {task!r}; known: {", ".join(TASKS)}')
    if scale not in SCALES:
        raise RecipeError(f'unknown scale {scale!r}; known: {", ".join(SCALES)}')
    path = recipe_path(task, scale)
    if not path.is_file():
        raise RecipeError(f'no recipe {path}')
    recipe = yaml.safe_load(path.read_text(encoding='utf-8'))
    recipe.setdefault('calibrate', {})
    recipe['scale'], recipe['source'] = scale, str(path)
    if smoke:
        recipe = apply_overrides(recipe, SMOKE)
        recipe['train']['set'] = [*recipe['train'].get('set', []), *SMOKE_TRAIN]
        recipe['smoke'] = True
    try:
        recipe = apply_overrides(recipe, overrides or [])
    except ValueError as err:
        raise RecipeError(str(err)) from err
    check(recipe, path)
    return recipe


def check(recipe: dict[str, Any], path: Path) -> None:
    """Reject a recipe with a missing section or an unknown key."""
    for key, allowed in SCHEMA.items():
        if key not in recipe and key not in OPTIONAL:
            raise RecipeError(f'{path}: missing {key!r}')
        if allowed is not None:
            section = recipe.get(key) or {}
            if not isinstance(section, dict):
                raise RecipeError(f'{path}: {key!r} must be a mapping')
            unknown = sorted(set(section) - set(allowed))
            if unknown:
                raise RecipeError(f'{path}: unknown key(s) {unknown} in {key!r}; known: {list(allowed)}')
    unknown = sorted(set(recipe) - set(SCHEMA) - {'scale', 'source', 'smoke'})
    if unknown:
        raise RecipeError(f'{path}: unknown key(s) {unknown}; known: {list(SCHEMA)}')
    for item in recipe['train'].get('set') or []:
        key, _, value = str(item).partition('=')
        if key.strip() == 'model.image_size' and int(value) != int(recipe['img_size']):
            raise RecipeError(f'{path}: train.set trains at {value} px but img_size records '
                              f'{recipe["img_size"]} px')


@dataclass(frozen=True)
class Stage:
    """One ``lewm`` command of a recipe, named so that a resumed run can tell which ones are done."""

    name: str
    argv: tuple[str, ...]  # the command line after ``lewm``

    @property
    def command(self) -> str:
        """The command as a user would type it."""
        return shlex.join(['lewm', *self.argv])


@dataclass(frozen=True)
class TaskPaths:
    """Where a task's files go under the suite's output folder."""

    root: Path

    @property
    def data(self) -> Path:
        """The training episodes."""
        return self.root / 'train.h5'

    @property
    def calibration(self) -> Path:
        """Held-out expert episodes for the goal metric and the surprise threshold."""
        return self.root / 'calib.h5'

    @property
    def run(self) -> Path:
        """The training run folder."""
        return self.root / 'run'

    @property
    def checkpoint(self) -> Path:
        """The finished checkpoint that calibration, tuning and evaluation read and extend."""
        return self.root / 'run' / 'final'

    def eval_json(self, seed: int) -> Path:
        """The evaluation results of one seed."""
        return self.root / 'eval' / f'seed{seed}.json'

    def diagnose_json(self, seed: int) -> Path:
        """The failure analysis of one seed's episodes."""
        return self.root / 'eval' / f'diagnose-seed{seed}.json'

    @property
    def stamps(self) -> Path:
        """The stage stamps (what ran, with which command, how long)."""
        return self.root / 'stages'


def _flags(pairs: dict[str, Any]) -> list[str]:
    """``{'--noise': 0.5, '--x': None}`` -> ``['--noise', '0.5']`` (None leaves a flag out)."""
    out: list[str] = []
    for flag, value in pairs.items():
        if value is None:
            continue
        out += [flag, *(str(v) for v in value)] if isinstance(value, list) else [flag, str(value)]
    return out


def collect_argv(recipe: dict[str, Any], section: str, out: Path) -> list[str]:
    """``lewm collect`` for the training data (``data``) or the calibration episodes."""
    spec = recipe[section]
    return ['collect', '--env', recipe['env_id'], '--img-size', str(recipe['img_size']), *_flags({
        '--episodes': spec['episodes'], '--policy': spec['policy'], '--noise': spec.get('noise'),
        '--expert-fraction': spec.get('expert_fraction'), '--workers': spec.get('workers'),
        '--seed': spec['seed'], '--steps': spec.get('steps'),
    }), '--out', str(out), '--overwrite']


def training_stages(recipe: dict[str, Any], paths: TaskPaths) -> list[Stage]:
    """Collect, train, calibrate, tune and train the controller: the recipe up to a finished checkpoint."""
    ckpt = str(paths.checkpoint)
    train = recipe['train']
    tune, ctrl, calib = recipe['tune'] or {}, recipe['controller'] or {}, recipe['calibrate'] or {}
    controller = Stage('train-controller', (
        'train-controller', '--checkpoint', ckpt, '--data', str(paths.data), '--log-dir', '',
        *_flags({'--steps': ctrl.get('steps')})))
    stages = [
        Stage('collect', tuple(collect_argv(recipe, 'data', paths.data))),
        Stage('collect-calibration', tuple(collect_argv(recipe, 'calibration_data', paths.calibration))),
        Stage('train', ('train', '--config', train['config'], '--data', str(paths.data),
                        '--out', str(paths.run),
                        *[part for item in train.get('set') or [] for part in ('--set', item)])),
        # goal metric first (the tuned planner measures with it), then the planner settings, then the
        # surprise threshold on frames that planner drives
        # what the embeddings encode of the task's state (the object's pose above all), on held-out episodes
        Stage('probe', ('probe', '--checkpoint', ckpt, '--data', str(paths.calibration), *_flags({
            '--dims': recipe['probe']['dims'], '--angle-dims': recipe['probe'].get('angle_dims')}),
            '--json', str(paths.root / 'probe.json'))),
        Stage('calibrate-metric', ('calibrate', '--checkpoint', ckpt, '--data', str(paths.calibration),
                                   '--closed-loop', '0')),
    ]
    if ctrl.get('before_tune'):
        stages.append(controller)
    stages.append(Stage('tune', ('tune', '--checkpoint', ckpt, *_flags({
        '--episodes': tune.get('episodes'), '--envs': tune.get('envs'),
        '--candidates': tune.get('candidates')}))))
    stages.append(Stage('calibrate-surprise', (
        'calibrate', '--checkpoint', ckpt, '--data', str(paths.calibration),
        '--quantile', str(recipe['surprise_quantile']),
        *_flags({'--closed-loop': calib.get('closed_loop')}))))
    if not ctrl.get('before_tune'):
        # last: the stored planner stays the tuned search; the controller is a planner_preset away
        stages.append(controller)
    return stages


def eval_stages(recipe: dict[str, Any], paths: TaskPaths, checkpoint: Path) -> list[Stage]:
    """``lewm eval`` once per seed, on the paper's protocol, each writing its JSON."""
    spec = recipe['eval']
    return [Stage(f'eval-seed{seed}', ('eval', '--checkpoint', str(checkpoint), '--seed', str(seed), *_flags({
        '--episodes': spec['episodes'], '--envs': spec.get('envs'), '--budget': spec.get('budget')}),
        '--json', str(paths.eval_json(seed)))) for seed in spec['seeds']]


def diagnose_stages(recipe: dict[str, Any], paths: TaskPaths, checkpoint: Path) -> list[Stage]:
    """``lewm diagnose`` on each seed's episodes: its failures split into search and model failures."""
    spec = recipe['eval']
    return [Stage(f'diagnose-seed{seed}', (
        'diagnose', '--checkpoint', str(checkpoint), '--seed', str(seed), *_flags({
            '--episodes': spec['episodes'], '--envs': spec.get('envs')}),
        '--eval-json', str(paths.eval_json(seed)), '--json', str(paths.diagnose_json(seed))))
        for seed in spec['seeds']]


def stages(recipe: dict[str, Any], paths: TaskPaths, shipped: Path | None = None) -> list[Stage]:
    """Every stage of the recipe; with ``shipped``, only the evaluation (and diagnosis) of that checkpoint."""
    checkpoint = paths.checkpoint if shipped is None else shipped
    evaluation = [*eval_stages(recipe, paths, checkpoint), *diagnose_stages(recipe, paths, checkpoint)]
    return evaluation if shipped is not None else [*training_stages(recipe, paths), *evaluation]

