"""The toy teachers' parts, built in the exact diffusers / transformers classes of Stable Diffusion and PixArt.

Why the real classes at a miniature size: the backbone code that loads SD1.5 and PixArt-alpha loads these
too (`from_pretrained` of a local directory), so every code path of wadi runs on a laptop in seconds.

- toy-sd: AutoencoderKL (64x64 RGB -> 4x16x16), CLIPTextModel + word-level tokenizer (no mask),
  UNet2DConditionModel with cross-attention, DDPMScheduler with SD's scaled_linear betas.
- toy-pixart: PixArtTransformer2DModel (ada_norm_single, learned sigma: 8 output channels) + T5EncoderModel
  + word-level tokenizer with attention masks, the same VAE, DDPMScheduler with PixArt's linear betas.

The defaults below are the shipped sizes; every builder takes overrides (tests build tiny ones).
The tokenizers know exactly the caption grammar's words (wadi.toy.world), lowercased; anything else is <unk>.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wadi.toy.world import COLORS, POSITIONS, SHAPES, SIZES

# the caption grammar: "a <size> <color> <shape> at the <position>" joined by "and"
GRAMMAR_WORDS: tuple[str, ...] = ("a", "and", "at", "the", *SIZES, *COLORS, *SHAPES, *POSITIONS)
MAX_LENGTH = 32  # 3 objects x 7 words + 2 "and" + specials = 25 tokens at most

# special tokens in the order (and ids) the real tokenizers use: CLIP pads with its own tokens, T5 has
# pad=0, eos=1, unk=2 and no BOS.
TOKENIZER_STYLES: dict[str, dict[str, Any]] = {
    "clip": {
        "specials": ("<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"),
        "template": "<|startoftext|> $A <|endoftext|>",
        "tokens": {
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
        },
    },
    "t5": {
        "specials": ("<pad>", "</s>", "<unk>"),
        "template": "$A </s>",
        "tokens": {"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "</s>"},
    },
}

# shipped sizes (parameter counts in the comments are measured)
VAE_CONFIG: dict[str, Any] = {  # ~0.95M: 64 -> 32 -> 16, SD's KL autoencoder at 1/8 of its width
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 64, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "sample_size": 64,
}
CLIP_TEXT_CONFIG: dict[str, Any] = {  # ~0.8M
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "projection_dim": 128,
    "hidden_act": "quick_gelu",
}
T5_CONFIG: dict[str, Any] = {  # ~1.05M
    "d_model": 128,
    "d_kv": 32,
    "d_ff": 512,
    "num_layers": 4,
    "num_heads": 4,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 64,
    "dropout_rate": 0.0,
}
UNET_CONFIG: dict[str, Any] = {  # ~5.9M: 16 -> 8 -> 4 latents, cross-attention at 16 and 8
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (64, 128, 128),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
PIXART_CONFIG: dict[str, Any] = {  # ~5.9M: 8x8 = 64 tokens of width 256, 5 blocks
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "in_channels": 4,
    "out_channels": 8,  # learned sigma: (eps, variance interpolation) per latent channel
    "num_layers": 5,
    "sample_size": 16,
    "patch_size": 2,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "num_embeds_ada_norm": 1000,
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "use_additional_conditions": False,
}
# SD's betas (its scheduler_config.json), as a DDPMScheduler; x0 is never clipped in latent space
SD_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}
# PixArt-alpha's training betas (linear 1e-4 -> 0.02, as in DiT). The learned variance is trained, but the
# stock pipeline drops it before scheduler.step, so the scheduler uses fixed_small.
PIXART_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "clip_sample": False,
    "variance_type": "fixed_small",
}


def _merged(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(defaults)
    for k, v in dict(overrides or {}).items():
        cfg[k] = tuple(v) if isinstance(v, list) else v  # Hydra lists -> the tuples diffusers configs hold
    return cfg


def build_tokenizer(style: str = "clip", max_length: int = MAX_LENGTH):
    """A word-level fast tokenizer over GRAMMAR_WORDS that `AutoTokenizer.from_pretrained` loads offline.

    style "clip": <|startoftext|> words <|endoftext|>, the SD pipelines read no mask; "t5": words </s>,
    padded right with <pad> and an attention mask over the real tokens. Padding to `max_length` is what the
    pipelines ask for (`padding="max_length"`), so it is the tokenizer's model_max_length.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if style not in TOKENIZER_STYLES:
        raise ValueError(f"tokenizer style {style!r}; expected one of {tuple(TOKENIZER_STYLES)}")
    spec = TOKENIZER_STYLES[style]
    vocab = {w: i for i, w in enumerate((*spec["specials"], *GRAMMAR_WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=spec["tokens"]["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials_in_template = [w for w in spec["template"].split() if w != "$A"]
    tok.post_processor = processors.TemplateProcessing(
        single=spec["template"], special_tokens=[(w, vocab[w]) for w in specials_in_template]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=max_length, padding_side="right", **spec["tokens"]
    )


def build_vae(**overrides) -> nn.Module:
    """AutoencoderKL; `scaling_factor` is set after training to 1/std of the latents (as SD did)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**_merged(VAE_CONFIG, overrides))


def build_clip_text_encoder(tokenizer, **overrides) -> nn.Module:
    """CLIPTextModel sized by CLIP_TEXT_CONFIG, its vocabulary, positions and special ids from `tokenizer`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = _merged(CLIP_TEXT_CONFIG, overrides)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # != 2, so the pooled output reads the first EOS position
        **cfg,
    )
    return CLIPTextModel(config)


def build_t5_encoder(tokenizer, **overrides) -> nn.Module:
    """T5EncoderModel sized by T5_CONFIG (relative positions: any sequence length works)."""
    from transformers import T5Config, T5EncoderModel

    cfg = _merged(T5_CONFIG, overrides)
    config = T5Config(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
        **cfg,
    )
    return T5EncoderModel(config)


def text_width(text_encoder: nn.Module) -> int:
    """Width of the text encoder's hidden states (CLIP hidden_size, T5 d_model)."""
    config = text_encoder.config
    return config.hidden_size if hasattr(config, "hidden_size") else config.d_model


def build_unet(cross_attention_dim: int, **overrides) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(cross_attention_dim=cross_attention_dim, **_merged(UNET_CONFIG, overrides))


def build_pixart_transformer(caption_channels: int, **overrides) -> nn.Module:
    """PixArtTransformer2DModel; cross-attention runs at the model width (caption_projection maps to it)."""
    from diffusers import PixArtTransformer2DModel

    cfg = _merged(PIXART_CONFIG, overrides)
    cfg.setdefault("cross_attention_dim", cfg["num_attention_heads"] * cfg["attention_head_dim"])
    return PixArtTransformer2DModel(caption_channels=caption_channels, **cfg)


def build_scheduler(kind: str):
    """DDPMScheduler of 'sd' (scaled_linear 0.00085 -> 0.012) or 'pixart' (linear 1e-4 -> 0.02)."""
    from diffusers import DDPMScheduler

    configs = {"sd": SD_SCHEDULER_CONFIG, "pixart": PIXART_SCHEDULER_CONFIG}
    if kind not in configs:
        raise ValueError(f"scheduler kind {kind!r}; expected one of {tuple(configs)}")
    return DDPMScheduler(**configs[kind])


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def cast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A CPU copy in `dtype`, cast tensor by tensor (diffusers' Module.to warns about fp32-kept modules;
    these models keep none)."""
    import copy

    model = copy.deepcopy(model).cpu().eval()
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.data = t.data.to(dtype)
    return model


# transformers 5 names its fast tokenizer class TokenizersBackend; transformers 4 only knows the old name,
# which 5 still exports, so the saved files use the name both versions load.
PORTABLE_TOKENIZER_CLASS = "PreTrainedTokenizerFast"


def _portable_tokenizer_class(root: Path) -> None:
    import json

    for file, key in (
        (root / "model_index.json", "tokenizer"),
        (root / "tokenizer" / "tokenizer_config.json", None),
    ):
        data = json.loads(file.read_text())
        if key is None:
            data["tokenizer_class"] = PORTABLE_TOKENIZER_CLASS
        else:
            data[key] = ["transformers", PORTABLE_TOKENIZER_CLASS]
        file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_sd_teacher(
    path: str | Path, *, vae, text_encoder, tokenizer, unet, scheduler=None, dtype=torch.float16
) -> Path:
    """Write a `StableDiffusionPipeline` directory (unet/ vae/ text_encoder/ tokenizer/ scheduler/ +
    model_index.json) in `dtype` safetensors; safety_checker and feature_extractor are None."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=cast_copy(vae, dtype),
        text_encoder=cast_copy(text_encoder, dtype),
        tokenizer=tokenizer,
        unet=cast_copy(unet, dtype),
        scheduler=scheduler if scheduler is not None else build_scheduler("sd"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    _portable_tokenizer_class(Path(path))
    return Path(path)


def save_pixart_teacher(
    path: str | Path, *, vae, text_encoder, tokenizer, transformer, scheduler=None, dtype=torch.float16
) -> Path:
    """Write a `PixArtAlphaPipeline` directory (transformer/ vae/ text_encoder/ tokenizer/ scheduler/)."""
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=cast_copy(text_encoder, dtype),
        vae=cast_copy(vae, dtype),
        transformer=cast_copy(transformer, dtype),
        scheduler=scheduler if scheduler is not None else build_scheduler("pixart"),
    )
    pipe.save_pretrained(path, safe_serialization=True)
    _portable_tokenizer_class(Path(path))
    return Path(path)
