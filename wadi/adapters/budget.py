"""Equal trainable budgets across adapter kinds: for a target parameter count, each kind's closest rank.

Every kind's count is linear in the rank over a fixed set of layers (`Adapter.layer_count`): LoRaD
r (out + in/2), LoRA r (in + out), DoRA r (in + out) + out, full out x in + bias (no rank). So the closest
rank is one of the two integers around the exact solution. `layer_shapes` reads the targeted layers of a
model (build full-size architectures on the meta device: `wadi.backbones.loading.build_denoiser(meta=True)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from wadi.adapters.base import Adapter
from wadi.adapters.targets import AdapterTargets, select_targets

Shape = tuple[int, int, bool]  # (in_features, out_features, has bias)


@dataclass(frozen=True)
class Budget:
    """A kind's rank for a budget and the count it reaches (`rank` None: the kind has no rank)."""

    kind: str
    rank: int | None
    count: int
    target: int

    @property
    def gap(self) -> float:
        """(count - target) / target."""
        return (self.count - self.target) / self.target


def layer_shapes(model: nn.Module, targets: AdapterTargets, even_only: bool = False) -> list[Shape]:
    """(in, out, bias) of every nn.Linear `targets` selects in `model` (`even_only`: as LoRaD selects)."""
    out = []
    for name in select_targets(model, targets, even_only=even_only):
        layer = model.get_submodule(name)
        out.append((layer.in_features, layer.out_features, layer.bias is not None))
    return out


def count(adapter: Adapter, shapes: Sequence[Shape], rank: int) -> int:
    """Trainable parameters of `adapter` at `rank` on layers `shapes`."""
    return sum(adapter.layer_count(i, o, rank, bias) for i, o, bias in shapes)


def closest_rank(count_at: Callable[[int], int], target: int, max_rank: int | None = None) -> tuple[int, int]:
    """(rank, count) with count_at(rank) closest to `target` over ranks 1..max_rank, for a count affine in
    the rank (ties: the smaller rank)."""
    if target < 1:
        raise ValueError(f"the target parameter count must be >= 1, got {target}")
    c0, c1 = count_at(0), count_at(1)
    slope = c1 - c0
    if slope <= 0:
        raise ValueError("the parameter count does not grow with the rank")
    exact = (target - c0) / slope
    candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
    if max_rank is not None:
        candidates = {min(r, max_rank) for r in candidates}
    best = min(candidates, key=lambda r: (abs(count_at(r) - target), r))
    return best, count_at(best)


def equal_budget(adapter: Adapter, shapes: Sequence[Shape], target: int) -> Budget:
    """`adapter`'s rank whose count on `shapes` comes closest to `target` (full: its one count)."""
    if adapter.name == "full":
        return Budget(adapter.name, None, count(adapter, shapes, 1), target)
    rank, reached = closest_rank(lambda r: count(adapter, shapes, r), target)
    return Budget(adapter.name, rank, reached, target)
