"""TiUE ("One-Way Ticket", CVPR 2025): a U-Net's encoder run once, its decoder run K times in one batched pass.

The student of Loopfree / TiUE (github.com/sen-mao/Loopfree) is a diffusers `UNet2DConditionModel` split in two:

- encoder = time embedding of t_1 + `conv_in` + every `down_block` + `mid_block`, run once on z ~ N(0, I);
- decoder = `up_blocks` + `conv_norm_out` / `conv_act` / `conv_out`, run on the stored skip and mid features
  for the K timesteps t_1 > ... > t_K at once (batch K*B, step-major: row k*B + b is step k of sample b),
  only the time embedding changing: eps_k = Dec(Enc(z, t_1, y), t_k, y);
- z_0 is the deterministic DDIM (eta 0) chain started at z with eps_1..eps_K; the latent is never fed back.

This file is self-contained (torch and diffusers only) so that a wadi export can ship it and a diffusers user can
load the student without wadi:

    pipe = DiffusionPipeline.from_pretrained(
        export_dir, custom_pipeline=f"{export_dir}/tiue_pipeline.py", trust_remote_code=True
    )
    image = pipe("a red circle").images[0]

or `from wadi.pipelines.tiue_pipeline import TiUEPipeline; TiUEPipeline.from_pretrained(export_dir)`.
wadi's training student (`wadi.distill.tiue.TiUEStudent`) runs the same `unet_encode` / `unet_decode`, so there is
one implementation of the split. It follows diffusers' `UNet2DConditionModel.forward` (0.42) step by step: the
decoder recomputes the whole time embedding (class and addition embeddings, `time_embed_act`: the official code
skips them, which is only equivalent for SD, where they do not exist), the attention-mask biases, and the
upsample sizes for latents that are not a multiple of the up-sampling factor. ControlNet / T2I-adapter residuals,
GLIGEN and `image_hint` are not supported (they are refused). Unlike the official code, the decoder's batch is
the batch given (K * len(z)), not the training batch size, so a short last batch works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class UNetFeatures:
    """What the encoder hands the decoder: the skips and mid features of batch B, and the per-sample inputs the
    decoder re-embeds (repeated K times there)."""

    skips: tuple[Tensor, ...]  # conv_in output and every down block's residuals, (B, C_i, H_i, W_i)
    mid: Tensor  # (B, C, h, w)
    encoder_hidden_states: Tensor  # as given (the addition embedding reads these), (B, L, D)
    hidden: Any  # after `process_encoder_hidden_states` (what cross-attention sees)
    attention_mask: Tensor | None  # as a bias, (B, 1, L)
    encoder_attention_mask: Tensor | None  # as a bias, (B, 1, L)
    forward_upsample_size: bool
    extras: dict[str, Any] = field(default_factory=dict)  # class_labels, timestep_cond, added_cond_kwargs


def _bias(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A (B, L) keep-mask as an additive bias (B, 1, L), as UNet2DConditionModel.forward does."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


def unet_embedding(
    unet,
    sample: Tensor,
    timestep: Tensor,
    encoder_hidden_states: Tensor,
    class_labels: Tensor | None = None,
    timestep_cond: Tensor | None = None,
    added_cond_kwargs: dict[str, Tensor] | None = None,
) -> Tensor:
    """The U-Net's embedding `emb` for timesteps (B,) (time + class + addition embeddings, then time_embed_act)."""
    if unet.config.addition_embed_type == "image_hint":
        raise ValueError("TiUE: addition_embed_type='image_hint' changes the encoder's input; not supported")
    t_emb = unet.get_time_embed(sample=sample, timestep=timestep)
    emb = unet.time_embedding(t_emb, timestep_cond)
    class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {}
    )
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb


def unet_encode(
    unet,
    sample: Tensor,
    timestep: Tensor | int,
    encoder_hidden_states: Tensor,
    encoder_attention_mask: Tensor | None = None,
    attention_mask: Tensor | None = None,
    class_labels: Tensor | None = None,
    timestep_cond: Tensor | None = None,
    added_cond_kwargs: dict[str, Tensor] | None = None,
) -> UNetFeatures:
    """The encoder: conv_in, the down blocks and the mid block at `timestep`, on `sample` (B, C, H, W)."""
    up_factor = 2**unet.num_upsamplers
    forward_upsample_size = any(d % up_factor != 0 for d in sample.shape[-2:])
    attn_bias = _bias(attention_mask, sample.dtype)
    enc_bias = _bias(encoder_attention_mask, sample.dtype)
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    if not torch.is_tensor(timestep):
        timestep = torch.tensor([timestep], dtype=torch.long, device=sample.device)
    emb = unet_embedding(
        unet, sample, timestep, encoder_hidden_states, class_labels, timestep_cond, added_cond_kwargs
    )
    hidden = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {}
    )
    sample = unet.conv_in(sample)
    skips: tuple[Tensor, ...] = (sample,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(
                hidden_states=sample,
                temb=emb,
                encoder_hidden_states=hidden,
                attention_mask=attn_bias,
                encoder_attention_mask=enc_bias,
            )
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        skips += res
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            sample = unet.mid_block(
                sample,
                emb,
                encoder_hidden_states=hidden,
                attention_mask=attn_bias,
                encoder_attention_mask=enc_bias,
            )
        else:
            sample = unet.mid_block(sample, emb)
    extras = {
        "class_labels": class_labels,
        "timestep_cond": timestep_cond,
        "added_cond_kwargs": added_cond_kwargs,
    }
    return UNetFeatures(
        skips, sample, encoder_hidden_states, hidden, attn_bias, enc_bias, forward_upsample_size, extras
    )


def _repeat(x: Any, k: int) -> Any:
    """(B, ...) -> (k*B, ...) step-major (row i*B + b is copy i of sample b); tuples and dicts elementwise."""
    if x is None or k == 1:
        return x
    if isinstance(x, tuple):
        return tuple(_repeat(v, k) for v in x)
    if isinstance(x, dict):
        return {key: _repeat(v, k) for key, v in x.items()}
    return x.repeat(k, *([1] * (x.ndim - 1)))


def unet_decode(unet, features: UNetFeatures, timesteps: Tensor) -> Tensor:
    """The decoder for K timesteps (K,) in ONE forward: eps (K*B, C, H, W), step-major."""
    k = timesteps.shape[0]
    batch = features.mid.shape[0]
    sample = _repeat(features.mid, k)  # (K*B, C, h, w)
    skips = _repeat(features.skips, k)
    extras = _repeat(features.extras, k)
    t = timesteps.to(sample.device).repeat_interleave(batch)  # (K*B,): t_1 x B, t_2 x B, ...
    emb = unet_embedding(
        unet,
        sample,
        t,
        _repeat(features.encoder_hidden_states, k),
        extras["class_labels"],
        extras["timestep_cond"],
        extras["added_cond_kwargs"],
    )
    hidden = _repeat(features.hidden, k)
    attn_bias = _repeat(features.attention_mask, k)
    enc_bias = _repeat(features.encoder_attention_mask, k)
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        res = skips[-len(block.resnets) :]
        skips = skips[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and features.forward_upsample_size:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                encoder_hidden_states=hidden,
                upsample_size=upsample_size,
                attention_mask=attn_bias,
                encoder_attention_mask=enc_bias,
            )
        else:
            sample = block(
                hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size
            )
    if unet.conv_norm_out:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def ddim_chain(
    z: Tensor, eps: Sequence[Tensor], abars: Sequence[float | Tensor], x0s: list[Tensor] | None = None
) -> Tensor:
    """z_0 of the deterministic DDIM (eta 0) chain from z at t_1 with eps_1..eps_K, abar_k = alphas_cumprod[t_k];
    the last step goes to the clean latent (abar = 1). float32. The same chain as wadi.diffusion.ddim_step.
    Each step's predicted x0 is appended to `x0s` when given (the last one is z_0)."""
    x = z.float()
    x0 = x
    for k, (e, abar) in enumerate(zip(eps, abars, strict=True)):
        a = torch.as_tensor(abar, dtype=torch.float32, device=x.device)
        x0 = (x - (1 - a).sqrt() * e.float()) / a.sqrt()
        if x0s is not None:
            x0s.append(x0)
        if k + 1 < len(abars):
            a_prev = torch.as_tensor(abars[k + 1], dtype=torch.float32, device=x.device)
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e.float()
    return x0


def leading_timesteps(num_train: int, k: int, steps_offset: int = 1) -> list[int]:
    """diffusers' DDIMScheduler.set_timesteps(k) with timestep_spacing "leading" (SD's scheduler config and the
    official code's): (arange(k) * (num_train // k))[::-1] + steps_offset; k = 4 over 1000: 751, 501, 251, 1."""
    ratio = num_train // k
    return [i * ratio + steps_offset for i in reversed(range(k))]


def _diffusion_pipeline():
    from diffusers import DiffusionPipeline

    return DiffusionPipeline


class TiUEPipeline(_diffusion_pipeline()):
    """Text-to-image with a TiUE student: one encoder pass, one K-step decoder pass, the DDIM chain, the VAE.

    `tiue_timesteps` (t_1 > ... > t_K) and `tiue_alphas_cumprod` (alphas_cumprod at them) are pipeline config
    (model_index.json of a wadi export); None: the scheduler's leading DDIM timesteps for `num_inference_steps`
    and its alphas_cumprod.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        vae,
        text_encoder,
        tokenizer,
        unet,
        scheduler,
        tiue_timesteps: list[int] | None = None,
        tiue_alphas_cumprod: list[float] | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.register_to_config(tiue_timesteps=tiue_timesteps, tiue_alphas_cumprod=tiue_alphas_cumprod)

    def schedule(self, num_inference_steps: int | None = None) -> tuple[list[int], list[float]]:
        """(timesteps, alphas_cumprod at them) the student was trained with."""
        ts, abars = self.config.tiue_timesteps, self.config.tiue_alphas_cumprod
        if ts is None or (num_inference_steps is not None and num_inference_steps != len(ts)):
            k = num_inference_steps or 4
            num_train = self.scheduler.config.num_train_timesteps
            ts = leading_timesteps(num_train, k, self.scheduler.config.get("steps_offset", 0))
            abars = None
        if abars is None:
            abars = [float(self.scheduler.alphas_cumprod[t]) for t in ts]
        return list(ts), list(abars)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    @torch.no_grad()
    def latents_from(
        self, z: Tensor, prompt_embeds: Tensor, num_inference_steps: int | None = None
    ) -> Tensor:
        """z_0 from noise z (B, C, h, w) and prompt embeddings (B, L, D)."""
        ts, abars = self.schedule(num_inference_steps)
        dtype = self.unet.dtype
        z = z.to(self.device, dtype)
        embeds = prompt_embeds.to(self.device, dtype)
        t = torch.tensor(ts, device=self.device, dtype=torch.long)
        features = unet_encode(self.unet, z, t[:1].expand(z.shape[0]), embeds)
        eps = unet_decode(self.unet, features, t).chunk(len(ts))  # K x (B, C, h, w)
        return ddim_chain(z, eps, abars)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        from diffusers import ImagePipelineOutput
        from diffusers.utils.torch_utils import randn_tensor

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        embeds = self.encode_prompt(prompts)
        size = self.unet.config.sample_size
        shape = (len(prompts), self.unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=self.device, dtype=torch.float32)
        x0 = self.latents_from(latents, embeds, num_inference_steps)
        if output_type == "latent":
            images = x0
        else:
            images = self.vae.decode(x0.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            images = (images / 2 + 0.5).clamp(0, 1)
            if output_type == "pt":
                pass
            else:
                images = images.float().cpu().permute(0, 2, 3, 1).numpy()
                if output_type == "pil":
                    images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
