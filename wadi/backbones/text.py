"""Frozen text encoders (CLIP for SD, T5 for PixArt) behind one `encode(prompts)` call."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import Tensor, nn


class TextEncoder(nn.Module):
    """Tokenizer + frozen encoder. `use_mask` is true for T5 (PixArt passes the mask to attention)."""

    def __init__(
        self, tokenizer, encoder: nn.Module, max_length: int, use_mask: bool, source: str = ""
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder.requires_grad_(False).eval()
        self.max_length = max_length
        self.use_mask = use_mask
        self.source = source

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """(embeds (B, L, D), mask (B, L) or None), padded to `max_length` as the pipelines do."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.encoder.parameters()).device
        ids = _to_device(tokens["input_ids"], device)
        mask = _to_device(tokens["attention_mask"], device) if self.use_mask else None
        embeds = self.encoder(ids, attention_mask=mask)[0]
        return embeds, mask

    def identity(self) -> str:
        """A stable hash of the encoder's weights and the tokenizer's settings (keys the embedding cache)."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.encoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).numpy().tobytes())
        h.update(json.dumps({"max_length": self.max_length, "vocab": len(self.tokenizer)}).encode())
        return h.hexdigest()


def load_text_encoder(
    pretrained: str | Path, max_length: int, use_mask: bool, dtype=torch.float32
) -> TextEncoder:
    """Load `text_encoder/` and `tokenizer/` of a diffusers directory, offline."""
    from transformers import AutoConfig, AutoTokenizer, CLIPTextModel, T5EncoderModel

    root = Path(pretrained)
    for sub in ("text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(
                f"text encoder not found: {root / sub} is missing (expected subfolders text_encoder/ and "
                "tokenizer/ in the diffusers directory, or use a prompt-embedding cache)"
            )
    tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if tok_max is not None and tok_max < 10**6 and tok_max != max_length:
        raise ValueError(
            f"tokenizer at {root / 'tokenizer'} has model_max_length={tok_max}, but the backbone config says "
            f"text_max_length={max_length}; set backbone.text_max_length={tok_max} or fix the tokenizer"
        )
    config = AutoConfig.from_pretrained(root / "text_encoder", local_files_only=True)
    model_cls = T5EncoderModel if config.model_type in ("t5", "umt5") else CLIPTextModel
    encoder = model_cls.from_pretrained(root / "text_encoder", torch_dtype=dtype, local_files_only=True)
    return TextEncoder(tokenizer, encoder, max_length, use_mask, source=str(root))


def _to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`; to a GPU through pinned memory without blocking (a pageable copy syncs the host with the
    GPU: one stall per training step that encodes its prompts)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
