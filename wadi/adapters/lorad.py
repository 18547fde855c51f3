"""LoRaD: Low-rank Rotation of weight Direction (WaDi, spec section 2).

For W (out x in), the input columns are split into adjacent pairs (2k, 2k+1). Theta = A @ B gives one
angle per (output row, column pair), wrapped into [-pi, pi), and each pair is rotated in its plane:

    W'[:, 2k]   = W[:, 2k] cos(Theta[:, k]) - W[:, 2k+1] sin(Theta[:, k])
    W'[:, 2k+1] = W[:, 2k] sin(Theta[:, k]) + W[:, 2k+1] cos(Theta[:, k])

Rotations preserve every row's L2 norm, so the adapter changes directions, never norms. A starts at
zero, so a fresh adapter is the identity. The forward does one matmul with W' (no frozen output is
computed and discarded), and `merge()` writes W' into the weight for zero-overhead inference.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.adapters.context import active_adapter


def wrap_angle(theta: Tensor) -> Tensor:
    """Map angles into [-pi, pi): ((theta + pi) mod 2pi) - pi."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def rotate_pairs(weight: Tensor, theta: Tensor) -> Tensor:
    """Rotate adjacent column pairs of `weight` (out, in) by `theta` (out, in/2)."""
    w = weight.unflatten(-1, (-1, 2))  # (out, in/2, 2)
    w_even, w_odd = w.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotated = torch.stack((w_even * cos - w_odd * sin, w_even * sin + w_odd * cos), dim=-1)
    return rotated.flatten(-2)  # (out, in)


def lorad_weight(weight: Tensor, lorad_A: Tensor, lorad_B: Tensor) -> Tensor:
    """W' for angles Theta = wrap(A @ B); computed in float32, returned in the weight's dtype."""
    theta = wrap_angle(lorad_A.float() @ lorad_B.float())  # (out, in/2)
    return rotate_pairs(weight.float(), theta).to(weight.dtype)


class LoRaDAdapter(nn.Module):
    """The trainable factors of one adapter on one layer: A (out x r), B (r x in/2)."""

    def __init__(self, out_features: int, in_features: int, rank: int, device=None) -> None:
        super().__init__()
        self.lorad_A = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.lorad_B = nn.Parameter(torch.empty(rank, in_features // 2, device=device))
        if self.lorad_B.device.type != "meta":
            nn.init.xavier_uniform_(self.lorad_B)

    @property
    def rank(self) -> int:
        return self.lorad_A.shape[1]


class LoRaDLinear(nn.Linear):
    """A frozen nn.Linear carrying several named LoRaD adapters; `active_adapter()` picks one per forward.

    Subclassing nn.Linear keeps the base `weight`/`bias` keys of the state dict unchanged, so a merged
    model saves as the plain diffusers model.
    """

    lorad: nn.ModuleDict

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> LoRaDLinear:
        """Wrap an existing nn.Linear, sharing (not copying) its weight and bias."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight.requires_grad_(False)
        if new.bias is not None:
            new.bias.requires_grad_(False)
        return new

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lorad = nn.ModuleDict()
        self.merged_adapter: str | None = None
        self._original_weight: Tensor | None = None
        self.layer_name = ""

    def add_adapter(self, name: str, rank: int) -> None:
        """Attach adapter `name` of rank `rank` (identity at init)."""
        where = self.layer_name or "LoRaDLinear"
        if rank < 1:
            raise ValueError(f"LoRaD rank must be >= 1, got {rank} for adapter {name!r} on layer {where}")
        if self.in_features % 2:
            raise ValueError(
                f"LoRaD needs an even input width: layer {where} has in_features={self.in_features}. "
                "Skip it by adding its name to the adapter's `skip` list."
            )
        if name in self.lorad:
            raise ValueError(f"layer {where} already has an adapter named {name!r}")
        device = self.weight.device
        self.lorad[name] = LoRaDAdapter(self.out_features, self.in_features, rank, device=device)

    @property
    def base_weight(self) -> Tensor:
        """The frozen teacher weight, also while an adapter is merged into `weight`."""
        return self._original_weight if self._original_weight is not None else self.weight

    def adapted_weight(self, name: str) -> Tensor:
        adapter = self.lorad[name]
        return lorad_weight(self.base_weight, adapter.lorad_A, adapter.lorad_B)

    def forward(self, x: Tensor) -> Tensor:
        name = active_adapter()
        if name is not None and name == self.merged_adapter:
            weight = self.weight
        elif name is not None and name in self.lorad:
            weight = self.adapted_weight(name)
        else:
            weight = self.base_weight
        return F.linear(x, weight.to(x.dtype) if weight.dtype != x.dtype else weight, self.bias)

    @torch.no_grad()
    def merge(self, name: str, safe_merge: bool = True) -> None:
        """Write W' of adapter `name` into `weight`; idempotent. The original is kept for `unmerge`."""
        if self.merged_adapter == name:
            return
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"layer {self.layer_name}: adapter {self.merged_adapter!r} is merged; unmerge before merging {name!r}"
            )
        if name not in self.lorad:
            return  # this layer is not a target of that adapter
        merged = self.adapted_weight(name)
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(f"layer {self.layer_name}: merging adapter {name!r} gives non-finite weights")
        self._original_weight = self.weight.detach().clone()
        self.weight.copy_(merged)
        self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original weight bit for bit; idempotent."""
        if self.merged_adapter is None:
            return
        self.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged_adapter = None

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{k}:r{v.rank}" for k, v in self.lorad.items())
        return f"{super().extra_repr()}, lorad=[{adapters}]"
