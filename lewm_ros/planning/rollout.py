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


class NaiveRollout:
    """:func:`naive_rollout` behind the ``prepare`` / call interface of :class:`CachedRollout`."""

    def __init__(self, predictor: Predictor, dtype: torch.dtype | None = None) -> None:
        if dtype is not None and dtype != predictor.pos_embed.dtype:
            predictor = copy.deepcopy(predictor).to(dtype)
        self.predictor = predictor.eval()
        self.dtype = predictor.pos_embed.dtype
        self.history = int(predictor.history)
        self._context: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self, z_obs: torch.Tensor, obs_actions: torch.Tensor, horizon: int) -> None:
        """Remember the observed context (nothing is precomputed: that is the point)."""
        self._context = (z_obs.to(self.dtype), obs_actions.to(self.dtype))

    def __call__(self, candidates: torch.Tensor, return_all: bool = False) -> torch.Tensor:
        """Same contract as :meth:`CachedRollout.__call__`."""
        if self._context is None:
            raise RuntimeError('call prepare(z_obs, obs_actions, horizon) before rolling out candidates')
        out = naive_rollout(self.predictor, *self._context, candidates.to(self.dtype), self.history)
        return (out if return_all else out[:, :, -1]).to(candidates.dtype)


class CachedRollout:
    """Rollout that computes only what changes between candidates (see the module docstring).

    Use: ``prepare(z_obs, obs_actions, horizon)`` once per plan, then call with candidate action
    embeddings as often as the solver needs. Works on any device; ``dtype`` runs the rollout in
    another precision (e.g. ``torch.bfloat16`` on a CPU with bf16 units) on a private copy of
    the predictor, while inputs and outputs keep their dtype.

    It reads the predictor's blocks directly (``ada``, ``norm1``, ``attn.qkv``, ``attn.proj``,
    ``norm2``, ``mlp``) to skip what the plain forward would compute and discard. Every matmul
    gets a contiguous 2-D input and attention over the (at most ``history``) window positions is
    two batched matmuls, which on a CPU is several times faster than the general kernels for
    thousands of 3-token sequences.
    """

    def __init__(self, predictor: Predictor, dtype: torch.dtype | None = None) -> None:
        for name in ('pos_embed', 'blocks', 'norm', 'projector', 'history'):
            if not hasattr(predictor, name):
                raise TypeError(
                    f'CachedRollout needs a LeWM Predictor; {type(predictor).__name__} has no {name!r}'
                )
        if dtype is not None and dtype != predictor.pos_embed.dtype:
            predictor = copy.deepcopy(predictor).to(dtype)
        self.predictor = predictor.eval()
        self.dtype = predictor.pos_embed.dtype
        self.history = int(predictor.history)
        self.blocks = list(predictor.blocks)
        attn = self.blocks[0].attn
        self.heads, self.head_dim, self.inner = attn.heads, attn.head_dim, attn.inner
        self.scale = self.head_dim**-0.5
        self.norms = [(b.norm1, b.norm2) for b in self.blocks]
        self._z_obs: torch.Tensor | None = None
        self._prefixes: dict[tuple[int, int], list[KV]] = {}
        self._masks: dict[tuple, torch.Tensor] = {}

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
        self._T, self._horizon = T, horizon
        self._prefixes = {}
        obs_actions = obs_actions.to(self.dtype)
        for k in range(horizon):
            start, _ = token_layout(T, k, self.history)
            n_prefix = max(0, T - 1 - start)
            if n_prefix and (start, n_prefix) not in self._prefixes:
                x = self._z_obs[:, start : start + n_prefix].contiguous()
                mods = self._modulation(obs_actions[:, start : start + n_prefix])
                _, kv = self._blocks(x, mods, 0, None, groups=(B, 1), want_output=False)
                self._prefixes[(start, n_prefix)] = kv

    # -- per solver iteration -----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, candidates: torch.Tensor, return_all: bool = False) -> torch.Tensor:
        """Embedding after the last candidate block (B, N, D), or every predicted step (B, N, H, D)."""
        if self._z_obs is None:
            raise RuntimeError('call prepare(z_obs, obs_actions, horizon) before rolling out candidates')
        B, N, H, D = candidates.shape
        if B != self._z_obs.shape[0]:
            raise ValueError(f'candidates are for {B} environments, prepare() got {self._z_obs.shape[0]}')
        if H > self._horizon:
            raise ValueError(f'candidates have {H} blocks but prepare() was given horizon {self._horizon}')
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
                out, kv = self._blocks(x, self._slice(mods, k, k + 1), length - 1, prev_kv, (B, N), True)
            else:
                n_prefix = max(0, T - 1 - start)
                first = start + n_prefix  # first candidate-dependent token
                tokens = ([last_obs] if first == T - 1 else []) + [
                    p.unsqueeze(1) for p in predicted[max(0, first - T) :]
                ]
                x = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
                prefix = self._prefixes[(start, n_prefix)] if n_prefix else None
                out, kv = self._blocks(
                    x, self._slice(mods, first - T + 1, k + 1), n_prefix, prefix, (B, N), True
                )
            predicted.append(out)
            prev_start, prev_kv = start, kv
        if return_all:
            return torch.stack(predicted, dim=1).reshape(B, N, H, D).to(out_dtype)
        return predicted[-1].reshape(B, N, D).to(out_dtype)

    # -- internals -----------------------------------------------------------------------------
    def _modulation(self, cond: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per layer: shift1, scale1 + 1, gate1, shift2, scale2 + 1, gate2, each (rows, T, D)."""
        rows, T, D = cond.shape
        act = F.silu(cond).reshape(rows * T, D)
        mods = []
        for block in self.blocks:
            parts = F.linear(act, block.ada.weight, block.ada.bias).view(rows, T, 6, D)
            shift1, scale1, gate1, shift2, scale2, gate2 = parts.unbind(2)
            mods.append([shift1, scale1 + 1, gate1, shift2, scale2 + 1, gate2])
        return mods

    @staticmethod
    def _slice(mods: list[list[torch.Tensor]], lo: int, hi: int) -> list[list[torch.Tensor]]:
        return [[m[:, lo:hi] for m in layer] for layer in mods]

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
        """q (R, tq, hd), k/v (R, S, hd) -> (R, tq, hd); query i sits at key position S - tq + i."""
        tq, S = q.shape[1], k.shape[1]
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(self.scale)
        if causal and tq > 1:
            key = (tq, S, q.device)
            if key not in self._masks:
                self._masks[key] = torch.ones(tq, S, dtype=torch.bool, device=q.device).triu_(S - tq + 1)
            scores.masked_fill_(self._masks[key], float('-inf'))
        return torch.bmm(torch.softmax(scores, dim=-1), v)

    def _blocks(
        self,
        x: torch.Tensor,
        mods: list[list[torch.Tensor]],
        start_pos: int,
        prefix: list[KV] | None,
        groups: tuple[int, int],
        want_output: bool,
    ) -> tuple[torch.Tensor | None, list[KV]]:
        """Run tokens ``x`` (M, t, D) at window positions ``start_pos ..`` after ``prefix``.

        ``groups = (B, n)`` with M = B * n: row ``b * n + i`` belongs to environment b, whose
        prefix keys/values are shared by its n rows. Keys/values are kept as (B, n or 1, heads,
        positions, head_dim). Returns the final embedding of the last token (M, D) (None unless
        ``want_output``) and the per-layer keys/values of prefix + new tokens.
        """
        M, t, D = x.shape
        B, n = groups
        nh, hd = self.heads, self.head_dim
        h = x + self.predictor.pos_embed[0, start_pos : start_pos + t]
        kvs: list[KV] = []
        last = len(self.blocks) - 1
        h_last = None
        for i, (block, mod) in enumerate(zip(self.blocks, mods, strict=True)):
            shift1, scale1, gate1, shift2, scale2, gate2 = mod
            norm1, norm2 = self.norms[i]
            hn = torch.addcmul(
                shift1, F.layer_norm(h, (D,), norm1.weight, norm1.bias, norm1.eps), scale1
            ).view(M * t, D)
            w, b = block.attn.qkv.weight, block.attn.qkv.bias
            final = i == last
            if not final:
                qkv = F.linear(hn, w, b).view(B, n, t, 3, nh, hd)
            else:  # keys/values of every token; the query of the last token only
                qkv = F.linear(hn, w[self.inner :], b[self.inner :]).view(B, n, t, 2, nh, hd)
            k = qkv[:, :, :, -2].permute(0, 1, 3, 2, 4)  # (B, n, heads, t, hd)
            v = qkv[:, :, :, -1].permute(0, 1, 3, 2, 4)
            if prefix is not None:
                pk, pv = prefix[i]
                k = torch.cat([pk.expand(B, n, *pk.shape[2:]), k], dim=3)
                v = torch.cat([pv.expand(B, n, *pv.shape[2:]), v], dim=3)
            else:
                k, v = k.contiguous(), v.contiguous()
            kvs.append((k, v))
            S = k.shape[3]
            k_rows, v_rows = k.reshape(M * nh, S, hd), v.reshape(M * nh, S, hd)
            if not final:
                q = qkv[:, :, :, 0].permute(0, 1, 3, 2, 4).reshape(M * nh, t, hd)
                attn = self._attention(q, k_rows, v_rows, causal=True)
                attn = attn.view(M, nh, t, hd).transpose(1, 2).reshape(M * t, self.inner)
                h = torch.addcmul(
                    h, gate1, F.linear(attn, block.attn.proj.weight, block.attn.proj.bias).view(M, t, D)
                )
                hn = torch.addcmul(
                    shift2, F.layer_norm(h, (D,), norm2.weight, norm2.bias, norm2.eps), scale2
                ).view(M * t, D)
                h = torch.addcmul(h, gate2, block.mlp(hn).view(M, t, D))
            elif want_output:
                hl = hn.view(M, t, D)[:, -1]
                q = F.linear(hl, w[: self.inner], b[: self.inner]).view(M * nh, 1, hd)
                attn = self._attention(q, k_rows, v_rows, causal=False).view(M, self.inner)
                h_last = torch.addcmul(
                    h[:, -1], gate1[:, -1], F.linear(attn, block.attn.proj.weight, block.attn.proj.bias)
                )
                hn = torch.addcmul(
                    shift2[:, -1],
                    F.layer_norm(h_last, (D,), norm2.weight, norm2.bias, norm2.eps),
                    scale2[:, -1],
                )
                h_last = torch.addcmul(h_last, gate2[:, -1], block.mlp(hn))
        if not want_output:
            return None, kvs
        return self.predictor.projector(self.predictor.norm(h_last)), kvs
