"""Tiny random-init models in real diffusers layouts, for tests and examples (no download needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

DEFAULT_WORDS = (
    "a an the and at of with on in red green blue yellow purple white black orange small large big tiny "
    "circle square triangle star cross left right top bottom center cat dog photo painting"
).split()


def word_tokenizer(words: Sequence[str] = DEFAULT_WORDS, max_length: int = 16):
    """A word-level fast tokenizer (lowercased, whitespace split, <s> ... </s>, padded with <pad>)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=max_length,
    )


def tiny_unet(cross_dim: int = 32, sample_size: int = 8, linear_projection: bool = False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=linear_projection,
    )


def tiny_pixart(cross_dim: int = 32, sample_size: int = 8):
    from diffusers import PixArtTransformer2DModel

    return PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=32,
        sample_size=sample_size,
        patch_size=2,
        caption_channels=cross_dim,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        num_embeds_ada_norm=1000,
        use_additional_conditions=False,
        attention_bias=True,
        activation_fn="gelu-approximate",
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )


def save_tiny_pipeline(
    root: str | Path,
    kind: str = "unet",
    seed: int = 0,
    linear_projection: bool = False,
    max_length: int = 16,
    text_dim: int = 32,
) -> Path:
    """Write a tiny random SD-layout (kind="unet") or PixArt-layout (kind="pixart") diffusers directory.

    Latents are 4 x 8 x 8 for 16 x 16 RGB images; the text encoder is CLIP (unet) or T5 (pixart) of width
    `text_dim` (SD2.1's layout: `linear_projection=True, text_dim=1024`).
    """
    from diffusers import DDPMScheduler, PixArtAlphaPipeline, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    root = Path(root)
    tokenizer = word_tokenizer(max_length=max_length)
    vocab = len(tokenizer)
    if kind == "unet":
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=text_dim,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=max_length,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
            )
        )
        scheduler = DDPMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            steps_offset=1,
            clip_sample=False,
        )
        pipe = StableDiffusionPipeline(
            vae=tiny_vae(),
            text_encoder=text,
            tokenizer=tokenizer,
            unet=tiny_unet(cross_dim=text_dim, linear_projection=linear_projection),
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif kind == "pixart":
        text = T5EncoderModel(
            T5Config(
                vocab_size=vocab,
                d_model=32,
                d_kv=8,
                d_ff=64,
                num_layers=2,
                num_heads=4,
                pad_token_id=0,
                eos_token_id=3,
                decoder_start_token_id=0,
            )
        )
        scheduler = DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
        pipe = PixArtAlphaPipeline(
            tokenizer=tokenizer,
            text_encoder=text,
            vae=tiny_vae(),
            transformer=tiny_pixart(),
            scheduler=scheduler,
        )
    else:
        raise ValueError(f"unknown kind {kind!r}; known: unet, pixart")
    pipe.save_pretrained(root)
    return root


def tiny_backbone_config(
    root: str | Path, kind: str = "unet", name: str | None = None, max_length: int = 16
) -> dict:
    """A backbone config dict (as conf/backbone/*.yaml would give) for a tiny directory."""
    return {
        "name": name or f"tiny_{kind}",
        "kind": kind,
        "pretrained": str(root),
        "resolution": 16,
        "latent_size": 8,
        "text_max_length": max_length,
        "use_text_mask": kind == "pixart",
    }


class LossRecorder:
    """A Lightning callback writing each step's losses to a JSON file (used by the resume tests)."""

    def __new__(cls, path: str):
        import lightning as L

        class _Recorder(L.Callback):
            def __init__(self, path: str) -> None:
                self.path = Path(path)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
                import json

                rows = json.loads(self.path.read_text()) if self.path.exists() else {}
                m = trainer.callback_metrics
                rows[str(trainer.global_step)] = [
                    float(m["train/loss_generator"]),
                    float(m["train/loss_fake_score"]),
                ]
                self.path.write_text(json.dumps(rows))

        return _Recorder(path)


def two_process_train(model_dir, tmp_path, trainer: str, *overrides: str, timeout: int = 400):
    """Run `python -m wadi.train trainer=<trainer>` as 2 CPU processes (gloo) on a tiny SD directory.

    `tmp_path` goes on PYTHONPATH, so a callback module written there can be named in `overrides`.
    Returns the finished `subprocess.CompletedProcess`.
    """
    import os
    import subprocess
    import sys

    from wadi.config import CONF_DIR

    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{CONF_DIR.parent}"}
    cmd = [
        sys.executable,
        "-m",
        "wadi.train",
        f"trainer={trainer}",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "logger=csv",
        "backbone=sd15",
        f"backbone.pretrained={model_dir}",
        "backbone.arch_config=null",
        "backbone.latent_size=8",
        "backbone.resolution=16",
        "backbone.text_max_length=16",
        "dataset=toy",
        "dataset.num_prompts=64",
        "batch_size=2",
        "max_steps=3",
        "rank=4",
        *overrides,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=CONF_DIR.parent)


def compose_config(overrides: list[str], name: str = "config", **kwargs):
    """wadi's Hydra config `name` composed with `overrides`, as the commands see it (tests, notebooks); `kwargs` go
    to Hydra's `compose` (e.g. return_hydra_config=True)."""
    from hydra import compose, initialize_config_dir

    from wadi.config import CONF_DIR, null_group_overrides

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=null_group_overrides(overrides), **kwargs)
