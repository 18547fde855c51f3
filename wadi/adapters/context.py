"""Which named adapter a forward pass uses, bound to the call so gradient checkpointing recomputes it.

One frozen network plays three roles (teacher, fake score, generator). The role is chosen per forward
with `use_adapter(name)`. A plain global switch is not enough under activation checkpointing: the
recomputation happens during backward, when another role may be active. `role_preserving_checkpoint`
captures the role at forward time and re-enters it for the recomputation (PERFORMANCE.md, "Gotcha").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch.utils.checkpoint

# A plain module attribute (not a ContextVar) so torch.compile can guard on its value.
_ACTIVE: dict[str, str | None] = {"name": None}
# W' of every adapted layer for the pass being run, built in a few batched launches at the pass's start
# (`wadi.adapters.lorad.rotation_scope`); keyed by id(layer). None: each layer rotates its own weight.
_PREROTATED: dict[str, dict[int, Any] | None] = {"weights": None}


def prerotated(layer: object) -> Any:
    """The pass's precomputed W' for `layer`, or None."""
    weights = _PREROTATED["weights"]
    return None if weights is None else weights.get(id(layer))


@contextmanager
def use_prerotated(weights: dict[int, Any] | None) -> Iterator[None]:
    previous = _PREROTATED["weights"]
    _PREROTATED["weights"] = weights
    try:
        yield
    finally:
        _PREROTATED["weights"] = previous


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
    """`torch.utils.checkpoint` that recomputes under the adapter (and precomputed W') of the forward.

    Signature matches diffusers' `enable_gradient_checkpointing(gradient_checkpointing_func=...)`.
    """
    role = active_adapter()
    weights = _PREROTATED["weights"]  # the pass's W' too: the recomputation must use the same tensors

    def run_with_role(*inner_args: Any, **inner_kwargs: Any) -> Any:
        with use_adapter(role), use_prerotated(weights):
            return function(*inner_args, **inner_kwargs)

    return torch.utils.checkpoint.checkpoint(run_with_role, *args, use_reentrant=False, **kwargs)
