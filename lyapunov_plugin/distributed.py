"""Data-parallel training without a framework: ``torchrun`` + ``torch.distributed``.

The Lyapunov objectives call the model's protocol methods (``encode``, ``vector_field``,
``readout``), not its ``forward``, so ``DistributedDataParallel``'s forward-time hooks never
run and would not synchronise anything. :class:`LyapunovTrainer` therefore does what DDP
does, explicitly, when a process group is initialised:

- the parameters of rank 0 are broadcast to every rank once, before training;
- after each backward pass the gradients are averaged across ranks (one ``all_reduce`` per
  parameter), so every rank takes the same optimiser step; since each rank's loss is the
  mean over its own batch, the averaged gradient is the gradient of the mean loss over the
  union of the batches (equal batch sizes), exactly what single-process training on the
  concatenated batch computes;
- whether any rank met a non-finite loss is agreed on before the step, so all ranks skip (or
  raise) together and none waits for a reduction the others never start;
- each rank draws its Monte Carlo samples from its own generator, seeded ``seed + rank`` (the
  ranks' samples differ, and a run is reproducible for a given seed and number of ranks);
- epoch metrics are averaged across ranks; checkpoints are written by rank 0 only.

Nothing here runs unless ``torch.distributed`` is initialised with more than one rank.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import Tensor, nn

__all__ = [
    "rank_and_world_size",
    "is_distributed",
    "is_main_process",
    "unwrap_data_parallel",
    "broadcast_parameters",
    "average_gradients",
    "any_rank",
    "average_metrics",
    "barrier",
    "gather_generator_states",
]


def rank_and_world_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return rank_and_world_size()[1] > 1


def is_main_process() -> bool:
    """True on rank 0 (and without a process group)."""
    return rank_and_world_size()[0] == 0


def unwrap_data_parallel(model: Any) -> Any:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (else ``model``)."""
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, parallel):
        model = model.module
    return model


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        torch.distributed.barrier()


def broadcast_parameters(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (DDP does this at construction)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(tensor.data, src=0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one rank (every rank gets the same answer)."""
    if not is_distributed():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` across ranks; a parameter without a gradient on this rank counts
    as a zero gradient, so every rank reduces the same tensors in the same order."""
    if not is_distributed():
        return
    world = rank_and_world_size()[1]
    for p in parameters:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)
        p.grad.div_(world)


def average_metrics(
    record: dict[str, Any], keys: Iterable[str], device: torch.device, weight: Optional[float] = None
) -> dict[str, Any]:
    """``record`` with the float entries named in ``keys`` averaged across ranks (weighted by
    ``weight``, e.g. the number of examples each rank saw). Every rank must pass the same
    keys; a key missing on this rank counts as NaN."""
    if not is_distributed():
        return record
    names = sorted(keys)
    w = 1.0 if weight is None else float(weight)
    values: Tensor = torch.tensor(
        [w * float(record.get(k, float("nan"))) for k in names] + [w], dtype=torch.float64, device=device
    )
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    total = float(values[-1])
    out = dict(record)
    for i, k in enumerate(names):
        out[k] = float(values[i]) / total if total > 0 else float("nan")
    return out


def gather_generator_states(generator: torch.Generator) -> Optional[list[Any]]:
    """Every rank's generator state, in rank order (``None`` on a single process), so a
    checkpoint lets each rank continue its own Monte Carlo stream."""
    _, world_size = rank_and_world_size()
    if world_size <= 1:
        return None
    states: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(states, generator.get_state())
    return states
