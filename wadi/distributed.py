"""Data parallelism for WaDi: only adapter gradients exist, and the module reduces them itself.

WaDi takes two backward passes per batch (generator, then fake score), each touching only its own
adapter. DDP's reducer expects one backward per forward over all trainable parameters; instead of
`find_unused_parameters=True` (a graph walk per backward and a reduction of the idle adapter too), the
strategy below leaves the reducer idle and the module all-reduces exactly the gradients it is about to
step, as one flat buffer (`sync_gradients`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def sync_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of `params` over all ranks (no-op on one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


class AdapterDDPStrategy(DDPStrategy):
    """DDP whose reducer never runs: `WaDiModule` syncs adapter gradients before each optimizer step."""

    def pre_backward(self, closure_loss: torch.Tensor) -> None:
        return None
