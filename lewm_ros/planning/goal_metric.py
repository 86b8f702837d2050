"""A goal distance measured in typical model steps: the embedding whitened by its step covariance.

SIGReg makes the embedding isotropic over the *data*, not over *motion*. On Reacher a 0.05 rad
shoulder error moves the embedding further than a 0.4 rad wrist error, so the plain squared
distance to the goal cannot place the wrist (docs/planning.md). Whitening with the covariance of the change
of the embedding over one model step, measured on normal episodes, weighs every direction by how
far one step typically moves along it: a joint that moves few pixels counts as much as one that
moves many. ``lewm calibrate`` measures it and stores it in the checkpoint with the surprise
threshold; the planner uses it with ``goal_metric: whitened``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# why goal_metric 'whitened' cannot be used, wherever that is found out (planner, node)
NOT_CALIBRATED = (
    "goal_metric 'whitened' needs the checkpoint's step covariance: run `lewm calibrate --checkpoint C "
    "--data held_out.h5` on it once, or plan with goal_metric 'euclidean'"
)

# ridge added to every eigenvalue, relative to the largest: directions the data never moves along
# get a large but finite weight
DEFAULT_RIDGE = 1e-3


def step_covariance(sequences: Iterable[torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Second moment (D, D) of one-step changes ``z[t + 1] - z[t]`` over sequences (T, D); and their count."""
    total: torch.Tensor | None = None
    count = 0
    for z in sequences:
        steps = (z[1:] - z[:-1]).double()
        moment = steps.T @ steps
        total = moment if total is None else total + moment
        count += len(steps)
    if total is None or count == 0:
        raise ValueError('no sequence has two frames: cannot measure one-step changes')
    return total / count, count


def whitening_matrix(covariance: torch.Tensor, ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """Symmetric ``W = (C + ridge * max_eig(C) * I) ** -1/2``, so that ``||W d||^2`` counts steps."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
    floor = ridge * float(eigenvalues.max().clamp(min=1e-12))
    scale = (eigenvalues.clamp(min=0.0) + floor).rsqrt()
    return ((eigenvectors * scale) @ eigenvectors.T).float()


def goal_metric_to_dict(matrix: torch.Tensor, ridge: float, steps: int, data: str) -> dict[str, Any]:
    """What ``lewm calibrate`` stores under ``goal_metric`` in a checkpoint's ``meta.json``."""
    return {
        'kind': 'step_whitening',
        'ridge': ridge,
        'steps': steps,
        'data': data,
        'matrix': [[round(float(v), 7) for v in row] for row in matrix.tolist()],
    }


def goal_metric_from_meta(meta: dict[str, Any], embed_dim: int) -> torch.Tensor | None:
    """The whitening matrix stored in a checkpoint's metadata, or None when it was never calibrated."""
    stored = meta.get('goal_metric')
    if not stored:
        return None
    matrix = torch.tensor(stored.get('matrix', []), dtype=torch.float32)
    if matrix.shape != (embed_dim, embed_dim):
        raise ValueError(
            f"the checkpoint's goal_metric matrix is {tuple(matrix.shape)}, the embedding has {embed_dim} "
            'dimensions: run `lewm calibrate` on this checkpoint again'
        )
    return matrix
