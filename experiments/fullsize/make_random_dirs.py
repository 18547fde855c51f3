"""Write random-init, full-size SD1.5 / SD2.1 / PixArt-alpha diffusers directories (the cost is real, the
weights are not), for `python -m wadi.train` smoke runs at the paper's resolution and per-GPU batch.

The text encoders are full width (CLIP-L 768, OpenCLIP-H 1024) but T5 keeps only 2 of its 24 layers
(d_model 4096 as PixArt needs): wadi's training step does not depend on the encoder's depth, and a 4.7B
random T5 would dominate the set-up time. Tokenizers are word-level stand-ins of the right max length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def main(out: str, which: list[str]) -> None:
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        PixArtAlphaPipeline,
        PixArtTransformer2DModel,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from wadi.testing import word_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        latent_channels=4,
        layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    for name in which:
        target = Path(out) / name
        if name in ("sd15", "sd21"):
            arch = json.loads((ROOT / f"conf/arch/{name}_unet.json").read_text())
            with torch.device(device):
                unet = UNet2DConditionModel.from_config(arch)
                width, layers, heads = (768, 12, 12) if name == "sd15" else (1024, 23, 16)
                text = CLIPTextModel(
                    CLIPTextConfig(
                        vocab_size=49408,
                        hidden_size=width,
                        intermediate_size=4 * width,
                        num_hidden_layers=layers,
                        num_attention_heads=heads,
                        max_position_embeddings=77,
                        pad_token_id=0,
                        bos_token_id=2,
                        eos_token_id=3,
                    )
                )
            sched = DDPMScheduler(
                beta_schedule="scaled_linear",
                beta_start=0.00085,
                beta_end=0.012,
                steps_offset=1,
                clip_sample=False,
            )
            pipe = StableDiffusionPipeline(
                vae=vae,
                text_encoder=text,
                tokenizer=word_tokenizer(max_length=77),
                unet=unet,
                scheduler=sched,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        else:
            arch = json.loads((ROOT / "conf/arch/pixart_256_transformer.json").read_text())
            with torch.device(device):
                transformer = PixArtTransformer2DModel.from_config(arch)
                text = T5EncoderModel(
                    T5Config(
                        vocab_size=32128,
                        d_model=4096,
                        d_kv=64,
                        d_ff=10240,
                        num_layers=2,
                        num_heads=64,
                        pad_token_id=0,
                        eos_token_id=1,
                        decoder_start_token_id=0,
                        feed_forward_proj="gated-gelu",
                    )
                )
            sched = DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
            pipe = PixArtAlphaPipeline(
                tokenizer=word_tokenizer(max_length=120),
                text_encoder=text,
                vae=vae,
                transformer=transformer,
                scheduler=sched,
            )
        pipe.save_pretrained(target)
        print("wrote", target, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or ["sd15", "sd21", "pixart"])
