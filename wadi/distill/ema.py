"""Exponential moving average of the generator adapter (optional; decay 0.999 in the spec)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class EMA(nn.Module):
    """Shadow copies of a fixed list of parameters, kept as buffers so checkpoints carry them."""

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self._params = list(params)
        for i, p in enumerate(self._params):
            self.register_buffer(f"shadow_{i}", p.detach().clone().float())

    def shadows(self) -> list[Tensor]:
        return [getattr(self, f"shadow_{i}") for i in range(len(self._params))]

    @torch.no_grad()
    def update(self) -> None:
        """shadow <- decay * shadow + (1 - decay) * param."""
        shadows = self.shadows()
        # Under no_grad the parameters go in as they are: no per-tensor detach (one dispatch each).
        params = [p if p.dtype == torch.float32 else p.float() for p in self._params]
        torch._foreach_lerp_(shadows, params, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Overwrite the live parameters with the EMA weights (for inference-only loading)."""
        for p, s in zip(self._params, self.shadows()):
            p.copy_(s)

    @contextmanager
    @torch.no_grad()
    def swapped(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the live parameters (for sampling and evaluation)."""
        saved = [p.detach().clone() for p in self._params]
        for p, s in zip(self._params, self.shadows()):
            p.copy_(s)
        try:
            yield
        finally:
            for p, s in zip(self._params, saved):
                p.copy_(s)
