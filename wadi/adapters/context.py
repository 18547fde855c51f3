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
    """`torch.utils.checkpoint` that recomputes under the adapter active when the forward ran.

    Signature matches diffusers' `enable_gradient_checkpointing(gradient_checkpointing_func=...)`.
    """
    role = active_adapter()

    def run_with_role(*inner_args: Any, **inner_kwargs: Any) -> Any:
        with use_adapter(role):
            return function(*inner_args, **inner_kwargs)

    return torch.utils.checkpoint.checkpoint(run_with_role, *args, use_reentrant=False, **kwargs)
