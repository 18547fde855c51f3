"""Full fine-tuning as an adapter kind: a trainable float32 copy of every targeted layer's weight and bias.

The role (e.g. the generator) runs its own copy; the teacher and the other role keep running the frozen base,
which stays shared. Targets select the layers as for the other kinds (conf/adapter/full.yaml: every nn.Linear
of the blocks LoRaD adapts, i.e. the layers whose direction/norm change the weight analysis compares). The
copy is per layer rather than a second denoiser so that it composes with the per-forward role, gradient
checkpointing and the other kinds on the same layer through the same seam. `rank` is not used.

Hand-written (no library does "a role-selected trainable copy"): a wrapper like peft's, holding the layer it
adapts as `base_layer`, so LoRaD or LoRA can adapt that base for the other role. Under trainer=fsdp it is
refused (wadi.config): FSDP here shards only the frozen base and keeps trainable tensors whole on every rank,
so the copy would not be sharded.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.adapters.base import Adapter, register_adapter
from wadi.adapters.context import active_adapter
from wadi.adapters.targets import AdapterTargets, replace_module, select_targets

BASE = ".base_layer"


def innermost(layer: nn.Module) -> nn.Module:
    """The nn.Linear holding the frozen base weight under any wrappers (`base_layer` chains)."""
    while hasattr(layer, "base_layer"):
        layer = layer.base_layer
    return layer


class FullCopy(nn.Module):
    """One role's trainable copy of a layer's weight and bias (float32)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().to(torch.float32, copy=True))
        self.bias = (
            nn.Parameter(linear.bias.detach().to(torch.float32, copy=True))
            if linear.bias is not None
            else None
        )


class FullLinear(nn.Module):
    """A frozen layer (`base_layer`) with per-role trainable copies; `active_adapter()` picks one per forward."""

    def __init__(self, base_layer: nn.Module, layer_name: str = "") -> None:
        super().__init__()
        self.base_layer = base_layer
        self.full = nn.ModuleDict()
        self.layer_name = layer_name
        self.merged_adapter: str | None = None
        self._original: tuple[Tensor, Tensor | None] | None = None
        base = innermost(base_layer)
        self.in_features, self.out_features = base.in_features, base.out_features

    @property
    def weight(self) -> Tensor:
        """The frozen base weight (code that reads `layer.weight`, e.g. for its dtype, sees the base as with peft)."""
        return innermost(self.base_layer).weight

    @property
    def bias(self) -> Tensor | None:
        return innermost(self.base_layer).bias

    def add_adapter(self, name: str) -> None:
        if name in self.full:
            raise ValueError(f"layer {self.layer_name} already has an adapter named {name!r}")
        self.full[name] = FullCopy(innermost(self.base_layer))

    def forward(self, x: Tensor) -> Tensor:
        name = active_adapter()
        if self.merged_adapter is not None and name != self.merged_adapter:
            raise RuntimeError(
                f"layer {self.layer_name}: adapter {self.merged_adapter!r} is merged into the weight; unmerge it "
                f"before running role {name!r}"
            )
        if name is None or name not in self.full or name == self.merged_adapter:
            return self.base_layer(x)
        copy = self.full[name]
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        weight, bias = copy.weight, copy.bias
        if not autocast and weight.dtype != dtype:
            weight = weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def merge(self, name: str, safe_merge: bool = True) -> None:
        """Write role `name`'s copy into the base weight and bias; idempotent, the originals kept."""
        if self.merged_adapter == name or name not in self.full:
            return
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"layer {self.layer_name}: adapter {self.merged_adapter!r} is merged; unmerge before {name!r}"
            )
        copy, base = self.full[name], innermost(self.base_layer)
        if safe_merge and not all(torch.isfinite(p).all() for p in copy.parameters()):
            raise ValueError(f"layer {self.layer_name}: merging adapter {name!r} gives non-finite weights")
        bias = base.bias.detach().clone() if base.bias is not None else None
        self._original = (base.weight.detach().clone(), bias)
        base.weight.copy_(copy.weight)
        if base.bias is not None:
            base.bias.copy_(copy.bias)
        self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight and bias bit for bit; idempotent."""
        if self.merged_adapter is None:
            return
        base = innermost(self.base_layer)
        weight, bias = self._original
        base.weight.copy_(weight)
        if bias is not None:
            base.bias.copy_(bias)
        self._original = None
        self.merged_adapter = None


def full_layers(model: nn.Module) -> Iterator[tuple[str, FullLinear]]:
    """(qualified name without `.base_layer`, layer) of every FullLinear of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, FullLinear):
            yield name.replace(BASE, ""), module


@register_adapter
class Full(Adapter):
    """Full fine-tuning of the targeted layers: each role trains its own copy of their weights and biases."""

    name = "full"

    def layer_count(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        """The whole weight (out x in) and bias (out); independent of `rank`."""
        return out_features * in_features + (out_features if bias else 0)

    def attach(self, model: nn.Module, role: str, rank: int, targets: AdapterTargets) -> list[str]:
        """Give role `role` a trainable copy of every selected layer (`rank` unused); returns the layer names."""
        names = []
        for found in select_targets(model, targets, even_only=False):
            layer_name = found
            if found.endswith(BASE) and isinstance(model.get_submodule(found[: -len(BASE)]), FullLinear):
                layer_name = found[: -len(BASE)]
            layer = model.get_submodule(layer_name)
            if not isinstance(layer, FullLinear):
                layer = FullLinear(layer, layer_name.replace(BASE, ""))
                replace_module(model, layer_name, layer)
            layer.add_adapter(role)
            names.append(layer_name.replace(BASE, ""))
        if not names:
            raise ValueError(f"adapter {role!r}: no nn.Linear matches blocks={list(targets.blocks)}")
        return names

    def parameters(self, model: nn.Module, role: str) -> list[nn.Parameter]:
        return list(self.state_dict(model, role).values())

    def merge(self, model: nn.Module, role: str, safe_merge: bool = True) -> None:
        for _, layer in full_layers(model):
            layer.merge(role, safe_merge=safe_merge)

    def unmerge(self, model: nn.Module, role: str | None = None) -> None:
        for _, layer in full_layers(model):
            if role is None or layer.merged_adapter == role:
                layer.unmerge()

    def state_dict(self, model: nn.Module, role: str) -> dict[str, Tensor]:
        """{layer.weight / layer.bias: the role's copy} (layer names as in the plain diffusers model)."""
        out = {}
        for layer_name, layer in full_layers(model):
            if role in layer.full:
                out[f"{layer_name}.weight"] = layer.full[role].weight
                if layer.full[role].bias is not None:
                    out[f"{layer_name}.bias"] = layer.full[role].bias
        return out

    def is_state_key(self, key: str) -> bool:
        return ".full." in f".{key}"

    def plain_key(self, key: str) -> str | None:
        return None if self.is_state_key(key) else key.replace(BASE, "")
