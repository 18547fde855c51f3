"""DoRA as an adapter kind: peft's LoRA layer with `use_dora=True`; it lives with LoRA in `wadi.adapters.lora`."""

from wadi.adapters.lora import DoRA

__all__ = ["DoRA"]
