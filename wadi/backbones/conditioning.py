"""What a denoiser is conditioned on, uniform over U-Net and DiT backbones."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Conditioning:
    """Text conditioning of a batch.

    embeds: (B, L, D) text-encoder hidden states.
    mask: (B, L) attention mask for encoders that use one (T5 in PixArt); None for CLIP in SD.
    """

    embeds: Tensor
    mask: Tensor | None = None

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def expand(self, batch: int) -> Conditioning:
        """Repeat a single conditioning (e.g. the null prompt) to a batch."""
        mask = None if self.mask is None else self.mask.expand(batch, -1)
        return Conditioning(self.embeds.expand(batch, -1, -1), mask)

    def to(self, device=None, dtype=None) -> Conditioning:
        mask = None if self.mask is None else self.mask.to(device)
        return Conditioning(self.embeds.to(device=device, dtype=dtype), mask)

    def where(self, use_other: Tensor, other: Conditioning) -> Conditioning:
        """Per sample, take `other` where `use_other` (B,) is true (CFG dropout of the fake score)."""
        embeds = torch.where(use_other[:, None, None], other.embeds, self.embeds)
        mask = None
        if self.mask is not None and other.mask is not None:
            mask = torch.where(use_other[:, None], other.mask, self.mask)
        return Conditioning(embeds, mask)

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        embeds = torch.cat([c.embeds for c in items])
        masks = [c.mask for c in items]
        mask = None if any(m is None for m in masks) else torch.cat(masks)
        return Conditioning(embeds, mask)
