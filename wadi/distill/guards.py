"""Non-finite guards: NaN or inf never reaches an optimizer step, a checkpoint, an export or a sample.

Pure helpers; `WaDiModule` decides per step (`nonfinite=stop|skip`), `on_save_checkpoint`, `wadi.export` and
`load_module_from_checkpoint` refuse non-finite weights with `check_finite`. Hand-written because Lightning's
own guard (`detect_anomaly`) is a debugging tool (slow, per-op) and its checkpointing has no content check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

NONFINITE_CHOICES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf (loss, gradient or weights), or non-finite weights were about to be saved."""


def nonfinite_count(x: Tensor) -> Tensor:
    """How many entries of `x` are NaN or +-inf (a 0-dim tensor: no host sync)."""
    return (~torch.isfinite(x)).sum()


def first_nonfinite(state: Mapping[str, Tensor]) -> tuple[str, int, int] | None:
    """(name, non-finite entries, total entries) of the first tensor holding NaN or inf, else None.

    The counts are gathered on the tensors' device and read back once (one host sync, not one per tensor)."""
    named = [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not named:
        return None
    counts = torch.stack([nonfinite_count(v.detach()).cpu() for _, v in named]).tolist()
    for (name, value), bad in zip(named, counts):
        if bad:
            return name, bad, value.numel()
    return None


def check_finite(state: Mapping[str, Tensor], what: str) -> None:
    """Raise NonFiniteError naming `what` and the first non-finite tensor of `state`."""
    found = first_nonfinite(state)
    if found is not None:
        name, bad, total = found
        raise NonFiniteError(
            f"{what}: refused, tensor {name!r} holds {bad} of {total} non-finite values (NaN/inf). Nothing was "
            "written; the last finite checkpoint is kept."
        )


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True if every tensor is finite: one fused norm over the lot (NaN/inf propagate) and one host sync."""
    tensors = [t.detach() for t in tensors]
    return not tensors or bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors)).sum()))
