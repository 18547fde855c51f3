"""Adapters that train a small number of parameters on top of a frozen denoiser."""

from wadi.adapters.context import active_adapter, role_preserving_checkpoint, use_adapter
from wadi.adapters.inject import AdapterTargets, add_lorad, lorad_layers, select_targets
from wadi.adapters.lorad import LoRaDLinear, lorad_weight, rotate_pairs, wrap_angle

__all__ = [
    "AdapterTargets",
    "LoRaDLinear",
    "active_adapter",
    "add_lorad",
    "lorad_layers",
    "lorad_weight",
    "role_preserving_checkpoint",
    "rotate_pairs",
    "select_targets",
    "use_adapter",
    "wrap_angle",
]
