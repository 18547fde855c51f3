"""SwD's optional GAN head (Starodubcev et al. 2025, arXiv 2503.16397; `swd.gan_weight`, official 5e-3).

A small classifier (the critic) reads the fake-score network's hidden states at one inner block (the PDM block,
`swd.pdm_block`: a U-Net's mid block with spatial positions as tokens, a DiT block for PixArt), averaged over
tokens per image, and outputs one logit per image. Non-saturating GAN losses (softplus):

    critic:    L_D = mean softplus(l_fake) + mean softplus(-l_real)   (= -log(1 - s(l_fake)) - log s(l_real))
    generator: L_G = mean softplus(-l_fake)                            (= -log s(l_fake))

Taken from the official code (yandex-research/swd):
- `src/models/transformer_with_gan.py` and `src/transformer_with_discriminator.py` (`TransformerCls`): the head
  `cls_pred_branch` is `num_discriminator_layers` (default 4) blocks LayerNorm -> GELU -> Linear with widths
  `torch.linspace(inner_dim, 1, layers + 1, dtype=int)`; it lives inside the fake-score model, so its parameters
  are in the fake score's optimizer (`prepare_optimizer(..., is_student=False)`: lr `learning_rate_cls`, 1e-4 by
  default in main.py, 5e-6 in train_sd35_medium.sh, the same clip `max_grad_norm` as the fake score's LoRA).
- `src/utils/distillation_losses.py` / `src/distillation_losses.py` (`gan_loss_fn`): the head sees
  `x.float().mean(dim=1)` (the token mean) of each collected block, logits averaged over blocks; the losses above.
- `fake_diffusion_loss` (run `n_steps_fake_dmd` = 5 times per generator step: the "several critic updates"): the
  generated sample (no gradient to the generator) and the real latent are noised with the *same* noise at the same
  t, t uniform over all timesteps; the critic loss (weight `disc_cls_loss_weight` 1e-2) is added to the fake
  score's denoising loss, and its gradient also reaches the fake score's LoRA (features are not detached).
- `generator_loss` / `dmd_loss`: L_G (weight `gen_cls_loss_weight` 5e-3) on the fake score's features of the
  sample DMD noised (t in DMD's window, at or below the scale's boundary), the fake score frozen for it.
- `train_sd35_medium.sh`: `--cls_blocks 11 --mmd_blocks 11`: the GAN and PDM (MMD) read the same block.

Where wadi differs (on purpose): one block (the PDM block), not a list; the critic term has its own denoiser pass
on the detached sample (the official reuses the features of the fake score's denoising pass), and the generator
term its own draw of t and noise from DMD's window (the official reuses DMD's noised sample), so each term stays
a separate entry of `method.losses`; the real side is the teacher-sample latent area-downscaled to the sample's
size (as PDM's); the head's parameters form their own parameter group of the fake score's optimizer with lr
`swd.gan_lr` (default 1e-4, the official main.py default; null: the fake score's lr, which in wadi is LoRaD's 1e-2)
and wadi's AdamW settings (weight decay 0; the official 1e-2). With `vsd.fake_steps` > 1 the critic trains in every
fake-score step, as the official. Hand-written because no library ships this head; the math is `critic_loss` /
`generator_gan_loss` / `head_widths`, tested against the formulas in tests/distill/test_gan.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.backbones.conditioning import Conditioning
from wadi.config import ConfigError
from wadi.diffusion import add_noise
from wadi.distill.pdm import as_tokens, block_features, default_block, real_at, resolve_block

if TYPE_CHECKING:
    from wadi.distill.method import StepContext


# ------------------------------------------------------------------------------------------ the math
def critic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The critic's non-saturating loss: mean softplus(l_fake) + mean softplus(-l_real) (float32)."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def generator_gan_loss(fake_logits: Tensor) -> Tensor:
    """The generator's non-saturating loss: mean softplus(-l_fake) (float32)."""
    return F.softplus(-fake_logits.float()).mean()


def head_widths(width: int, layers: int) -> list[int]:
    """The head's layer widths from the feature width down to 1 logit: the official
    `torch.linspace(inner_dim, 1, layers + 1, dtype=int)`."""
    return [int(w) for w in torch.linspace(width, 1, layers + 1, dtype=torch.int64)]


class FeatureClassifier(nn.Module):
    """The critic on block features: token mean per image, then `layers` x (LayerNorm, GELU, Linear) down to one
    logit (the official `cls_pred_branch`). (B, N, D) or (B, C, H, W) features -> (B,) logits, float32."""

    def __init__(self, width: int, layers: int = 4, block: str = "?") -> None:
        super().__init__()
        self.width, self.block = int(width), block
        widths = head_widths(self.width, layers)
        self.layers = nn.Sequential(
            *(nn.Sequential(nn.LayerNorm(a), nn.GELU(), nn.Linear(a, b)) for a, b in zip(widths, widths[1:]))
        )

    def forward(self, features: Tensor) -> Tensor:
        tokens = as_tokens(features)
        if tokens.shape[-1] != self.width:
            raise ValueError(
                f"the GAN head was built for {self.width} features at block {self.block!r}, but the block gives "
                f"{tokens.shape[-1]} (shape {tuple(features.shape)}): set swd.pdm_block to a block whose width "
                "wadi reads from the model's config (mid_block, down_blocks.i, up_blocks.i, transformer_blocks.i)"
            )
        return self.layers(tokens.float().mean(dim=1)).squeeze(-1)


def feature_width(model: nn.Module, name: str, block: nn.Module) -> int:
    """The channel / token width of `block`'s output: from the model's config for a U-Net's mid_block,
    down_blocks.i, up_blocks.i and a DiT's transformer_blocks.i; else the last Linear / Conv2d's output width
    inside the block (checked at the first forward)."""
    config = getattr(model, "config", None)
    get = (
        (lambda k: config.get(k) if isinstance(config, Mapping) else getattr(config, k, None))
        if config
        else None
    )
    parts = name.split(".")
    if get is not None:
        channels = get("block_out_channels")
        if channels and name == "mid_block":
            return int(channels[-1])
        if channels and len(parts) == 2 and parts[1].isdigit() and parts[0] in ("down_blocks", "up_blocks"):
            order = list(channels) if parts[0] == "down_blocks" else list(reversed(channels))
            return int(order[int(parts[1])])
        heads, head_dim = get("num_attention_heads"), get("attention_head_dim")
        if len(parts) == 2 and parts[0] == "transformer_blocks" and heads and head_dim:
            if isinstance(heads, int) and isinstance(head_dim, int):
                return heads * head_dim
    width = None
    for module in block.modules():
        if isinstance(module, nn.Linear):
            width = module.out_features
        elif isinstance(module, nn.Conv2d):
            width = module.out_channels
    if width is None:
        raise ConfigError(
            f"swd.pdm_block={name!r}: no Linear or Conv2d inside to read the GAN head's input width"
        )
    return int(width)


# ------------------------------------------------------------------------------------------ the loss term
def _number(key: str, value: Any, low: float, strict: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if bad or value < low or (strict and value == low):
        raise ConfigError(f"{key}={value!r}: expected a finite number {'>' if strict else '>='} {low}")
    return float(value)


def _int(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r}: expected an integer >= {low}")
    return value


class GANLoss:
    """SwD's GAN head as a loss term (`method.losses.gan`): the generator's L_G (weight `weight`) and the critic's
    L_D trained with the fake score (weight `critic_weight`, in every fake-score step). Weight 0: the term is
    dropped and no head is built (the method is then exactly the one without it).

    `block`: the fake score's block read (the PDM block); `layers`: the head's LayerNorm-GELU-Linear blocks;
    `lr`: the head's learning rate (None: the fake score's); `t_min..t_max`: the generator side's t (DMD's window;
    `cap`: at most the trained scale's t_k, as SwD's DMD); `critic_t_min..critic_t_max`: the critic's t (None: the
    last timestep; the official: all timesteps)."""

    uses_batch = True  # generator side: the global step (the trained scale's t_k cap)
    fake_score_uses_batch = True  # critic side: the batch's real latents

    def __init__(
        self,
        weight: float = 0.0,
        critic_weight: float = 1e-2,
        layers: int = 4,
        lr: float | None = 1e-4,
        block: str | None = "auto",
        t_min: int = 20,
        t_max: int = 980,
        cap: bool = True,
        critic_t_min: int = 0,
        critic_t_max: int | None = None,
    ) -> None:
        self.weight = _number("swd.gan_weight", weight, 0.0)
        self.fake_score_weight = _number("swd.gan_critic_weight", critic_weight, 0.0, strict=True)
        self.layers = _int("swd.gan_layers", layers, 1)
        self.lr = None if lr is None else _number("swd.gan_lr", lr, 0.0, strict=True)
        if block is not None and not isinstance(block, str):
            raise ConfigError(f"swd.pdm_block={block!r}: expected a dotted module path or auto")
        self.t_min, self.t_max = (
            _int("method.losses.gan.t_min", t_min, 0),
            _int("method.losses.gan.t_max", t_max, 0),
        )
        self.critic_t_min = _int("method.losses.gan.critic_t_min", critic_t_min, 0)
        self.critic_t_max = (
            None if critic_t_max is None else _int("method.losses.gan.critic_t_max", critic_t_max, 0)
        )
        if self.t_min > self.t_max:
            raise ConfigError(f"method.losses.gan.t_min={t_min}: expected <= method.losses.gan.t_max={t_max}")
        if self.critic_t_max is not None and self.critic_t_min > self.critic_t_max:
            raise ConfigError(
                f"method.losses.gan.critic_t_min={critic_t_min}: expected <= critic_t_max={critic_t_max}"
            )
        if not isinstance(cap, bool):
            raise ConfigError(f"swd.dmd_t_cap={cap!r}: expected true or false")
        self.block, self.cap = block, cap
        self.network: FeatureClassifier | None = None
        self._module: nn.Module | None = None

    @property
    def enabled(self) -> bool:
        return self.weight != 0

    # the module's seam for a term's own trainable network (wadi.distill.method.Method.build_networks)
    def build_network(self, model: nn.Module) -> FeatureClassifier:
        """The head for `model`'s block (float32, trainable); built once, kept by the term and the module."""
        name = default_block(model) if self.block in (None, "auto") else str(self.block)
        self._module = resolve_block(model, self.block)
        self.network = FeatureClassifier(feature_width(model, name, self._module), self.layers, name)
        return self.network

    def _logits(self, ctx: StepContext, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        if self.network is None or self._module is None:
            raise RuntimeError("the GAN head is not built: the module calls build_network(model) first")
        feats = block_features(ctx.denoiser, self._module, x_t, t, cond, ctx.fake_score_adapter)
        return self.network(feats)

    def _t_max(self, ctx: StepContext, step: int | None) -> int:
        from wadi.distill.swd import ScaleWiseStudent

        student = getattr(ctx, "student", None)
        if self.cap and isinstance(student, ScaleWiseStudent):
            return min(
                self.t_max, student.resolved_timesteps(ctx.alphas_cumprod)[student.scale_of_step(step or 0)]
            )
        return self.t_max

    def generator_loss(
        self,
        ctx: StepContext,
        x0: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        rng: torch.Generator,
        *,
        batch: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> dict[str, Tensor]:
        """L_G on the fake score's features of x0 noised at t in DMD's window (gradient to x0 only is stepped)."""
        high = self._t_max(ctx, step)
        t = torch.randint(min(self.t_min, high), high + 1, (x0.shape[0],), generator=rng, device=ctx.device)
        eps = ctx.randn(tuple(x0.shape), rng)
        logits = self._logits(ctx, add_noise(x0, eps, ctx.alphas_cumprod, t).to(ctx.embed_dtype()), t, cond)
        return {"loss": generator_gan_loss(logits)}

    def fake_score_loss(
        self,
        ctx: StepContext,
        x0: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        rng: torch.Generator,
        *,
        batch: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> dict[str, Tensor]:
        """L_D: real latents (at x0's size) and the detached x0, same noise and t; the head and the fake score's
        adapter get its gradient."""
        if batch is None or "latents" not in batch:
            raise ValueError(
                "the GAN head's critic needs real latents in the batch (`latents`): train on a teacher-sample "
                "dataset (python -m wadi.teacher_samples ... out=DIR; swd.samples=DIR)"
            )
        x0 = x0.detach()
        real = real_at(batch["latents"].to(ctx.device, torch.float32), tuple(x0.shape[-2:]))
        if real.shape[0] != x0.shape[0] or real.shape[1] != x0.shape[1]:
            raise ValueError(
                f"GAN head: real latents {tuple(real.shape)} do not match the samples {tuple(x0.shape)}"
            )
        ac = ctx.alphas_cumprod
        high = ac.shape[0] - 1 if self.critic_t_max is None else min(self.critic_t_max, ac.shape[0] - 1)
        t = torch.randint(
            min(self.critic_t_min, high), high + 1, (x0.shape[0],), generator=rng, device=ctx.device
        )
        eps = ctx.randn(tuple(x0.shape), rng)
        dtype = ctx.embed_dtype()
        real_logits = self._logits(ctx, add_noise(real, eps, ac, t).to(dtype), t, cond)
        fake_logits = self._logits(ctx, add_noise(x0, eps, ac, t).to(dtype), t, cond)
        return {
            "loss": critic_loss(real_logits, fake_logits),
            "gan_real_logit": real_logits.detach().mean(),
            "gan_fake_logit": fake_logits.detach().mean(),
        }

    def __repr__(self) -> str:
        return (
            f"GANLoss(weight={self.weight}, critic_weight={self.fake_score_weight}, layers={self.layers}, "
            f"lr={self.lr}, block={self.block!r}, t=[{self.t_min}, {self.t_max}], cap={self.cap}, "
            f"critic_t=[{self.critic_t_min}, {self.critic_t_max}])"
        )
