"""Latent rollouts of candidate action sequences: the naive reference form and a cached one.

Conventions (shared by both): ``T`` observed frames at block boundaries, embeddings
``z_obs`` (B, T, D); ``T - 1`` executed action blocks between them, embedded ``obs_actions``
(B, T - 1, D); ``N`` candidates of ``H`` blocks each, embedded ``candidates`` (B, N, H, D).
Token ``i`` of the growing sequence is frame ``i`` (observed for ``i < T``, predicted after),
and it is modulated by the action block executed *after* it: the executed block for
``i < T - 1``, candidate block ``i - T + 1`` from the last observed frame on. Step ``k``
predicts frame ``T + k`` from the last ``min(history, T + k)`` tokens, whose window
positions start at 0 (the predictor's positional embedding is absolute over its window).

Why a cache helps, and what it may reuse: because positions are absolute in the window, a
token's keys/values change whenever the window slides, so nothing is carried across a slide.
What does not change during a plan is cached:

* the observed frames with their *executed* actions that open a window (the same for all
  candidates and all solver iterations): computed once per plan with batch B per distinct
  window start, and broadcast over the candidates;
* while the window still grows (``T + k <= history``) tokens keep their positions, so the
  keys/values of the previous step are reused and only the new token is computed;
* the AdaLN modulation of a token depends only on its action: computed once per candidate
  block per call, not once per window it appears in;
* only the last token's output is used: in the last layer only its query, attention and
  MLP are computed, and the final norm and projector run on it alone.

The naive rollout recomputes the whole window for every candidate at every step through
``model.predict``; the test suite checks that both give the same numbers.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lewm_ros.model import Predictor

KV = tuple[torch.Tensor, torch.Tensor]


def token_layout(observed: int, k: int, history: int) -> tuple[int, int]:
    """Window of rollout step ``k`` after ``observed`` frames: (first token index, window length)."""
    length = min(history, observed + k)
    return observed + k - length, length


@torch.no_grad()
def naive_rollout(
    predictor: Predictor,
    z_obs: torch.Tensor,
    obs_actions: torch.Tensor,
    candidates: torch.Tensor,
    history: int,
) -> torch.Tensor:
    """Predicted embeddings of frames ``T .. T + H - 1`` for every candidate, (B, N, H, D).

    Every step feeds the whole window of every candidate through the predictor, as the
    reference planner does. Kept as the ground truth for :class:`CachedRollout`.
    """
    B, T, D = z_obs.shape
    N, H = candidates.shape[1:3]
    seq = z_obs.unsqueeze(1).expand(B, N, T, D).reshape(B * N, T, D)
    acts = torch.cat(
        [
            obs_actions.unsqueeze(1).expand(B, N, T - 1, D).reshape(B * N, T - 1, D),
            candidates.reshape(B * N, H, D),
        ],
        dim=1,
    )
    outputs = []
    for k in range(H):
        start, _ = token_layout(T, k, history)
        pred = predictor(seq[:, start : T + k], acts[:, start : T + k])[:, -1]
        outputs.append(pred)
        seq = torch.cat([seq, pred.unsqueeze(1)], dim=1)
    return torch.stack(outputs, dim=1).reshape(B, N, H, D)


class CachedRollout:
    """Rollout that computes only what changes between candidates (see the module docstring).

    Use: ``prepare(z_obs, obs_actions)`` once per plan, then call with candidate action
    embeddings as often as the solver needs. Works on any device; ``dtype`` runs the rollout in
    another precision (e.g. ``torch.bfloat16`` on a CPU with bf16 units) on a private copy of
    the predictor, while inputs and outputs stay float32.

    It reads the predictor's blocks directly (``ada``, ``norm1``, ``attn.qkv``, ``attn.proj``,
    ``norm2``, ``mlp``) to skip what the plain forward would compute and discard.
    """

    def __init__(self, predictor: Predictor, dtype: torch.dtype | None = None) -> None:
        for name in ('pos_embed', 'blocks', 'norm', 'projector', 'history'):
            if not hasattr(predictor, name):
                raise TypeError(
                    f'CachedRollout needs a LeWM Predictor; {type(predictor).__name__} has no {name!r}'
                )
        param_dtype = predictor.pos_embed.dtype
        if dtype is not None and dtype != param_dtype:
            predictor = copy.deepcopy(predictor).to(dtype)
        self.predictor = predictor.eval()
        self.dtype = predictor.pos_embed.dtype
        self.history = int(predictor.history)
        self.blocks = list(predictor.blocks)
        attn = self.blocks[0].attn
        self.heads, self.head_dim, self.inner = attn.heads, attn.head_dim, attn.inner
        self._z_obs: torch.Tensor | None = None
        self._prefixes: dict[tuple[int, int], list[KV]] = {}

    # -- per plan ------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, z_obs: torch.Tensor, obs_actions: torch.Tensor, horizon: int) -> None:
        """Cache the observed context: the executed-action prefix of each window of the rollout."""
        B, T, _ = z_obs.shape
        if obs_actions.shape[:2] != (B, T - 1):
            raise ValueError(
                f'{T} observed frames need {T - 1} executed action blocks, '
                f'got obs_actions {tuple(obs_actions.shape)}'
            )
        self._z_obs = z_obs.to(self.dtype)
        self._T = T
        self._prefixes = {}
        obs_actions = obs_actions.to(self.dtype)
        for k in range(horizon):
            start, _ = token_layout(T, k, self.history)
            n_prefix = max(0, T - 1 - start)
            if n_prefix and (start, n_prefix) not in self._prefixes:
                x = self._z_obs[:, start : start + n_prefix]
                mods = self._modulation(obs_actions[:, start : start + n_prefix])
                _, kv = self._blocks(x, mods, start_pos=0, prefix=None, want_output=False)
                self._prefixes[(start, n_prefix)] = kv

    # -- per solver iteration -----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, candidates: torch.Tensor, return_all: bool = False) -> torch.Tensor:
        """Embedding after the last candidate block (B, N, D), or every predicted step (B, N, H, D)."""
        if self._z_obs is None:
            raise RuntimeError('call prepare(z_obs, obs_actions, horizon) before rolling out candidates')
        B, N, H, D = candidates.shape
        T, M = self._T, B * N
        out_dtype = candidates.dtype
        mods = self._modulation(candidates.reshape(M, H, D).to(self.dtype))
        last_obs = self._z_obs[:, T - 1].unsqueeze(1).expand(B, N, D).reshape(M, 1, D)
        predicted: list[torch.Tensor] = []
        prev_start, prev_kv = None, None
        for k in range(H):
            start, length = token_layout(T, k, self.history)
            if start == prev_start:
                # the window grew by one token and nobody moved: reuse every key/value
                x = predicted[-1].unsqueeze(1)
                out, kv = self._blocks(x, self._slice(mods, k, k + 1), length - 1, prev_kv, want_output=True)
            else:
                n_prefix = max(0, T - 1 - start)
                first = start + n_prefix  # first candidate-dependent token
                tokens = ([last_obs] if first == T - 1 else []) + [
                    p.unsqueeze(1) for p in predicted[max(0, first - T) :]
                ]
                x = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
                prefix = None
                if n_prefix:
                    prefix = [
                        (self._broadcast(pk, N), self._broadcast(pv, N))
                        for pk, pv in self._prefixes[(start, n_prefix)]
                    ]
                out, kv = self._blocks(
                    x, self._slice(mods, first - T + 1, k + 1), n_prefix, prefix, want_output=True
                )
            predicted.append(out)
            prev_start, prev_kv = start, kv
        if return_all:
            return torch.stack(predicted, dim=1).reshape(B, N, H, D).to(out_dtype)
        return predicted[-1].reshape(B, N, D).to(out_dtype)

    # -- internals -----------------------------------------------------------------------------
    def _modulation(self, cond: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per layer: shift1, scale1 + 1, gate1, shift2, scale2 + 1, gate2, each (..., T, D)."""
        act = F.silu(cond)
        mods = []
        for block in self.blocks:
            shift1, scale1, gate1, shift2, scale2, gate2 = block.ada(act).chunk(6, dim=-1)
            mods.append([shift1, scale1 + 1, gate1, shift2, scale2 + 1, gate2])
        return mods

    @staticmethod
    def _slice(mods: list[list[torch.Tensor]], lo: int, hi: int) -> list[list[torch.Tensor]]:
        return [[m[:, lo:hi] for m in layer] for layer in mods]

    @staticmethod
    def _broadcast(x: torch.Tensor, n: int) -> torch.Tensor:
        """(B, ...) -> (B * n, ...), row b repeated n times (candidate-major order b * n + i)."""
        return x.unsqueeze(1).expand(x.shape[0], n, *x.shape[1:]).reshape(x.shape[0] * n, *x.shape[1:])

    def _blocks(
        self,
        x: torch.Tensor,
        mods: list[list[torch.Tensor]],
        start_pos: int,
        prefix: list[KV] | None,
        want_output: bool,
    ) -> tuple[torch.Tensor | None, list[KV]]:
        """Run tokens ``x`` (M, t, D) at positions ``start_pos ..`` after ``prefix``.

        Returns the final embedding of the last token (M, D) (None unless ``want_output``) and
        the per-layer keys/values of prefix + new tokens.
        """
        M, t, _ = x.shape
        h_dim, hd = self.heads, self.head_dim
        h = x + self.predictor.pos_embed[:, start_pos : start_pos + t]
        n_prev = 0 if prefix is None else prefix[0][0].shape[2]
        mask = None
        if t > 1:
            mask = torch.ones(t, n_prev + t, dtype=torch.bool, device=x.device).tril(n_prev)
        kvs: list[KV] = []
        last = len(self.blocks) - 1
        for i, (block, (shift1, scale1, gate1, shift2, scale2, gate2)) in enumerate(
            zip(self.blocks, mods, strict=True)
        ):
            hn = torch.addcmul(shift1, block.norm1(h), scale1)
            w, b = block.attn.qkv.weight, block.attn.qkv.bias
            if i < last:
                qkv = F.linear(hn, w, b).view(M, t, 3, h_dim, hd).permute(2, 0, 3, 1, 4)
                q, k, v = qkv.unbind(0)
            else:
                # last layer: keys/values of every token, query of the last token only
                kv = (
                    F.linear(hn, w[self.inner :], b[self.inner :])
                    .view(M, t, 2, h_dim, hd)
                    .permute(2, 0, 3, 1, 4)
                )
                k, v = kv.unbind(0)
                q = None
                if want_output:
                    q = (
                        F.linear(hn[:, -1:], w[: self.inner], b[: self.inner])
                        .view(M, 1, h_dim, hd)
                        .transpose(1, 2)
                    )
            if prefix is not None:
                k = torch.cat([prefix[i][0], k], dim=2)
                v = torch.cat([prefix[i][1], v], dim=2)
            kvs.append((k, v))
            if i < last:
                attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                attn = block.attn.proj(attn.transpose(1, 2).reshape(M, t, self.inner))
                h = h + gate1 * attn
                h = h + gate2 * block.mlp(torch.addcmul(shift2, block.norm2(h), scale2))
            elif want_output:
                attn = F.scaled_dot_product_attention(q, k, v)
                attn = block.attn.proj(attn.transpose(1, 2).reshape(M, 1, self.inner))
                h_last = h[:, -1:] + gate1[:, -1:] * attn
                h_last = h_last + gate2[:, -1:] * block.mlp(
                    torch.addcmul(shift2[:, -1:], block.norm2(h_last), scale2[:, -1:])
                )
        if not want_output:
            return None, kvs
        out = self.predictor.projector(self.predictor.norm(h_last[:, 0]))
        return out, kvs
