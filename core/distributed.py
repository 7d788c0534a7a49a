"""torch.distributed helpers the training loop uses when a process group exists (Ray Train makes
one; in-process runs have none and every helper is then the identity)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def failed_ranks(failed: bool) -> list[int]:
    """Every rank says whether its step failed; every rank learns which did. One all-reduce of
    world_size floats on the CPU (gloo): a failed rank that simply raised would leave the others
    waiting in the next gradient all-reduce until the process group's timeout."""
    rank, size = world()
    if size == 1:
        return [rank] if failed else []
    flags = torch.zeros(size, dtype=torch.float32)
    flags[rank] = float(failed)
    dist.all_reduce(flags, op=dist.ReduceOp.SUM)
    return [r for r in range(size) if flags[r] > 0]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over workers in one flat all-reduce (the model is small: one message
    beats one per tensor), keeping "no gradient" as no gradient, as one process would.

    Each rank sends every parameter (zeros where it has no gradient) and a flag saying whether it
    had one. A parameter no rank computed a gradient for stays at None, so the optimiser skips it
    exactly as in one process. One used on some ranks only gets the sum over those ranks divided
    by the world size: with each rank's loss scaled by its share of the global batch, that is the
    gradient one process would compute on the whole global batch (the other ranks' examples
    contribute zero to it, as they would in one process where the parameter was unused on them).
    A rank that has no gradient for it still receives the average, so the weights stay identical
    on every rank."""
    _, size = world()
    if size == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    had = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([g.reshape(-1) for g in grads] + [had])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat[:-len(params)] /= size
    present = flat[-len(params):].cpu() > 0
    offset = 0
    for p, any_rank in zip(params, present):
        n = p.numel()
        if any_rank:
            averaged = flat[offset:offset + n].view_as(p)
            p.grad = averaged.clone() if p.grad is None else p.grad.copy_(averaged)
        offset += n


def gather_objects(obj) -> list:
    rank, size = world()
    if size == 1:
        return [obj]
    out = [None] * size
    dist.all_gather_object(out, obj)
    return out
