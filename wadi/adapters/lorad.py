"""LoRaD as an adapter kind: the layer (`LoRaDLinear`) and the seam's implementation (`LoRaD`).

The formula is `wadi.adapters.rotation`; the training forward builds W' through
`wadi.adapters.function.rotated_weight` (fused kernels in `wadi.adapters.kernels`), or picks up the W'
precomputed for the whole pass (`wadi.adapters.prerotate`). A starts at zero, so a fresh adapter is the
identity. The forward does one matmul with W' (no frozen output is computed and discarded), and `merge()`
writes W' into the weight for zero-overhead inference.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.adapters.base import Adapter, register_adapter
from wadi.adapters.context import active_adapter, prerotated
from wadi.adapters.function import rotated_weight
from wadi.adapters.rotation import lorad_weight
from wadi.adapters.targets import AdapterTargets, plain_name, replace_module, select_targets


class LoRaDFactors(nn.Module):
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
        self.lorad[name] = LoRaDFactors(self.out_features, self.in_features, rank, device=device)

    @property
    def base_weight(self) -> Tensor:
        """The frozen teacher weight, also while an adapter is merged into `weight`."""
        return self._original_weight if self._original_weight is not None else self.weight

    def forward(self, x: Tensor) -> Tensor:
        name = active_adapter()
        # The matmul's dtype: autocast's when it is on (it casts the operands itself), else the input's.
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        pre = prerotated(self) if name is not None else None
        if name is not None and name == self.merged_adapter:
            weight = self.weight
        elif pre is not None and pre.dtype == dtype:
            weight = pre
        elif name is not None and name in self.lorad:
            factors = self.lorad[name]
            weight = rotated_weight(self.base_weight, factors.lorad_A, factors.lorad_B, dtype)
        else:
            weight = self.base_weight
        if weight.dtype != dtype and not autocast:
            weight = weight.to(dtype)
        return F.linear(x, weight, self.bias)

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
        factors = self.lorad[name]
        merged = lorad_weight(self.base_weight, factors.lorad_A, factors.lorad_B)
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


def lorad_layers(model: nn.Module) -> Iterator[tuple[str, LoRaDLinear]]:
    """(qualified name, layer) of every LoRaD layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRaDLinear):
            yield name, module


@register_adapter
class LoRaD(Adapter):
    """LoRaD on the nn.Linear layers its targets select; several roles share one frozen base."""

    name = "lorad"

    def layer_count(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        """A (out x r) + B (r x in/2)."""
        return rank * (out_features + in_features // 2)

    def attach(self, model: nn.Module, role: str, rank: int, targets: AdapterTargets) -> list[str]:
        """Attach adapter `role` (rank `rank`) to every selected layer; returns the layer names.

        Layers are wrapped in place (weights shared, not copied), so several adapters share one frozen base.
        """
        if rank < 1:
            raise ValueError(f"LoRaD rank must be >= 1, got rank={rank} for adapter {role!r}")
        layers = select_targets(model, targets)
        if not layers:
            raise ValueError(f"adapter {role!r}: no nn.Linear matches blocks={list(targets.blocks)}")
        for layer_name in layers:
            layer = model.get_submodule(layer_name)
            if not isinstance(layer, LoRaDLinear):
                layer = LoRaDLinear.from_linear(layer)
                layer.layer_name = plain_name(layer_name)
                replace_module(model, layer_name, layer)
            layer.add_adapter(role, rank)
        return [plain_name(n) for n in layers]

    def parameters(self, model: nn.Module, role: str) -> list[nn.Parameter]:
        return [
            p
            for _, layer in lorad_layers(model)
            if role in layer.lorad
            for p in layer.lorad[role].parameters()
        ]

    def merge(self, model: nn.Module, role: str, safe_merge: bool = True) -> None:
        for _, layer in lorad_layers(model):
            layer.merge(role, safe_merge=safe_merge)

    def unmerge(self, model: nn.Module, role: str | None = None) -> None:
        for _, layer in lorad_layers(model):
            if role is None or layer.merged_adapter == role:
                layer.unmerge()

    def state_dict(self, model: nn.Module, role: str) -> dict[str, Tensor]:
        """{layer_name.lorad_A / .lorad_B: tensor} of adapter `role`."""
        out = {}
        for layer_name, layer in lorad_layers(model):
            layer_name = plain_name(layer_name)
            if role in layer.lorad:
                out[f"{layer_name}.lorad_A"] = layer.lorad[role].lorad_A
                out[f"{layer_name}.lorad_B"] = layer.lorad[role].lorad_B
        return out

    def is_state_key(self, key: str) -> bool:
        return ".lorad." in f".{key}"
