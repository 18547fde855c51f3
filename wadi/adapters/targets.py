"""Which layers an adapter covers: block prefixes and skipped names, chosen per backbone kind and role."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

ON_ODD = ("error", "skip")


@dataclass
class AdapterTargets:
    """Which nn.Linear layers an adapter covers.

    blocks: qualified-name prefixes of the sub-modules to search (e.g. "down_blocks", "caption_projection",
        "proj_out"); a layer is inside a block when its name equals the prefix or starts with "prefix.".
    skip: leaf names excluded wherever they occur (e.g. "time_emb_proj").
    on_odd: "error" refuses a targeted layer with an odd input width; "skip" leaves it out.
    """

    blocks: Sequence[str] = field(default_factory=list)
    skip: Sequence[str] = field(default_factory=list)
    on_odd: str = "error"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> AdapterTargets:
        """From a config node {blocks: [...], skip: [...], on_odd: ...} (conf/adapter/*.yaml)."""
        return cls(list(raw.get("blocks", [])), list(raw.get("skip", [])), raw.get("on_odd", "error"))


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def select_targets(model: nn.Module, targets: AdapterTargets, even_only: bool = True) -> list[str]:
    """Qualified names of the nn.Linear layers that `targets` selects, in module order.

    `even_only`: with `on_odd="skip"`, leave out layers with an odd input width (LoRaD rotates pairs).
    """
    if not targets.blocks:
        raise ValueError("adapter targets need at least one block prefix in `blocks`")
    if targets.on_odd not in ON_ODD:
        raise ValueError(f"on_odd must be 'error' or 'skip', got {targets.on_odd!r}")
    names = []
    inner = adapter_internals(model)
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not _inside(name, targets.blocks) or name in inner:
            continue
        if set(name.split(".")) & set(targets.skip):
            continue
        if even_only and module.in_features % 2 and targets.on_odd == "skip":
            continue
        names.append(name)
    return names


def plain_name(name: str) -> str:
    """A layer's name in the plain model: without the `.base_layer` of the adapter wrappers around it."""
    return name.replace(".base_layer", "")


def adapter_internals(model: nn.Module) -> set[str]:
    """Names of the modules inside adapter wrappers other than the wrapped layer: a wrapper (peft's LoRA layer,
    wadi's FullLinear) holds the layer it adapts as `base_layer`, and its own factors (e.g. LoRA's `lora_A`, an
    nn.Linear) are never targets of another adapter."""
    inner = set()
    for wrapper_name, wrapper in model.named_modules():
        if not isinstance(getattr(wrapper, "base_layer", None), nn.Module):
            continue
        for child_name, child in wrapper.named_children():
            if child_name != "base_layer":
                inner.update(n for n, _ in child.named_modules(prefix=f"{wrapper_name}.{child_name}"))
    return inner


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` where the sub-module `name` of `model` is."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
