"""LoRA (and, with `use_dora`, DoRA) as adapter kinds, from peft: W' = W + (alpha / r) B A.

peft's `tuners.lora.layer.Linear` is the layer and its math the reference (forward, DoRA's magnitude and
weight norm, the merged weight); wadi adds only the bridge to its per-forward role. peft picks the adapter a
forward applies with a switch stored on every layer (`set_adapter`), and `set_adapter` also freezes the other
adapters' parameters. Neither fits one frozen network playing three roles in one step, whose gradient
checkpointing recomputes blocks during backward, when another role may be active. `RoleLoraLinear` therefore
reads the role from `wadi.adapters.context.active_adapter()` in every forward (so `role_preserving_checkpoint`
re-enters the forward's role for the recomputation, as for LoRaD), and `set_adapter` is a no-op: every role's
factors stay trainable, each role's optimizer holds its own.

merge/unmerge keep the original weight and copy it back (peft's unmerge subtracts the delta, which is not bit
exact); the merged weight itself is peft's (`get_delta_weight`, DoRA's `merge_safe`).

The layer wraps its base as `base_layer` (peft's layout), so the model's base keys gain `.base_layer`;
`plain_key` maps them back for the merged diffusers export.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import Tensor, nn

from wadi.adapters.base import Adapter, register_adapter
from wadi.adapters.context import active_adapter
from wadi.adapters.full import innermost
from wadi.adapters.targets import AdapterTargets, replace_module, select_targets

BASE = ".base_layer"
STATE_PARTS = (".lora_A.", ".lora_B.", ".lora_magnitude_vector.")


class RoleLoraLinear(PeftLoraLinear):
    """peft's LoRA/DoRA Linear whose active adapter is wadi's per-forward role (None: the frozen base)."""

    layer_name: str = ""

    @property
    def active_adapter(self) -> list[str]:  # peft's forward reads it through `active_adapters`
        name = active_adapter()
        return [name] if name is not None and name in self.lora_A else []

    def set_adapter(self, adapter_names: Any, inference_mode: bool = False) -> None:
        """peft's global switch (it would also freeze the other roles): the role comes per forward instead."""

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.merged_adapters and active_adapter() not in self.merged_adapters:
            raise RuntimeError(
                f"layer {self.layer_name}: adapter {self.merged_adapters[0]!r} is merged into the weight; "
                f"unmerge it before running role {active_adapter()!r}"
            )
        return super().forward(x, *args, **kwargs)

    @torch.no_grad()
    def merge_role(self, name: str, safe_merge: bool = True) -> None:
        """Write adapter `name` into the base weight (peft's merged weight); idempotent, original kept."""
        if self.merged_adapters == [name] or name not in self.lora_A:
            return
        if self.merged_adapters:
            raise RuntimeError(
                f"layer {self.layer_name}: adapter {self.merged_adapters[0]!r} is merged; unmerge before {name!r}"
            )
        base = self.get_base_layer()
        original = base.weight.detach().clone()
        if name in self.lora_variant:  # DoRA
            merged = self.lora_variant[name].merge_safe(self, name, original.clone())
        else:
            merged = original + self.get_delta_weight(name).to(original.dtype)
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(f"layer {self.layer_name}: merging adapter {name!r} gives non-finite weights")
        self._original_weight = original
        base.weight.copy_(merged)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge_role(self) -> None:
        """Restore the original base weight bit for bit; idempotent."""
        if not self.merged_adapters:
            return
        self.get_base_layer().weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged_adapters.clear()
        self._caches.clear()


def lora_layers(model: nn.Module) -> Iterator[tuple[str, RoleLoraLinear]]:
    """(qualified name without `.base_layer`, layer) of every LoRA/DoRA layer of `model`, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, RoleLoraLinear):
            yield name.replace(BASE, ""), module


def _target_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The module to adapt for a selected nn.Linear: the LoRA layer around it if it already has one."""
    if name.endswith(BASE):
        parent = model.get_submodule(name[: -len(BASE)])
        if isinstance(parent, RoleLoraLinear):
            return name[: -len(BASE)], parent
    return name, model.get_submodule(name)


def lora_count(in_features: int, out_features: int, rank: int, dora: bool = False) -> int:
    """Trainable parameters of one LoRA layer: A (r x in) + B (out x r), plus DoRA's magnitude (out)."""
    return rank * (in_features + out_features) + (out_features if dora else 0)


@register_adapter
class LoRA(Adapter):
    """LoRA (peft) on the nn.Linear layers its targets select; `alpha`: the scale is alpha / rank (None: 1)."""

    name = "lora"
    use_dora: ClassVar[bool] = False

    def __init__(self, targets=None, alpha: float | None = None) -> None:
        super().__init__(targets)
        self.alpha = alpha

    def layer_count(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        return lora_count(in_features, out_features, rank, self.use_dora)

    def attach(self, model: nn.Module, role: str, rank: int, targets: AdapterTargets) -> list[str]:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(
                f"{self.name} rank must be an integer >= 1, got rank={rank!r} for adapter {role!r}"
            )
        selected = [_target_layer(model, n) for n in select_targets(model, targets, even_only=False)]
        if not selected:
            raise ValueError(f"adapter {role!r}: no nn.Linear matches blocks={list(targets.blocks)}")
        widths = [(min(m.in_features, m.out_features), n) for n, m in selected]
        widest, widest_name = max(widths)
        if rank > widest:
            raise ValueError(
                f"{self.name} rank {rank} for adapter {role!r} exceeds every targeted layer's width: the widest, "
                f"{widest_name}, has min(in_features, out_features) = {widest}; B A cannot reach rank {rank} on "
                f"any layer (lower {role}.rank to <= {widest})"
            )
        alpha = float(rank if self.alpha is None else self.alpha)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, use_dora=self.use_dora)
        names = []
        for layer_name, layer in selected:
            # Factors are made where the base lives (the meta device of a dry run allocates nothing).
            with torch.device(innermost(layer).weight.device):
                if isinstance(layer, RoleLoraLinear):
                    if role in layer.lora_A:
                        raise ValueError(f"layer {layer_name} already has an adapter named {role!r}")
                    layer.update_layer(role, rank, lora_alpha=alpha, config=config)
                else:
                    layer = RoleLoraLinear(layer, role, config, r=rank, lora_alpha=alpha)
                    layer.layer_name = layer_name.replace(BASE, "")
                    replace_module(model, layer_name, layer)
            names.append(layer_name.replace(BASE, ""))
        return names

    def parameters(self, model: nn.Module, role: str) -> list[nn.Parameter]:
        return list(self.state_dict(model, role).values())

    def merge(self, model: nn.Module, role: str, safe_merge: bool = True) -> None:
        for _, layer in lora_layers(model):
            layer.merge_role(role, safe_merge=safe_merge)

    def unmerge(self, model: nn.Module, role: str | None = None) -> None:
        for _, layer in lora_layers(model):
            if role is None or role in layer.merged_adapters:
                layer.unmerge_role()

    def state_dict(self, model: nn.Module, role: str) -> dict[str, Tensor]:
        """{layer.lora_A / .lora_B (/ .lora_magnitude): tensor} of adapter `role` (layer names without
        `.base_layer`)."""
        out = {}
        for layer_name, layer in lora_layers(model):
            if role in layer.lora_A:
                out[f"{layer_name}.lora_A"] = layer.lora_A[role].weight
                out[f"{layer_name}.lora_B"] = layer.lora_B[role].weight
                if role in layer.lora_magnitude_vector:
                    out[f"{layer_name}.lora_magnitude"] = layer.lora_magnitude_vector[role].weight
        return out

    def is_state_key(self, key: str) -> bool:
        return any(part in f".{key}" for part in STATE_PARTS)

    def plain_key(self, key: str) -> str | None:
        return None if self.is_state_key(key) else key.replace(BASE, "")


@register_adapter
class DoRA(LoRA):
    """DoRA (peft's `use_dora=True`): LoRA's direction update with a trainable per-row magnitude."""

    name = "dora"
    use_dora = True
