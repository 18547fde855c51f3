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


# ----------------------------------------------------------------- FSDP: shard the frozen base
_BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks")


def shard_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The units FSDP gathers one at a time: every U-Net down/mid/up block, or every DiT block."""
    blocks: list[torch.nn.Module] = []
    for name in _BLOCK_LISTS:
        blocks.extend(getattr(model, name, None) or [])
    mid = getattr(model, "mid_block", None)
    if mid is not None:
        blocks.append(mid)
    return blocks


def shard_frozen_base(model: torch.nn.Module, mesh) -> int:
    """FSDP2 (`fully_shard`) over the frozen weights of `model`, block by block, then the rest at the root.

    The trainable adapters are left out (`ignored_params`): they are small, stay whole on every rank and
    are averaged by `sync_gradients` like under DDP, so FSDP only gathers frozen bf16 weights for the
    forward (and again for backward) and never reduce-scatters anything. Returns the number of units.
    """
    from torch.distributed.fsdp import fully_shard

    adapters = {p for p in model.parameters() if p.requires_grad}
    blocks = shard_blocks(model)
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=adapters)
    fully_shard(model, mesh=mesh, ignored_params=adapters)
    return len(blocks) + 1


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether any parameter of `module` is a DTensor shard (FSDP2)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def check_fsdp_compatible(module) -> None:
    """Refuse what `trainer=fsdp` does not support yet, naming the key to change."""
    full = [role for role, a in getattr(module, "adapters", {}).items() if a.name == "full"]
    if full:
        raise ValueError(
            f"{full[0]}.adapter=full is refused with trainer=fsdp: only the frozen base is sharded, the trainable "
            "copy would stay whole on every rank; use trainer=ddp or a low-rank adapter kind"
        )
    if module.denoiser.speed.compile:
        raise ValueError(
            "compile=true / compile=all is not supported with trainer=fsdp (a compiled graph over "
            "FSDP-sharded blocks is untested here); use trainer=ddp with compile, or compile=false"
        )


class AdapterFSDPStrategy(AdapterDDPStrategy):
    """For backbones whose frozen base does not fit one GPU: FSDP2 shards the base across ranks.

    Everything else is as under `AdapterDDPStrategy`: one process per GPU, adapters replicated and
    all-reduced by the module. The base is sharded before the model moves to the GPU, so a rank never
    holds more than its shard plus the block being run. Checkpoints hold adapters only (plain tensors),
    so they are interchangeable with DDP and single-GPU ones; `wadi.train` exports from a whole base
    rebuilt from disk on rank 0.
    """

    def model_to_device(self) -> None:
        module = self.lightning_module
        if module is not None and not is_sharded(module):
            check_fsdp_compatible(module)
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(self.root_device.type, (self.world_size,))
            shard_frozen_base(module.denoiser.model, mesh)
            # Whole weights exist only inside each block's forward: no W' built up front for the pass.
            module.denoiser.update_speed(group_rotations=False)
        super().model_to_device()

    def configure_ddp(self) -> None:
        """No DDP wrapper: the base is sharded (model_to_device) and adapter gradients are synced by the module."""
        return None
