"""Backbones: one `eps = denoiser(x_t, t, cond, adapter)` interface over diffusers U-Nets and DiTs."""

from wadi.backbones.conditioning import Conditioning
from wadi.backbones.denoiser import Denoiser, PixArtDenoiser, UNetDenoiser
from wadi.backbones.loading import Backbone, BackboneConfig, build_denoiser, check_layout, load_backbone
from wadi.backbones.text import TextEncoder, load_text_encoder

__all__ = [
    "Backbone",
    "BackboneConfig",
    "Conditioning",
    "Denoiser",
    "PixArtDenoiser",
    "TextEncoder",
    "UNetDenoiser",
    "build_denoiser",
    "check_layout",
    "load_backbone",
    "load_text_encoder",
]
