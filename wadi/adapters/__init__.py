"""Adapters that train a small number of parameters on top of a frozen denoiser.

base.py      the seam: `Adapter` (attach, parameters, merge/unmerge, state_dict, is_state_key), the
             registry and `get_adapter`; targets.py: which layers an adapter covers
lorad.py     LoRaD: `LoRaDLinear` and the `LoRaD` adapter kind
rotation.py  LoRaD's formula (W' from W, A, B); function.py: W' as one autograd node for training;
             kernels.py: its fused Triton kernels; prerotate.py: every layer's W' batched per pass
context.py   what a forward pass binds: the role (adapter name) and the pass's rotation state
lora.py      LoRA and DoRA (peft's LoraLayer, its active adapter bridged to the role); full.py: full fine-tuning
             (a per-role trainable copy); budget.py: each kind's rank at an equal trainable budget
"""

from wadi.adapters.base import ADAPTERS, Adapter, get_adapter, register_adapter
from wadi.adapters.context import active_adapter, role_preserving_checkpoint, use_adapter
from wadi.adapters.lorad import LoRaD, LoRaDLinear, lorad_layers
from wadi.adapters.rotation import lorad_weight, rotate_pairs, wrap_angle
from wadi.adapters.targets import AdapterTargets, select_targets

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterTargets",
    "LoRaD",
    "LoRaDLinear",
    "active_adapter",
    "get_adapter",
    "lorad_layers",
    "lorad_weight",
    "register_adapter",
    "role_preserving_checkpoint",
    "rotate_pairs",
    "select_targets",
    "use_adapter",
    "wrap_angle",
]
