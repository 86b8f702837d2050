"""The training loop behind ``lewm train``: data, model, optimizer, logging, checkpoints, DDP."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from lewm_ros.checkpoint import CheckpointError, build_metadata, read_metadata, save_checkpoint
from lewm_ros.device import resolve_device, usable_cores
from lewm_ros.model import LeWM, ModelConfig
from training.data.dataset import ClipData, load_clip_data
from training.fit.batchnorm import recalibrate_batchnorm
from training.fit.objective import clip_loss, make_optimizer, training_step
from training.fit.precision import autocast, resolve_precision
from training.fit.sigreg import SIGReg, effective_rank
from training.fit.train_state import load_train_state, save_train_state
from training.interrupts import GracefulStop, Interrupted
from training.reports import save_figure

VAL_SIGREG_SEED = 12345  # fixed directions, so validation SIGReg is comparable across epochs


@dataclass
class DistInfo:
    """Where this process sits in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Whether this process logs and writes checkpoints."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read torchrun's environment variables."""
    return DistInfo(
        int(os.environ.get('RANK', 0)),
        int(os.environ.get('LOCAL_RANK', 0)),
        int(os.environ.get('WORLD_SIZE', 1)),
    )


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled full batches of this rank's share of the clips; resumable in the middle of an epoch.

    The permutation is a function of (seed, epoch), so every rank agrees on it and a resumed run
    sees the same batches as an uninterrupted one.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.batch_size, self.seed, self.rank, self.world = size, batch_size, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch and the first batch to yield."""
        self.epoch, self.start = epoch, start_batch

    def __len__(self) -> int:
        return max(0, (self.size // self.world) // self.batch_size - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        share = order[self.rank :: self.world][: self.size // self.world]
        for b in range(self.start, len(share) // self.batch_size):
            yield share[b * self.batch_size : (b + 1) * self.batch_size].tolist()


def lr_factor(step: int, warmup: int, total: int, min_ratio: float = 0.0) -> float:
    """Linear warm-up from ~0 to 1 over ``warmup`` steps, then cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def dataset_fingerprint(path: Path) -> dict[str, Any]:
    """SHA-256 of the whole file up to 1 GiB, else of its size + first and last 64 MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    block = 64 << 20
    with open(path, 'rb') as f:
        if size <= 1 << 30:
            for chunk in iter(lambda: f.read(4 << 20), b''):
                digest.update(chunk)
            method = 'sha256'
        else:
            digest.update(str(size).encode())
            digest.update(f.read(block))
            f.seek(size - block)
            digest.update(f.read(block))
            method = 'sha256(size, first 64 MiB, last 64 MiB)'
    return {'hash': digest.hexdigest(), 'hash_method': method, 'bytes': size}


def git_commit() -> str | None:
    """Commit of the source checkout this code runs from, if it is one."""
    try:
        out = subprocess.run(
            ['git', 'rev-parse', 'HEAD'],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class TrainingInterrupted(Interrupted):
    """Ctrl-C (or SIGTERM) stopped a run after ``step`` steps, saved as the resumable ``checkpoint``."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(signum)
        self.step = step
        self.checkpoint = checkpoint


class Trainer:
    """One training run. ``run()`` trains and returns the final checkpoint directory.

    In a single process, Ctrl-C or SIGTERM stops the run after the current step: it is saved to
    ``out_dir/last`` with its resume state and :class:`TrainingInterrupted` is raised. (Under
    ``torchrun`` the signals keep their usual effect: the ranks could not agree on a step.)

    ``config`` is a complete training config (:func:`training.fit.train_config.complete`);
    ``resume`` a checkpoint directory written by an earlier run of the same config.
    """

    def __init__(self, config: dict[str, Any], resume: Path | None = None) -> None:
        self.config = config
        self.resume = resume
        self.dist = dist_info()
        train = config['train']
        name = config.get('name') or 'run'
        self.out_dir = Path(train['out_dir'] or Path('runs') / name)

    # -- set-up -----------------------------------------------------------------------------
    def _setup_device(self) -> None:
        train = self.config['train']
        if self.dist.world > 1:
            import torch.distributed as dist

            base = resolve_device(train['device'])
            if base.type == 'cuda':
                self.device = torch.device('cuda', self.dist.local_rank)
                torch.cuda.set_device(self.device)
                dist.init_process_group('nccl')
            else:
                self.device = base
                dist.init_process_group('gloo')
        else:
            self.device = resolve_device(train['device'])
        if self.device.type == 'cpu':
            local_world = int(os.environ.get('LOCAL_WORLD_SIZE', self.dist.world))
            torch.set_num_threads(int(train['threads'] or max(1, usable_cores() // local_world)))
        self.precision = resolve_precision(train['precision'], self.device)

    def _setup_data(self) -> None:
        data = self.config['data']
        if not data['path']:
            raise ValueError('no dataset: set data.path in the config or pass --data FILE.h5')
        model_section = self.config['model']
        image_size = int(model_section.get('image_size', ModelConfig.image_size))
        self.data: ClipData = load_clip_data(
            data['path'],
            history=int(data['history']),
            frameskip=data['frameskip'],
            image_size=image_size,
            val_fraction=float(data['val_fraction']),
            seed=int(self.config['train']['seed']),
            cache_in_memory=data['cache_in_memory'],
            max_cache_gb=float(data['max_cache_gb']),
        )
        batch = int(data['batch_size'])
        if batch % self.dist.world:
            raise ValueError(
                f'data.batch_size {batch} must be divisible by the number of processes {self.dist.world}'
            )
        self.rank_batch = batch // self.dist.world
        self.steps_per_epoch = len(self.data.train) // batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f'the training split has {len(self.data.train)} clips, fewer than one batch of {batch}; '
                'lower data.batch_size or record more episodes'
            )

    def _model_config(self) -> ModelConfig:
        values = dict(self.config['model'])
        values.update(
            history=self.data.history, frameskip=self.data.frameskip, action_dim=self.data.action_dim
        )
        return ModelConfig.from_dict(values)

    def _setup_model(self) -> None:
        cfg = self._model_config()
        torch.manual_seed(int(self.config['train']['seed']))
        self.model = LeWM(cfg, self.data.stats.mean, self.data.stats.std)
        if self.resume is not None:
            self._load_resume_weights(cfg)
        self.model.to(self.device).train()
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            if self.device.type == 'cuda':
                self.net = nn.SyncBatchNorm.convert_sync_batchnorm(self.net)
            device_ids = [self.device.index] if self.device.type == 'cuda' else None
            self.net = nn.parallel.DistributedDataParallel(self.net, device_ids=device_ids)
        if self.config['train']['compile']:
            self.net = torch.compile(self.net)
        loss = self.config['loss']
        self.sigreg = SIGReg(
            int(loss['num_projections']),
            int(loss['knots']),
            float(loss['t_max']),
            seed=int(self.config['train']['seed']),
        )
        # validation runs on rank 0 alone: its SIGReg must not wait for the other ranks
        self.val_sigreg = SIGReg(
            int(loss['num_projections']),
            int(loss['knots']),
            float(loss['t_max']),
            seed=VAL_SIGREG_SEED,
            sync=False,
        )
        optim = self.config['optim']
        self.optimizer = make_optimizer(
            self.model, float(optim['lr']), float(optim['weight_decay']), optim['betas']
        )
        self.base_lrs = [g['lr'] for g in self.optimizer.param_groups]

    def _load_resume_weights(self, cfg: ModelConfig) -> None:
        from lewm_ros import safetensors_io
        from lewm_ros.checkpoint import WEIGHTS_FILE

        meta = read_metadata(self.resume)
        if meta['model_config'] != cfg.to_dict():
            diff = {
                k: (v, meta['model_config'].get(k))
                for k, v in cfg.to_dict().items()
                if meta['model_config'].get(k) != v
            }
            raise CheckpointError(
                f'cannot resume from {self.resume}: its model differs from this config '
                f'({diff} as (config, checkpoint))'
            )
        state = safetensors_io.load_file(Path(self.resume) / WEIGHTS_FILE)
        self.model.load_state_dict(state)

    # -- pieces of the loop -------------------------------------------------------------------
    def _loader(self, dataset, sampler: EpochBatches) -> torch.utils.data.DataLoader:
        workers = int(self.config['data']['num_workers'])
        kwargs: dict[str, Any] = {'num_workers': workers, 'pin_memory': self.device.type == 'cuda'}
        if workers > 0:
            kwargs['persistent_workers'] = True
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, **kwargs)

    def _val_loader(self, batch_size: int, seed: int) -> torch.utils.data.DataLoader | None:
        """The same shuffled validation batches at every validation.

        Shuffled because neighbouring clips of one episode are near-duplicates: a batch of them is
        a tight cloud that SIGReg scores as far from Gaussian (10x the training value on slow
        random-policy data), and the first batches would cover only the first few episodes.
        """
        if not self.data.val:
            return None
        size = len(self.data.val)
        sampler = EpochBatches(size, min(256, batch_size, size), seed + 2)  # fixed: epoch 0 every time
        return self._loader(self.data.val, sampler)

    def recalibrate(self, step: int) -> None:
        """Fresh BatchNorm statistics for the weights of ``step`` (once per step; rank 0 only)."""
        if self._recalibrated_at == step:
            return
        count = int(self.config['train']['bn_batches'])
        sampler = EpochBatches(len(self.data.train), self.rank_batch, int(self.config['train']['seed']) + 1)
        loader = torch.utils.data.DataLoader(self.data.train, batch_sampler=sampler)
        batches = (b for i, b in zip(range(count), loader, strict=False))
        if count > 0:
            recalibrate_batchnorm(self.model, batches, self.device)
        self._recalibrated_at = step

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss, SIGReg (fixed directions) and effective rank of the embeddings."""
        if self.data.val is None:
            return {}
        self.model.eval()
        lam = float(self.config['loss']['sigreg_lambda'])
        sums = {'pred': 0.0, 'sigreg': 0.0, 'copy': 0.0}
        batches, embeddings = 0, []
        max_batches = int(self.config['train']['val_batches'])
        for i, batch in enumerate(self.val_loader):
            if i >= max_batches:
                break
            pixels, actions = batch['pixels'].to(self.device), batch['actions'].to(self.device)
            if len(pixels) < 2:
                continue
            with autocast(self.device, self.precision):
                terms = clip_loss(self.model, self.val_sigreg, pixels, actions, lam, step=0)
            sums['pred'] += terms.pred.item()
            sums['sigreg'] += terms.sigreg.item()
            z = terms.z.float()
            sums['copy'] += torch.nn.functional.mse_loss(z[:, :-1], z[:, 1:]).item()
            embeddings.append(terms.z.float().reshape(-1, terms.z.shape[-1]).cpu())
            batches += 1
        self.model.train()
        if batches == 0:
            return {}
        z = torch.cat(embeddings)[:8192]
        pred, sig = sums['pred'] / batches, sums['sigreg'] / batches
        return {
            'val/loss': pred + lam * sig,
            'val/pred': pred,
            'val/sigreg': sig,
            # predicting "nothing changes" (z_{t+1} = z_t): a useful predictor beats this clearly
            'val/pred_copy_baseline': sums['copy'] / batches,
            'val/effective_rank': effective_rank(z),
            'val/embedding_std': float(z.std(dim=0).mean()),
        }

    def _provenance(self, step: int, epoch: float, elapsed: float) -> dict[str, Any]:
        path = Path(self.config['data']['path']).resolve()
        return {
            'git_commit': self.git_commit,
            'dataset': {
                'path': str(path),
                **self.dataset_hash,
                'env_id': self.data.attrs.get('env_id'),
                'episodes_train': len(self.data.train_episodes),
                'episodes_val': len(self.data.val_episodes),
                'clips_train': len(self.data.train),
                'drops': self.data.report.to_dict(),
            },
            'steps': step,
            'epochs': round(epoch, 4),
            'train_seconds': round(elapsed, 1),
            'device': str(self.device),
            'world_size': self.dist.world,
            'precision': self.precision,
            'torch_version': torch.__version__,
            'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        }

    def save(self, name: str, step: int, counters: dict[str, Any] | None, elapsed: float) -> Path:
        """Write checkpoint ``out_dir/name`` (with resume state when ``counters`` is given)."""
        self.recalibrate(step)
        epoch = step / self.steps_per_epoch
        meta = build_metadata(
            self.model,
            action_low=self.data.stats.low,
            action_high=self.data.stats.high,
            env_id=self.data.attrs.get('env_id'),
            provenance=self._provenance(step, epoch, elapsed),
            train_config=self.config,
        )

        def extra(staging: Path) -> None:
            if counters is not None:
                save_train_state(staging, self.optimizer, counters)

        return save_checkpoint(self.out_dir / name, self.model, meta, extra=extra)

    def _log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        with open(self.out_dir / 'metrics.jsonl', 'a', encoding='utf-8') as f:
            f.write(json.dumps({'step': step, **values}) + '\n')

    def _plot_health(self) -> None:
        """Effective rank and SIGReg on validation over training, as ``health.png``."""
        if not self.val_history:
            return
        import matplotlib

        matplotlib.use('Agg')
        import matplotlib.pyplot as plt

        steps = [h['step'] for h in self.val_history]
        fig, (rank_ax, sigreg_ax, pred_ax) = plt.subplots(1, 3, figsize=(12, 3.2))
        rank_ax.plot(steps, [h['val/effective_rank'] for h in self.val_history], marker='o')
        rank_ax.set_title(f'effective rank (of {self.model.config.embed_dim} dims)')
        sigreg_ax.plot(steps, [h['val/sigreg'] for h in self.val_history], marker='o')
        sigreg_ax.set_title('SIGReg (validation; ~1 = Gaussian)')
        pred_ax.plot(steps, [h['val/pred'] for h in self.val_history], marker='o', label='predictor')
        pred_ax.plot(
            steps, [h['val/pred_copy_baseline'] for h in self.val_history], ls='--', label='copy last frame'
        )
        pred_ax.set_title('next-embedding MSE (validation)')
        pred_ax.legend()
        for ax in (rank_ax, sigreg_ax, pred_ax):
            ax.set_xlabel('step')
            ax.grid(alpha=0.3)
        save_figure(fig, self.out_dir / 'health.png')

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> Path:
        """Train; returns the final checkpoint directory (``out_dir/final``)."""
        threads = torch.get_num_threads()
        self._setup_device()
        self._stop = GracefulStop()
        try:
            if self.dist.world > 1:
                return self._run()
            with self._stop:
                return self._run()
        finally:
            torch.set_num_threads(threads)  # process-wide setting: leave it as found
            if self.dist.world > 1:
                import gc

                import torch.distributed as dist

                # the DDP reducer holds the process group: free it first, or gloo's threads die
                # at interpreter exit and abort an otherwise finished run
                self.net = self.model
                gc.collect()
                if dist.is_initialized():
                    dist.destroy_process_group()

    def _run(self) -> Path:
        from tqdm import tqdm

        self._setup_data()
        self._setup_model()
        cfg, train, optim = self.config, self.config['train'], self.config['optim']
        main = self.dist.main
        total = int(optim['max_steps']) if optim['max_steps'] else int(optim['epochs']) * self.steps_per_epoch
        sampler = EpochBatches(
            len(self.data.train), self.rank_batch, int(train['seed']), self.dist.rank, self.dist.world
        )
        loader = self._loader(self.data.train, sampler)
        self.val_loader = self._val_loader(int(cfg['data']['batch_size']), int(train['seed']))
        step, epoch, batch_in_epoch, elapsed_before = 0, 0, 0, 0.0
        self.val_history: list[dict[str, float]] = []
        self._recalibrated_at = -1
        if self.resume is not None:
            counters = load_train_state(Path(self.resume), self.optimizer)
            step, epoch, batch_in_epoch = counters['step'], counters['epoch'], counters['batch_in_epoch']
            elapsed_before = counters.get('elapsed', 0.0)
            self.val_history = counters.get('val_history', [])
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / 'config.yaml').write_text(yaml.safe_dump(cfg, sort_keys=False), encoding='utf-8')
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / 'tb'))
            self.git_commit = git_commit()
            self.dataset_hash = dataset_fingerprint(Path(cfg['data']['path']))
            print(f'data: {self.data.report.summary()}')
            print(
                f'model: {self.model.num_parameters() / 1e6:.2f} M parameters, {self.data.image_size} px, '
                f'history {self.data.history}, frameskip {self.data.frameskip}, '
                f'action dim {self.data.action_dim}; {len(self.data.train)} train clips, '
                f'{0 if self.data.val is None else len(self.data.val)} val clips; '
                f'{self.steps_per_epoch} steps/epoch, {total} steps on {self.device} ({self.precision}, '
                f'{self.dist.world} process{"es" if self.dist.world > 1 else ""}) -> {self.out_dir}'
            )
        lam, clip = float(cfg['loss']['sigreg_lambda']), float(optim['grad_clip'] or 0.0)
        log_every, ckpt_every = int(train['log_every']), int(train['ckpt_every'] or 0)
        val_every = int(train['val_every'] or 0)
        batch = int(cfg['data']['batch_size'])
        bar = tqdm(
            total=total,
            initial=step,
            unit='step',
            dynamic_ncols=True,
            disable=not (main and train['progress']),
        )
        start_time = time.perf_counter()
        window = {'loss': 0.0, 'pred': 0.0, 'sigreg': 0.0, 'n': 0, 't': time.perf_counter()}

        def counters() -> dict[str, Any]:
            return {
                'step': step,
                'epoch': epoch,
                'batch_in_epoch': batch_in_epoch,
                'elapsed': elapsed_before + time.perf_counter() - start_time,
                'val_history': self.val_history,
            }

        def end_of_validation(values: dict[str, float]) -> None:
            if not values:
                return
            self._log(values, step)
            self.val_history.append({'step': step, **values})
            self._plot_health()
            tqdm.write(
                f'step {step} (epoch {step / self.steps_per_epoch:.2f}): val loss {values["val/loss"]:.4f} '
                f'pred {values["val/pred"]:.4f} (copy-last {values["val/pred_copy_baseline"]:.4f}) '
                f'sigreg {values["val/sigreg"]:.3f} '
                f'effective rank {values["val/effective_rank"]:.1f}/{self.model.config.embed_dim}'
            )

        self._stop.check()  # interrupted while setting up: nothing to save
        if step == 0:
            self._validate_on_main(end_of_validation, step)  # the starting point of the health curves
        while step < total:
            sampler.set_epoch(epoch, batch_in_epoch)
            for data_batch in loader:
                factor = lr_factor(step, int(optim['warmup_steps']), total, float(optim['min_lr_ratio']))
                for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
                    group['lr'] = base * factor
                pixels = data_batch['pixels'].to(self.device, non_blocking=True)
                actions = data_batch['actions'].to(self.device, non_blocking=True)
                terms, grad_norm = training_step(
                    self.net, self.sigreg, self.optimizer, pixels, actions,
                    sigreg_lambda=lam, grad_clip=clip, precision=self.precision, step=step,
                )  # fmt: skip
                step += 1
                batch_in_epoch += 1
                # sums stay on the device between log steps: no host sync per step on a GPU
                window['loss'] += terms.loss
                window['pred'] += terms.pred
                window['sigreg'] += terms.sigreg
                window['n'] += 1
                if step % log_every == 0 or step == total:
                    n = window['n']
                    means = {k: float(window[k]) / n for k in ('loss', 'pred', 'sigreg')}
                    if not math.isfinite(means['loss']):
                        raise FloatingPointError(
                            f'the loss became {means["loss"]} before step {step}; '
                            'lower optim.lr or check the data'
                        )
                    now = time.perf_counter()
                    rate = n * batch / (now - window['t'])
                    if main:
                        values = {
                            'train/loss': means['loss'],
                            'train/pred': means['pred'],
                            'train/sigreg': means['sigreg'],
                            'train/lr': self.optimizer.param_groups[0]['lr'],
                            'train/grad_norm': float(grad_norm),
                            'train/clips_per_s': rate,
                            'train/effective_rank': effective_rank(terms.z),
                        }
                        self._log(values, step)
                        bar.set_postfix(
                            loss=f'{means["loss"]:.4f}',
                            pred=f'{means["pred"]:.4f}',
                            sigreg=f'{means["sigreg"]:.3f}',
                            clips_s=f'{rate:.1f}',
                        )
                    window = {'loss': 0.0, 'pred': 0.0, 'sigreg': 0.0, 'n': 0, 't': now}
                bar.update(1)
                if val_every and step % val_every == 0 and step < total:
                    self._validate_on_main(end_of_validation, step)
                if ckpt_every and step % ckpt_every == 0 and step < total and main:
                    self.save('last', step, counters(), counters()['elapsed'])
                    if train['keep_checkpoints']:
                        self.save(f'step-{step:08d}', step, counters(), counters()['elapsed'])
                if self._stop.requested:  # Ctrl-C: keep this step, resumable, and stop
                    bar.close()
                    last = self.save('last', step, counters(), counters()['elapsed'])
                    self.writer.close()
                    raise TrainingInterrupted(self._stop.signum, step, last)
                if step >= total:
                    break
            else:
                epoch += 1
                batch_in_epoch = 0
                if not val_every and step < total:
                    self._validate_on_main(end_of_validation, step)
                continue
            break
        bar.close()
        self._validate_on_main(end_of_validation, step)
        final = self.out_dir / 'final'
        if main:
            elapsed = counters()['elapsed']
            self.save('last', step, counters(), elapsed)
            self.save('final', step, None, elapsed)
            self.writer.close()
            print(f'final checkpoint: {final}')
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.barrier()  # no rank tears its process group down while a peer still talks to it
        return final

    def _validate_on_main(self, callback, step: int) -> None:
        """Run validation on rank 0 only; other ranks wait so no collective is left half-done."""
        if self.dist.main:
            self.recalibrate(step)
            callback(self.validate())
        if self.dist.world > 1:
            import torch.distributed as dist

            dist.barrier()
