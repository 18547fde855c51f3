"""TiUE, the loop-free student ("One-Way Ticket", Li et al., CVPR 2025; github.com/sen-mao/Loopfree): `method=tiue`.

The student is the teacher's U-Net with its generator adapter, split in two (`wadi.pipelines.tiue_pipeline`):
the encoder (conv_in, down blocks, mid block) runs once on z ~ N(0, I) at t_1; the decoder (up blocks, output
convolution) runs for t_1 > ... > t_K in ONE forward on batch K*B, only the time embedding changing; z_0 is the
DDIM (eta 0) chain from z with eps_1..eps_K. The generator is trained by WaDi's VSD on z_0 plus a KL term that
pulls each predicted noise map towards N(0, 1) (`KLLoss`).

Checked against the official code (train_loopfree.py, utils/se_parallel_utils.py):
- timesteps: `DDIMScheduler.set_timesteps(4)` on SD's scheduler config (leading spacing, steps_offset 1) gives
  751, 501, 251, 1 (`leading_timesteps`; a test compares with diffusers);
- the decoder batch is step-major (`timesteps[:, None].repeat(1, bs).flatten()`); the official code uses the
  training batch size there and breaks on a short batch: here the batch is the one given;
- the chain: the official code steps SD's DDIMScheduler, whose last step ends at alphas_cumprod[0] = 0.99915
  (`set_alpha_to_one=False`): z_0 = 0.99957 x0_K + 0.029 eps_K. Here the last step goes to the clean latent (as
  wadi's DDIM sampler and a DDIMScheduler with set_alpha_to_one=True), so K = 1 is exactly a one-step student;
- KL: per predicted noise map n (each of the K*B maps, over C x H x W), m = mean, s^2 = unbiased variance
  (torch.std ** 2), KL_n = -0.5 (1 + log s^2 - m^2 - s^2), summed and weighted 0.1 (`lambda_kl`).
PixArt has no encoder / decoder split with skip features, so `method=tiue` refuses a pixart backbone
(`TiUEStudent.check_backbone`, called by wadi.config.validate_train_config before anything loads).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.config import ConfigError
from wadi.pipelines.tiue_pipeline import ddim_chain, leading_timesteps, unet_decode, unet_encode

if TYPE_CHECKING:
    from wadi.backbones.denoiser import Denoiser
    from wadi.distill.method import StepContext

REDUCTIONS = ("sum", "mean")


def kl_to_standard_normal(maps: Tensor, reduction: str = "sum") -> Tensor:
    """TiUE's KL term: per map n (N, ...) -> m, s^2 over the map (unbiased, as torch.std), KL_n = -0.5 (1 + log s^2
    - m^2 - s^2), the KL of N(m, s^2) from N(0, 1); summed (the paper's) or averaged over the N maps. float32."""
    flat = maps.float().flatten(1)  # (N, C*H*W)
    m = flat.mean(dim=1)
    s2 = flat.var(dim=1)
    kl = -0.5 * (1 + s2.log() - m.square() - s2)
    return kl.sum() if reduction == "sum" else kl.mean()


def _int(key: str, value: Any, low: int, high: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"tiue.{key}={value!r}: expected an integer {rng}")
    return value


class TiUEStudent:
    """The loop-free student: encoder once, decoder K times in one batched pass, the DDIM chain (module doc).

    k: the number of decoder steps K. timesteps: t_1 > ... > t_K (None: diffusers' leading DDIM timesteps for K
    steps with `steps_offset`, the backbone scheduler's: 1 for SD1.5, SD2.1 and toy-sd). parallel: one decoder
    forward on K*B (True) or K sequential ones (False: the test oracle, same numbers).
    """

    def __init__(
        self, k: int = 4, timesteps: list[int] | None = None, steps_offset: int = 1, parallel: bool = True
    ) -> None:
        self.k = _int("k", k, 1)
        self.steps_offset = _int("steps_offset", steps_offset, 0)
        if timesteps is not None:
            timesteps = list(timesteps)
            for t in timesteps:
                _int("timesteps", t, 0)
            if len(timesteps) != self.k or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
                raise ConfigError(
                    f"tiue.timesteps={timesteps!r}: expected {self.k} (tiue.k) strictly decreasing integer "
                    "timesteps t_1 > ... > t_K, or null for DDIM's"
                )
        self.timesteps = timesteps
        self.parallel = bool(parallel)
        self._noise_maps: Tensor | None = None

    # ----------------------------------------------------------------- configuration
    def check_backbone(self, kind: str) -> None:
        """Refuse a backbone without a U-Net encoder / decoder (PixArt: a stack of DiT blocks, no skip features)."""
        if kind != "unet":
            raise ConfigError(
                f"method=tiue needs a U-Net backbone (kind 'unet': SD1.5, SD2.1, toy), got backbone kind {kind!r}: "
                "TiUE shares a U-Net's encoder (conv_in, down blocks, mid block) across timesteps and reruns only "
                "its decoder on the stored skip features; a DiT has no such split (no skips, one residual stream), "
                "and no form of it has been defined or measured. Use method=wadi for PixArt."
            )

    def check_trainer(self, strategy: Any) -> None:
        """Refuse FSDP: it gathers the root's frozen weights (conv_in, time embedding, conv_out) in the U-Net's own
        forward, which the encoder / decoder split does not call."""
        target = strategy.get("_target_", "") if isinstance(strategy, dict) else str(strategy or "")
        if "FSDP" in target:
            raise ConfigError(
                f"method=tiue cannot train under trainer=fsdp (strategy {target}): FSDP gathers the U-Net's root "
                "weights in its forward, and TiUE calls the encoder and decoder parts directly; use trainer=ddp"
            )

    def timesteps_for(self, num_train: int) -> list[int]:
        """t_1 > ... > t_K for a schedule of `num_train` steps."""
        ts = self.timesteps or leading_timesteps(num_train, self.k, self.steps_offset)
        if ts[0] >= num_train:
            raise ConfigError(f"tiue.timesteps={ts!r}: above the schedule's last timestep {num_train - 1}")
        return ts

    def noise_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(latent_shape)

    # ----------------------------------------------------------------- generation
    def noise_maps(
        self,
        denoiser: Denoiser,
        z: Tensor,
        cond: Conditioning,
        alphas_cumprod: Tensor,
        adapter: str | None = "generator",
    ) -> Tensor:
        """eps (K, B, C, H, W): the encoder once at t_1, the decoder at t_1..t_K (one forward or K)."""
        unet = denoiser.model
        if not hasattr(unet, "up_blocks"):
            self.check_backbone(type(denoiser).__name__)
        ts = self.timesteps_for(alphas_cumprod.shape[0])
        t = torch.tensor(ts, device=z.device, dtype=torch.long)
        batch = z.shape[0]
        with denoiser.bound(adapter, z.device.type) as dtype:
            x = z if dtype is None else z.to(dtype)
            embeds = cond.embeds if dtype is None else cond.embeds.to(dtype)
            # The mask as UNetDenoiser passes it: SD's U-Net takes none.
            features = unet_encode(unet, x, t[:1].expand(batch), embeds)
            if self.parallel:
                eps = unet_decode(unet, features, t)  # (K*B, C, H, W), step-major
            else:
                eps = torch.cat([unet_decode(unet, features, t[i : i + 1]) for i in range(len(ts))])
        return eps.unflatten(0, (len(ts), batch))

    def generate(
        self,
        denoiser: Denoiser,
        z: Tensor,
        cond: Conditioning,
        alphas_cumprod: Tensor,
        adapter: str | None = "generator",
        alpha_T: float | None = None,
        *,
        batch: Any = None,
        step: int | None = None,
        trajectory: list[Tensor] | None = None,
    ) -> Tensor:
        """x0 = z_0 of the DDIM chain (float32). `alpha_T` (the one-step student's override at T) is not used: the
        chain reads alphas_cumprod at its own timesteps. The noise maps are kept for the KL term
        (`take_noise_maps`) when gradients are on. `trajectory`: each step's predicted x0 is appended. `batch` and
        `step` (what a module may pass a student) are not used."""
        eps = self.noise_maps(denoiser, z, cond, alphas_cumprod, adapter)
        ts = self.timesteps_for(alphas_cumprod.shape[0])
        if torch.is_grad_enabled():
            self._noise_maps = eps.flatten(0, 1)  # (K*B, C, H, W)
        return ddim_chain(z, eps.unbind(0), [alphas_cumprod[t] for t in ts], trajectory)

    def take_noise_maps(self) -> Tensor:
        """The K*B noise maps of the last generation with gradients (once: they are released)."""
        maps, self._noise_maps = self._noise_maps, None
        if maps is None:
            raise RuntimeError(
                "no noise maps: TiUEStudent.generate was not run with gradients before the KL term"
            )
        return maps

    # ----------------------------------------------------------------- export (wadi.export, wadi.generation)
    def export_info(self, alphas_cumprod: Tensor) -> dict[str, Any]:
        """What an export records to rebuild this student (`from_export_info`): method, k, resolved timesteps."""
        return {
            "method": "tiue",
            "kind": "tiue",  # the key other few-step students' export entries dispatch on
            "k": self.k,
            "timesteps": self.timesteps_for(alphas_cumprod.shape[0]),
        }

    @classmethod
    def from_export_info(cls, info: dict[str, Any]) -> TiUEStudent:
        return cls(k=int(info["k"]), timesteps=[int(t) for t in info["timesteps"]])

    def pipeline_files(self) -> dict[str, Path]:
        """Files an export ships so that diffusers runs the student (`custom_pipeline=<export>/tiue_pipeline.py`)."""
        from wadi.pipelines import tiue_pipeline

        return {"tiue_pipeline.py": Path(tiue_pipeline.__file__)}

    def pipeline_config(self, alphas_cumprod: Tensor) -> dict[str, Any]:
        """The TiUEPipeline's config entries (model_index.json): its timesteps and alphas_cumprod at them."""
        ts = self.timesteps_for(alphas_cumprod.shape[0])
        return {"tiue_timesteps": ts, "tiue_alphas_cumprod": [float(alphas_cumprod[t]) for t in ts]}

    def __repr__(self) -> str:
        return f"TiUEStudent(k={self.k}, timesteps={self.timesteps}, parallel={self.parallel})"


class KLLoss:
    """TiUE's KL term on the student's predicted noise maps (`kl_to_standard_normal`), weight 0.1 in the paper.

    `reduction="sum"` (the paper's) sums over the K*B maps, so its scale grows with K and the batch; "mean"
    averages. It needs a student that records its noise maps (`TiUEStudent`): checked when the method is built.
    """

    def __init__(self, weight: float = 0.1, reduction: str = "sum") -> None:
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight < 0
        ):
            raise ConfigError(f"tiue.kl_weight={weight!r}: expected a finite number >= 0")
        if reduction not in REDUCTIONS:
            raise ConfigError(f"tiue.kl_reduction={reduction!r}: expected one of {list(REDUCTIONS)}")
        self.weight = float(weight)
        self.reduction = reduction
        self._student: Any = None

    def bind_student(self, student: Any, key: str) -> None:
        """Called by wadi.distill.method.Method: the KL reads the student's noise maps."""
        if not hasattr(student, "take_noise_maps"):
            raise ConfigError(
                f"method.losses.{key}: the KL term needs a student that predicts noise maps (TiUEStudent), got "
                f"{student!r}"
            )
        self._student = student

    def generator_loss(
        self, ctx: StepContext, x0: Tensor, cond: Conditioning, uncond: Conditioning, rng: torch.Generator
    ) -> dict[str, Tensor]:
        return {"loss": kl_to_standard_normal(self._student.take_noise_maps(), self.reduction)}

    def __repr__(self) -> str:
        return f"KLLoss(weight={self.weight}, reduction={self.reduction!r})"
