"""wadi: one-step text-to-image generators distilled with LoRaD + VSD."""

__version__ = "0.1.0"
