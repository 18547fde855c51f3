"""What one forward pass binds: the adapter role, and how its layers get W'.

One frozen network plays three roles (teacher, fake score, generator). The role is chosen per forward
with `use_adapter(name)`; the pass's rotation state (every layer's W' precomputed at the pass's start by
`wadi.adapters.prerotate`, and whether per-layer rotations use the fused kernels) with `use_rotation`.

Why module-level state and not an argument or a ContextVar: the layers that read it sit deep inside
diffusers' forward, which takes no extra arguments; torch.compile guards on a plain module attribute's
value (one graph per role), which it does not do for a ContextVar. A plain global switch is still not
enough under activation checkpointing: the recomputation happens during backward, when another role may
be active, so `role_preserving_checkpoint` captures the role and rotation state at forward time and
re-enters them for the recomputation (PERFORMANCE.md, "Gotcha"). The speed options themselves live in
`wadi.speed.SpeedOptions`, given to the Denoiser, which binds them here for each pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.utils.checkpoint

# A plain module attribute (not a ContextVar) so torch.compile can guard on its value.
_ACTIVE: dict[str, str | None] = {"name": None}
# weights: W' of every adapted layer for the pass being run, keyed by id(layer); None: each layer rotates
# its own weight. fused: whether a layer rotating its own weight uses the fused kernels.
_ROTATION: dict[str, Any] = {"weights": None, "fused": True}


def prerotated(layer: object) -> Any:
    """The pass's precomputed W' for `layer`, or None."""
    weights = _ROTATION["weights"]
    return None if weights is None else weights.get(id(layer))


def fused_rotation() -> bool:
    """Whether this pass's per-layer rotations use the fused kernels (`SpeedOptions.fused_rotation`)."""
    return _ROTATION["fused"]


@contextmanager
def use_rotation(weights: dict[int, Any] | None, fused: bool = True) -> Iterator[None]:
    """Run the enclosed pass with precomputed W' `weights` (or none) and per-layer rotations `fused` or not."""
    previous = dict(_ROTATION)
    _ROTATION.update(weights=weights, fused=fused)
    try:
        yield
    finally:
        _ROTATION.update(previous)


def active_adapter() -> str | None:
    """The adapter name layers should apply now; None means the frozen base (the teacher)."""
    return _ACTIVE["name"]


@contextmanager
def use_adapter(name: str | None) -> Iterator[None]:
    """Run the enclosed forward passes with adapter `name` (None: the teacher, no adapter)."""
    previous = _ACTIVE["name"]
    _ACTIVE["name"] = name
    try:
        yield
    finally:
        _ACTIVE["name"] = previous


def role_preserving_checkpoint(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`torch.utils.checkpoint` that recomputes under the adapter (and rotation state) of the forward.

    Signature matches diffusers' `enable_gradient_checkpointing(gradient_checkpointing_func=...)`.
    """
    role = active_adapter()
    # The pass's W' too: the recomputation must use the same tensors.
    weights, fused = _ROTATION["weights"], _ROTATION["fused"]

    def run_with_role(*inner_args: Any, **inner_kwargs: Any) -> Any:
        with use_adapter(role), use_rotation(weights, fused):
            return function(*inner_args, **inner_kwargs)

    return torch.utils.checkpoint.checkpoint(run_with_role, *args, use_reentrant=False, **kwargs)
