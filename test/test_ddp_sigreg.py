"""SIGReg under DDP (2 gloo processes) equals SIGReg of one process on the concatenated batch."""

import gc
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from training.fit.sigreg import SIGReg

WORLD, PER_RANK, DIM = 2, 24, 8


def make_problem() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(DIM, DIM)
    # a skewed input so the statistic and its gradient are far from zero
    x = torch.rand(3, WORLD * PER_RANK, DIM) ** 2
    return model, x


def loss_fn(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return SIGReg(num_projections=64, seed=3)(model(x), step=11)


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ['MASTER_ADDR'] = '127.0.0.1'
    os.environ['MASTER_PORT'] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=WORLD)
    try:
        model, x = make_problem()
        ddp = nn.parallel.DistributedDataParallel(model)
        local = x[:, rank * PER_RANK : (rank + 1) * PER_RANK]
        loss = loss_fn(ddp, local)
        loss.backward()
        loss_value = loss.detach().numpy()
        # the DDP reducer holds the process group; if it outlives destroy_process_group, gloo's
        # threads are torn down at interpreter exit and abort the process now and then
        del ddp, loss
        gc.collect()
        # the regulariser a rank would compute alone, to show the global one is different
        alone = SIGReg(num_projections=64, seed=3)
        with torch.no_grad():
            dist.barrier()
            dist.destroy_process_group()
            local_value = alone(model(local), step=11)
        np.savez(
            os.path.join(out_dir, f'rank{rank}.npz'),
            loss=loss_value,
            local=local_value.numpy(),
            weight_grad=model.weight.grad.numpy(),
            bias_grad=model.bias.grad.numpy(),
        )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_ddp_sigreg_matches_single_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    model, x = make_problem()
    loss = loss_fn(model, x)
    loss.backward()
    for rank in range(WORLD):
        got = np.load(tmp_path / f'rank{rank}.npz')
        np.testing.assert_allclose(got['loss'], loss.item(), rtol=1e-5)
        np.testing.assert_allclose(got['weight_grad'], model.weight.grad.numpy(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got['bias_grad'], model.bias.grad.numpy(), rtol=1e-4, atol=1e-6)
        assert abs(got['local'] - loss.item()) > 1e-3 * loss.item()  # a per-rank statistic differs
