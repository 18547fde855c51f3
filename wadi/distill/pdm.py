"""Patch distribution matching (PDM, SwD: Starodubcev et al. 2025, arXiv 2503.16397) as a loss term any method adds.

Real and generated latents are noised with the *same* noise and timestep; one inner block of a score network
(a U-Net's mid block, spatial positions as tokens; a DiT block for PixArt) gives token features (B, N, D) for
each; the loss matches the per-image token means with a pseudo-Huber distance:

    mu = mean over tokens,  L = mean(sqrt((mu_real - mu_fake)^2 + c^2) - c),  c = 1e-3

This is the official code's `mmd2_loss(kernel="linear")` (yandex-research/swd, src/utils/distillation_losses.py):
the features come from the *fake-score* network by default (`pdm_loss_fake`; `network: teacher` is the official
`--pdm_real` option), whose weights get no update from this loss (only the generator's optimizer steps on it),
the real sample is the teacher-sample latent area-downscaled to the generated sample's size, and t is drawn in a
low-noise window (the official indices 18..28 of 28 flow-matching steps, sigma <= ~0.63; here t ~ U{t_min..t_max}
of the DDPM schedule). Hand-written because no library has it; the math is `pdm_distance`, tested against the
formula. Differences from the official code: it takes its own optimizer step for PDM on a fresh student sample;
here PDM is one more term of the generator's loss on the same sample (one optimizer step per distillation step).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.backbones.conditioning import Conditioning
from wadi.config import ConfigError
from wadi.diffusion import add_noise

if TYPE_CHECKING:
    from wadi.distill.method import StepContext

NETWORKS = ("fake_score", "teacher")


# ------------------------------------------------------------------------------------------ the math
def as_tokens(hidden: Tensor) -> Tensor:
    """(B, C, H, W) feature maps -> (B, H*W, C) tokens (spatial positions as tokens); (B, N, D) stays."""
    if hidden.ndim == 4:
        return hidden.flatten(2).transpose(1, 2)
    if hidden.ndim == 3:
        return hidden
    raise ValueError(f"PDM features must be (B, C, H, W) or (B, N, D), got shape {tuple(hidden.shape)}")


def pdm_distance(real: Tensor, fake: Tensor, c: float = 1e-3) -> Tensor:
    """mean(sqrt((mu_real - mu_fake)^2 + c^2) - c) with mu the per-image token mean of (B, N, D) features.

    Zero when the means agree; ~|mu_real - mu_fake| for differences >> c (pseudo-Huber). float32 arithmetic.
    """
    if real.shape[0] != fake.shape[0] or real.shape[-1] != fake.shape[-1]:
        raise ValueError(f"PDM features differ in batch or width: {tuple(real.shape)} vs {tuple(fake.shape)}")
    mu_real = as_tokens(real).float().mean(dim=1)
    mu_fake = as_tokens(fake).float().mean(dim=1)
    return (((mu_real - mu_fake) ** 2 + c * c).sqrt() - c).mean()


# ------------------------------------------------------------------------------------------ the features
def default_block(model: nn.Module) -> str:
    """The block PDM reads by default: a U-Net's mid block, else the middle block of a DiT's transformer_blocks."""
    if getattr(model, "mid_block", None) is not None:
        return "mid_block"
    blocks = getattr(model, "transformer_blocks", None)
    if blocks is not None and len(blocks) > 0:
        return f"transformer_blocks.{len(blocks) // 2}"
    raise ValueError(f"{type(model).__name__} has neither a mid_block nor transformer_blocks: set pdm_block")


def resolve_block(model: nn.Module, block: str | None, key: str = "pdm_block") -> nn.Module:
    """The submodule `block` names (a dotted path, e.g. `up_blocks.1` or `transformer_blocks.14`; None/"auto":
    `default_block`), with an error naming it and the model's top-level children when it is absent."""
    name = default_block(model) if block in (None, "auto") else str(block)
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = ", ".join(n for n, _ in model.named_children())
        raise ConfigError(
            f"{key}={block!r}: {type(model).__name__} has no submodule {name!r} (a dotted path from the denoiser, "
            f"e.g. mid_block, up_blocks.1, transformer_blocks.2; its children: {children})"
        ) from None


@contextmanager
def capture(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect `module`'s output (the first element of a tuple output) on each forward while inside."""
    outputs: list[Tensor] = []

    def hook(_module, _inputs, output):
        outputs.append(output[0] if isinstance(output, tuple | list) else output)

    handle = module.register_forward_hook(hook)
    try:
        yield outputs
    finally:
        handle.remove()


def block_features(
    denoiser, block: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, adapter: str | None
) -> Tensor:
    """Token features (B, N, D) of `block` for one denoiser pass (the rest of the pass runs and is discarded)."""
    with capture(block) as outputs:
        denoiser(x_t, t, cond, adapter)
    if not outputs:
        raise RuntimeError(f"the PDM block {type(block).__name__} did not run in the denoiser's forward")
    return as_tokens(outputs[-1])


def real_at(latents: Tensor, size: tuple[int, int]) -> Tensor:
    """Real latents at the generated sample's spatial size: area downscaling, as the official code's real side."""
    if tuple(latents.shape[-2:]) == tuple(size):
        return latents
    return F.interpolate(latents, size=size, mode="area")


# ------------------------------------------------------------------------------------------ the loss term
class PDMLoss:
    """PDM as a generator loss term (`method.losses.pdm`). Needs the batch's real latents (`batch["latents"]`,
    a teacher-sample dataset: `python -m wadi.teacher_samples`). Weight 0 disables the term (it is dropped)."""

    uses_batch = True  # the module passes batch= and step= (wadi.distill.method)

    def __init__(
        self,
        weight: float = 1.0,
        c: float = 1e-3,
        block: str | None = "auto",
        network: str = "fake_score",
        t_min: int = 20,
        t_max: int = 500,
    ) -> None:
        for key, value in (("weight", weight), ("c", c)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigError(f"pdm.{key}={value!r}: expected a finite number")
        if c < 0:
            raise ConfigError(f"pdm.c={c!r}: expected a number >= 0 (the pseudo-Huber constant)")
        if network not in NETWORKS:
            raise ConfigError(f"pdm.network={network!r}: expected one of {list(NETWORKS)}")
        for key, value in (("t_min", t_min), ("t_max", t_max)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"pdm.{key}={value!r}: expected an integer >= 0")
        if t_min > t_max:
            raise ConfigError(f"pdm.t_min={t_min}: expected <= pdm.t_max={t_max}")
        if block is not None and not isinstance(block, str):
            raise ConfigError(f"pdm_block={block!r}: expected a dotted module path or auto")
        self.weight = float(weight)
        self.c = float(c)
        self.block = block
        self.network = network
        self.t_min, self.t_max = t_min, t_max
        self._module: nn.Module | None = None

    @property
    def enabled(self) -> bool:
        return self.weight != 0

    def _block(self, denoiser) -> nn.Module:
        if self._module is None:
            self._module = resolve_block(denoiser.model, self.block)
        return self._module

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
        """Same noise and t for the real latents (no gradient) and the generator's x0 (gradient through x0)."""
        if batch is None or "latents" not in batch:
            raise ValueError(
                "the PDM loss needs real latents in the batch (`latents`): train on a teacher-sample dataset "
                "(python -m wadi.teacher_samples ... out=DIR, then dataset=teacher_samples dataset.path=DIR)"
            )
        real = real_at(batch["latents"].to(ctx.device, torch.float32), tuple(x0.shape[-2:]))
        if real.shape[0] != x0.shape[0] or real.shape[1] != x0.shape[1]:
            raise ValueError(
                f"PDM: real latents {tuple(real.shape)} do not match the samples {tuple(x0.shape)}"
            )
        ac = ctx.alphas_cumprod
        t = torch.randint(self.t_min, self.t_max + 1, (x0.shape[0],), generator=rng, device=ctx.device)
        eps = ctx.randn(tuple(x0.shape), rng)
        dtype = ctx.embed_dtype()
        adapter = ctx.fake_score_adapter if self.network == "fake_score" else None
        block = self._block(ctx.denoiser)
        with torch.no_grad():
            feats_real = block_features(
                ctx.denoiser, block, add_noise(real, eps, ac, t).to(dtype), t, cond, adapter
            )
        feats_fake = block_features(
            ctx.denoiser, block, add_noise(x0, eps, ac, t).to(dtype), t, cond, adapter
        )
        return {"loss": pdm_distance(feats_real, feats_fake, self.c)}

    def __repr__(self) -> str:
        return (
            f"PDMLoss(weight={self.weight}, c={self.c}, block={self.block!r}, network={self.network!r}, "
            f"t=[{self.t_min}, {self.t_max}])"
        )
