"""A diffusers pipeline for a wadi SwD export (scale-wise few-step sampling), self-contained (no wadi import).

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(
        export_dir, custom_pipeline="wadi/pipelines/swd_pipeline.py", trust_remote_code=True  # this local file
    )
    images = pipe(["a large red circle at the left"], generator=torch.Generator().manual_seed(0)).images

The export's `wadi_export.json` names the latent sizes s_1 <= ... <= s_K and timesteps t_1 > ... > t_K (its
"student" entry); `scales=` / `timesteps=` override them. Step k predicts x0 = (x - sqrt(1 - abar_t) eps) /
sqrt(abar_t) at s_k (abar from the export's scheduler, whose last value is the student's alpha_T^2), upscales it
bicubically in latent space to s_{k+1} and re-noises it with fresh noise to t_{k+1}; the last x0 is decoded.
Noise: one (K, C, S, S) tensor per image, step k using the top-left s_k x s_k crop of slice k: with one generator
per image seeded s, images equal `wadi.sample` / `wadi.generation` with seed s.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

EXPORT_INFO = "wadi_export.json"


class SwDPipeline(DiffusionPipeline):
    """Scale-wise sampling of a merged wadi SwD export: a U-Net (SD) or a PixArt transformer."""

    _optional_components = ["unet", "transformer"]

    def __init__(self, vae, text_encoder, tokenizer, scheduler, unet=None, transformer=None) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            scheduler=scheduler,
            unet=unet,
            transformer=transformer,
        )
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1)
        )

    def _export_info(self) -> dict:
        path = Path(str(self.config._name_or_path)) / EXPORT_INFO
        return json.loads(path.read_text()) if path.is_file() else {}

    @torch.no_grad()
    def _encode(self, prompts: list[str], max_length: int, use_mask: bool):
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
        )
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device) if use_mask else None
        return self.text_encoder(ids, attention_mask=mask)[0], mask

    def _eps(self, x, t, embeds, mask):
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        if self.unet is not None:
            return self.unet(x, tt, encoder_hidden_states=embeds, return_dict=False)[0]
        out = self.transformer(
            x,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=tt,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        return out[:, : x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        scales: list[int] | None = None,
        timesteps: list[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        info = self._export_info()
        student = info.get("student") or {}
        scales = list(scales or student.get("scales") or [])
        timesteps = list(timesteps or student.get("timesteps") or [])
        if not scales or len(scales) != len(timesteps):
            raise ValueError(
                f"scales {scales} and timesteps {timesteps}: give one timestep per scale (or load a wadi SwD export)"
            )
        backbone = info.get("backbone") or {}
        model = self.unet if self.unet is not None else self.transformer
        max_length = int(backbone.get("text_max_length") or self.tokenizer.model_max_length)
        use_mask = bool(backbone.get("use_text_mask", self.transformer is not None))
        embeds, mask = self._encode(prompts, max_length, use_mask)
        dtype = model.dtype
        embeds = embeds.to(dtype)
        size, channels, k_steps = scales[-1], model.config.in_channels, len(scales)
        gens = generator if isinstance(generator, list) else [generator] * len(prompts)
        noise = torch.stack(
            [torch.randn((k_steps, channels, size, size), generator=g, dtype=torch.float32) for g in gens]
        ).to(self.device)
        ac = self.scheduler.alphas_cumprod.to(self.device, torch.float32)
        x0 = None
        for k, (s, t) in enumerate(zip(scales, timesteps, strict=True)):
            z = noise[:, k, :, :s, :s]
            abar = ac[int(t)]
            if k == 0:
                x = z
            else:
                up = (
                    x0
                    if x0.shape[-1] == s
                    else F.interpolate(x0, size=(s, s), mode="bicubic", align_corners=False)
                )
                x = abar.sqrt() * up + (1 - abar).sqrt() * z
            eps = self._eps(x.to(dtype), t, embeds, mask).float()
            x0 = (x.float() - (1 - abar).sqrt() * eps) / abar.sqrt()
        image = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        image = self.image_processor.postprocess(image, output_type=output_type)
        return ImagePipelineOutput(images=image) if return_dict else (image,)
