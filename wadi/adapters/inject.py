"""Choose target layers by config and attach named LoRaD adapters to them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from torch import nn

from wadi.adapters.lorad import LoRaDLinear


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


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def select_targets(model: nn.Module, targets: AdapterTargets) -> list[str]:
    """Qualified names of the nn.Linear layers that `targets` selects, in module order."""
    if not targets.blocks:
        raise ValueError("adapter targets need at least one block prefix in `blocks`")
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not _inside(name, targets.blocks):
            continue
        if set(name.split(".")) & set(targets.skip):
            continue
        if module.in_features % 2 and targets.on_odd == "skip":
            continue
        names.append(name)
    return names


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def add_lorad(model: nn.Module, name: str, rank: int, targets: AdapterTargets) -> list[str]:
    """Attach adapter `name` (rank `rank`) to every selected layer; returns the layer names.

    Layers are wrapped in place (weights shared, not copied), so several adapters share one frozen base.
    """
    if rank < 1:
        raise ValueError(f"LoRaD rank must be >= 1, got rank={rank} for adapter {name!r}")
    if targets.on_odd not in ("error", "skip"):
        raise ValueError(f"on_odd must be 'error' or 'skip', got {targets.on_odd!r}")
    layers = select_targets(model, targets)
    if not layers:
        raise ValueError(f"adapter {name!r}: no nn.Linear matches blocks={list(targets.blocks)}")
    for layer_name in layers:
        layer = model.get_submodule(layer_name)
        if not isinstance(layer, LoRaDLinear):
            layer = LoRaDLinear.from_linear(layer)
            layer.layer_name = layer_name
            _replace(model, layer_name, layer)
        layer.add_adapter(name, rank)
    return layers


def lorad_layers(model: nn.Module) -> Iterator[tuple[str, LoRaDLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRaDLinear):
            yield name, module


def adapter_parameters(model: nn.Module, name: str) -> list[nn.Parameter]:
    """The trainable parameters of adapter `name`, in a stable order."""
    return [
        p for _, layer in lorad_layers(model) if name in layer.lorad for p in layer.lorad[name].parameters()
    ]


def adapter_state_dict(model: nn.Module, name: str) -> dict:
    """{layer_name.lorad_A / .lorad_B: tensor} of adapter `name` (for export and checks)."""
    out = {}
    for layer_name, layer in lorad_layers(model):
        if name in layer.lorad:
            out[f"{layer_name}.lorad_A"] = layer.lorad[name].lorad_A
            out[f"{layer_name}.lorad_B"] = layer.lorad[name].lorad_B
    return out


def merge_adapter(model: nn.Module, name: str, safe_merge: bool = True) -> None:
    for _, layer in lorad_layers(model):
        layer.merge(name, safe_merge=safe_merge)


def unmerge_adapter(model: nn.Module) -> None:
    for _, layer in lorad_layers(model):
        layer.unmerge()
