"""VSD's design space as one typed config (`vsd:` in conf/config.yaml), validated once.

Each field is a choice the public scripts, DMD or DMD2 make differently; the math behind each lives in
`wadi.distill.losses` and is unit-tested there. `experiments/quality/RESULTS.md` measures them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.config import ConfigError, check_keys
from wadi.distill.guards import nonfinite_count
from wadi.distill.losses import add_noise, dmd_gradient, fake_score_loss, generator_loss, vsd_gradient

if TYPE_CHECKING:
    from wadi.distill.method import StepContext

GRADIENTS = {
    "vsd": "spec 3.4: g = sigma_t^2 (eps_real - eps_fake)",
    "dmd": "DMD: (x0_fake - x0_real) / mean|x0 - x0_real| per sample",
}
CAPTION_DROP = ("sample", "batch")


@dataclass(frozen=True)
class VSDConfig:
    """The generator's and the fake score's VSD recipe (spec section 3)."""

    guidance_scale: float = 1.5  # CFG of the real score (the frozen teacher)
    fake_guidance_scale: float | None = None  # CFG of the fake score; None: the teacher's (public scripts)
    t_min: int = 20  # generator step: t ~ U{t_min..t_max}
    t_max: int = 980
    fake_t_min: int = 0  # fake-score step: t ~ U{fake_t_min..fake_t_max}
    fake_t_max: int | None = None  # None: num_train_timesteps - 1
    fake_steps: int = 1  # fake-score updates per generator step (DMD2's two time-scale rule uses 5)
    gradient: str = "vsd"  # one of GRADIENTS
    uncond_prob: float = 0.1  # fake step: share of null prompts
    caption_drop: str = "sample"  # "sample": each prompt dropped on its own; "batch": the whole batch at once
    # not read by VSD: the weight of the method's PDM term (conf/method/wadi.yaml); 0: off
    pdm_weight: float = 0.0

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | VSDConfig | None) -> VSDConfig:
        if cfg is None:
            return cls()
        if isinstance(cfg, VSDConfig):
            return cfg
        check_keys(cfg, {f.name for f in fields(cls)}, "vsd")
        return cls(**dict(cfg))

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"vsd.{key}={getattr(self, key)!r}: expected {expected}")

        for key in ("guidance_scale", "fake_guidance_scale"):
            v = getattr(self, key)
            if v is None and key == "fake_guidance_scale":
                continue
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise bad(key, "a finite number >= 0")
        for key in ("t_min", "t_max", "fake_t_min", "fake_t_max", "fake_steps"):
            v = getattr(self, key)
            if v is None and key == "fake_t_max":
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(key, "an integer >= 0")
        if self.t_min > self.t_max:
            raise bad("t_min", f"<= vsd.t_max={self.t_max}")
        if self.fake_t_max is not None and self.fake_t_min > self.fake_t_max:
            raise bad("fake_t_min", f"<= vsd.fake_t_max={self.fake_t_max}")
        if self.fake_steps < 1:
            raise bad("fake_steps", "an integer >= 1")
        if self.gradient not in GRADIENTS:
            raise bad("gradient", f"one of {sorted(GRADIENTS)}")
        if self.caption_drop not in CAPTION_DROP:
            raise bad("caption_drop", f"one of {list(CAPTION_DROP)}")
        v = self.pdm_weight
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise bad("pdm_weight", "a finite number (0: no PDM term)")
        if not (isinstance(self.uncond_prob, int | float) and 0.0 <= self.uncond_prob <= 1.0):
            raise bad("uncond_prob", "a probability in [0, 1]")

    @property
    def fake_scale(self) -> float:
        return self.guidance_scale if self.fake_guidance_scale is None else self.fake_guidance_scale

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def gradient_fn(self):
        """(x0, x_t, eps_real, eps_fake, alphas_cumprod, t) -> g, the generator's regression offset."""
        if self.gradient == "dmd":
            return dmd_gradient
        return lambda x0, x_t, er, ef, ac, t: vsd_gradient(er, ef, ac, t)


class VSDLoss:
    """The VSD loss term of a method: the generator's loss from the real and fake scores (spec 3.4-3.5) and the
    fake score's denoising loss on the generator's samples (spec 3). `config` is the `vsd:` node."""

    def __init__(self, config: Mapping[str, Any] | VSDConfig | None = None, weight: float = 1.0) -> None:
        self.config = VSDConfig.from_mapping(config)
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ConfigError(f"method.losses.vsd.weight={weight!r}: expected a finite number")
        self.weight = weight
        self._gradient = self.config.gradient_fn()

    @property
    def fake_steps(self) -> int:
        return self.config.fake_steps

    def generator_loss(
        self,
        ctx: StepContext,
        x0: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        rng: torch.Generator,
        t_max: int | None = None,
    ) -> dict[str, Tensor]:
        """Spec 3, generator: g from the real and fake scores (vsd.gradient); loss with gradient g/numel.
        `t_max` caps vsd.t_max (SwD: the current scale's timestep); None: vsd.t_max."""
        vsd = self.config
        ac = ctx.alphas_cumprod
        high = vsd.t_max if t_max is None else min(vsd.t_max, int(t_max))
        t = torch.randint(min(vsd.t_min, high), high + 1, (x0.shape[0],), generator=rng, device=ctx.device)
        eps = ctx.randn(tuple(x0.shape), rng)
        x_t = add_noise(x0.detach(), eps, ac, t).to(ctx.embed_dtype())
        with torch.no_grad():
            eps_real = ctx.denoiser.cfg(x_t, t, cond, uncond, vsd.guidance_scale, None)
            eps_fake = ctx.denoiser.cfg(x_t, t, cond, uncond, vsd.fake_scale, ctx.fake_score_adapter)
        g = self._gradient(x0, x_t, eps_real, eps_fake, ac, t)
        return {
            "loss": generator_loss(x0, g),
            "g_norm": g.norm() / g.numel() ** 0.5,
            "g_nonfinite": nonfinite_count(g),
        }

    def fake_score_loss(
        self, ctx: StepContext, x0: Tensor, cond: Conditioning, uncond: Conditioning, rng: torch.Generator
    ) -> dict[str, Tensor]:
        """Spec 3, fake score: denoising loss on the detached generator sample, a share of null prompts."""
        vsd = self.config
        batch = x0.shape[0]
        ac = ctx.alphas_cumprod
        t_max = ac.shape[0] - 1 if vsd.fake_t_max is None else vsd.fake_t_max
        t = torch.randint(vsd.fake_t_min, t_max + 1, (batch,), generator=rng, device=ctx.device)
        eps = ctx.randn(tuple(x0.shape), rng)
        x_t = add_noise(x0.detach(), eps, ac, t).to(ctx.embed_dtype())
        draws = batch if vsd.caption_drop == "sample" else 1
        drop = (torch.rand(draws, generator=rng, device=ctx.device) < vsd.uncond_prob).expand(batch)
        eps_hat = ctx.denoiser(x_t, t, cond.where(drop, uncond.expand(batch)), ctx.fake_score_adapter)
        return {"loss": fake_score_loss(eps_hat, eps, ac, t)}

    def __repr__(self) -> str:
        return f"VSDLoss({self.config})"
