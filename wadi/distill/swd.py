"""SwD's scale-wise few-step student (Starodubcev et al. 2025, arXiv 2503.16397; `method=swd`).

Sampling with latent sizes s_1 <= ... <= s_K and timesteps t_1 > ... > t_K: step k predicts x0 at s_k from its
noisy input; x0 is upscaled bicubically *in latent space* to s_{k+1} and re-noised with fresh noise to t_{k+1};
the last step's x0 is the sample. Training (one scale per step, round robin by the global step) feeds step k the
real latent (a teacher sample, `batch["latents"]`) area-downscaled to s_{k-1}, bicubically upscaled to s_k and
noised at t_k; step 1 gets pure noise at s_1. The losses (DMD + PDM) then see x0 at s_k.

Checked against the official code (yandex-research/swd, src/utils/flow_matching_sampler.py and
distillation_losses.py): `downscale_to_previous_and_upscale` (area down, bicubic up), `upscale_to_next` (bicubic,
skipped when the size does not change), fresh noise at every re-noising. The official schedule is flow matching
(sigma 1, .896, .737, .602 at sizes 64/80/96/128 of 128); wadi's backbones are DDPM (epsilon prediction), so the
default timesteps are the DDPM steps whose SNR abar/(1-abar) matches those sigmas' ((1-s)/s)^2 (t_1 = T), and the
default sizes keep the official ratios 1/2, 5/8, 3/4, 1 of the latent size (toy 8/10/12/16, SD1.5 512 px
32/40/48/64, PixArt 256 px 16/20/24/32). Deliberate differences: the official picks the scale at random each step
(`random.choices`); here it is round robin by the global step (exact resume). The official draws DMD's timestep at
or below t_k; here it comes from `vsd.t_min..t_max` as in WaDi. Equal neighbouring sizes are allowed (no upscale
there): all sizes equal to the latent size is a full-resolution few-step student.

Noise: the student's noise is (K, C, S, S) per sample (S the latent size); step k uses the top-left s_k x s_k
crop of slice k (a crop of white noise is white noise), so sampling stays one seeded tensor per image.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.config import ConfigError
from wadi.diffusion import add_noise, generator_schedule, x0_from_eps
from wadi.distill.vsd import VSDLoss

# The official 4-step flow-matching sigmas (SD3.5 medium: boundaries 0, 7, 14, 18 of 28 steps, shift 3).
OFFICIAL_SIGMAS = (1.0, 0.896, 0.737, 0.602)
OFFICIAL_RATIOS = (0.5, 0.625, 0.75, 1.0)


# ------------------------------------------------------------------------------------------ the math
def upscale(x: Tensor, size: int) -> Tensor:
    """Bicubic upscaling in latent space to size x size (identity when the size is already that)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)


def downscale(x: Tensor, size: int) -> Tensor:
    """Area downscaling to size x size (the official real-side resize; identity at the same size)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="area")


def upscale_and_renoise(x0: Tensor, size: int, noise: Tensor, alphas_cumprod: Tensor, t: int) -> Tensor:
    """The step between scales: x = sqrt(abar_t) up(x0) + sqrt(1 - abar_t) noise, up = bicubic to `size`."""
    up = upscale(x0, size)
    tt = torch.full((x0.shape[0],), int(t), device=x0.device, dtype=torch.long)
    return add_noise(up, noise.to(up.dtype), alphas_cumprod, tt)


def training_input(
    real: Tensor, prev: int, size: int, noise: Tensor, alphas_cumprod: Tensor, t: int
) -> Tensor:
    """Step k's training input from real latents: area down to s_{k-1}, bicubic up to s_k, noised at t_k."""
    return upscale_and_renoise(downscale(real, prev), size, noise, alphas_cumprod, t)


def default_scales(latent_size: int, steps: int = 4, multiple: int = 1) -> list[int]:
    """The official size ratios (1/2, 5/8, 3/4, 1 for 4 steps; else evenly from 1/2 to 1), rounded to `multiple`."""
    if steps == len(OFFICIAL_RATIOS):
        ratios = list(OFFICIAL_RATIOS)
    else:
        ratios = [1.0] if steps == 1 else [0.5 + 0.5 * i / (steps - 1) for i in range(steps)]
    out = [max(multiple, int(round(latent_size * r / multiple)) * multiple) for r in ratios]
    out[-1] = latent_size
    return out


def default_timesteps(alphas_cumprod: Tensor, steps: int = 4) -> list[int]:
    """DDPM timesteps whose SNR matches the official flow-matching sigmas (t_1 = T).

    4 steps: sigma 1, .896, .737, .602; other counts: sigmas evenly from 1 to .602. SNR_fm = ((1-s)/s)^2,
    SNR_ddpm(t) = abar_t / (1 - abar_t); each t is the nearest in log SNR, kept strictly decreasing.
    """
    if steps == len(OFFICIAL_SIGMAS):
        sigmas = list(OFFICIAL_SIGMAS)
    else:
        last = OFFICIAL_SIGMAS[-1]
        sigmas = [1.0] if steps == 1 else [1.0 - (1.0 - last) * i / (steps - 1) for i in range(steps)]
    abar = alphas_cumprod.double().cpu()
    log_snr = (abar / (1 - abar)).log()
    T = abar.shape[0] - 1
    out = [T]
    for s in sigmas[1:]:
        target = 2 * math.log((1 - s) / s)
        t = int((log_snr - target).abs().argmin())
        out.append(min(t, out[-1] - 1))
    return out


# ------------------------------------------------------------------------------------------ validation
def _model_config(backbone: Mapping[str, Any]) -> dict | None:
    """The denoiser's config.json (arch_config, else <pretrained>/<unet|transformer>/config.json), if readable."""
    kind = backbone.get("kind", "unet")
    candidates = []
    if backbone.get("arch_config"):
        candidates.append(Path(str(backbone["arch_config"])))
    if backbone.get("pretrained"):
        candidates.append(
            Path(str(backbone["pretrained"]))
            / ("transformer" if kind == "pixart" else "unet")
            / "config.json"
        )
    for path in candidates:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return None


def scale_constraints(backbone: Mapping[str, Any]) -> tuple[int, int, str]:
    """(multiple, minimum, why) for the latent sizes a backbone's denoiser takes, from its config before loading.

    PixArt: a multiple of the patch size. U-Net: at least 2^(levels - 1) (diffusers pads the upsampling of sizes
    that are not multiples). The VAE only decodes the last size (the backbone's latent size).
    """
    config = _model_config(backbone) or {}
    if backbone.get("kind") == "pixart":
        patch = int(config.get("patch_size", 2))
        return patch, patch, f"a multiple of PixArt's patch size {patch}"
    levels = len(config.get("down_block_types", [None]))
    low = 2 ** (levels - 1)
    return 1, low, f"at least {low} (the U-Net's {levels} resolution levels)"


def check_schedule(
    scales: Sequence[int],
    timesteps: Sequence[int] | None,
    latent_size: int,
    backbone: Mapping[str, Any] | None,
) -> None:
    """ConfigError naming the value for sizes that decrease, a last size other than the latent size, sizes the
    denoiser cannot take, or timesteps that are not strictly decreasing / not as many as the sizes."""
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ConfigError(f"swd.scales={list(scales)!r}: expected a non-empty list of positive latent sizes")
    for a, b in zip(scales, scales[1:], strict=False):
        if b < a:
            raise ConfigError(
                f"swd.scales={list(scales)}: expected increasing latent sizes s_1 <= ... <= s_K, but {b} follows {a} "
                "(equal neighbours skip the upscale; all equal to the latent size: a full-resolution few-step student)"
            )
    if scales[-1] != latent_size:
        raise ConfigError(
            f"swd.scales={list(scales)}: the last size {scales[-1]} must be the backbone's latent size {latent_size} "
            "(the sample is decoded at that size)"
        )
    if backbone is not None:
        multiple, low, why = scale_constraints(backbone)
        for s in scales:
            if s % multiple or s < low:
                raise ConfigError(
                    f"swd.scales={list(scales)}: size {s} is not {why} ({backbone.get('name')})"
                )
    if timesteps is None:
        return
    ts = list(timesteps)
    if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ts):
        raise ConfigError(f"swd.timesteps={ts!r}: expected integer timesteps >= 0")
    if len(ts) != len(scales):
        raise ConfigError(
            f"swd.timesteps={ts}: expected one timestep per scale ({len(scales)}: swd.scales={list(scales)})"
        )
    for a, b in zip(ts, ts[1:], strict=False):
        if b >= a:
            raise ConfigError(
                f"swd.timesteps={ts}: expected strictly decreasing timesteps t_1 > ... > t_K, but {b} follows {a}"
            )


# ------------------------------------------------------------------------------------------ the student
class ScaleWiseStudent:
    """The scale-wise generator (module docstring). `scales` None: the official ratios of `latent_size` for
    `steps` steps; `timesteps` None: SNR-matched to the official sigmas (resolved from the schedule at first use).
    `backbone` (the backbone node) lets bad sizes be refused before anything loads."""

    uses_batch = True  # training reads batch["latents"] and the global step (wadi.distill.method)

    def __init__(
        self,
        scales: Sequence[int] | None = None,
        timesteps: Sequence[int] | None = None,
        latent_size: int | None = None,
        steps: int = 4,
        backbone: Mapping[str, Any] | None = None,
    ) -> None:
        if latent_size is None:
            if backbone is None or "latent_size" not in backbone:
                raise ConfigError("swd: give latent_size or the backbone node (backbone.latent_size)")
            latent_size = int(backbone["latent_size"])
        self.latent_size = int(latent_size)
        if scales is None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ConfigError(f"swd.steps={steps!r}: expected an integer >= 1")
            multiple = scale_constraints(backbone)[0] if backbone is not None else 1
            scales = default_scales(self.latent_size, steps, multiple)
        scales = [int(s) if isinstance(s, float) and s.is_integer() else s for s in scales]
        check_schedule(
            list(scales), None if timesteps is None else list(timesteps), self.latent_size, backbone
        )
        self.scales = [int(s) for s in scales]
        self.timesteps = None if timesteps is None else [int(t) for t in timesteps]
        self._auto: list[int] | None = None  # the SNR-matched timesteps, once resolved

    @property
    def steps(self) -> int:
        return len(self.scales)

    def resolved_timesteps(self, alphas_cumprod: Tensor) -> list[int]:
        """The timesteps given, or the SNR-matched defaults of this schedule; refused if beyond it."""
        ts = self.timesteps
        if ts is None:  # resolved once: a student's schedule does not change
            if self._auto is None:
                self._auto = default_timesteps(alphas_cumprod, self.steps)
            ts = self._auto
        if ts[0] > alphas_cumprod.shape[0] - 1:
            raise ConfigError(
                f"swd.timesteps={ts}: {ts[0]} is beyond the schedule's last timestep {alphas_cumprod.shape[0] - 1}"
            )
        return ts

    def noise_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.steps, *latent_shape)

    def scale_of_step(self, step: int) -> int:
        """The scale index trained at global step `step`: round robin."""
        return int(step) % self.steps

    def _x0(
        self,
        denoiser,
        x: Tensor,
        t: int,
        cond: Conditioning,
        ac: Tensor,
        adapter: str | None,
        alpha_T: float | None,
    ) -> Tensor:
        """x0 from one evaluation at t: (x - sigma eps) / alpha; at t = T with the backbone's alpha_T override."""
        tt = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
        eps = denoiser(x, tt, cond, adapter).float()
        if t == ac.shape[0] - 1:
            _, a, s = generator_schedule(ac, alpha_T)
        else:
            abar = ac[t].float()
            a, s = abar.sqrt(), (1 - abar).sqrt()
        return x0_from_eps(x.float(), eps, a, s)

    def _noise(self, z: Tensor, k: int) -> Tensor:
        size = self.scales[k]
        return z[:, k, :, :size, :size]

    def generate(
        self,
        denoiser,
        z: Tensor,
        cond: Conditioning,
        alphas_cumprod: Tensor,
        adapter: str | None = "generator",
        alpha_T: float | None = None,
        *,
        batch: Mapping[str, Any] | None = None,
        step: int | None = None,
        trajectory: list[Tensor] | None = None,
    ) -> Tensor:
        """Sampling (no batch): the K-step chain, the last x0 (B, C, S, S). Training (batch and step given):
        scale k = step mod K only, x0 at s_k from the real latents' input (pure noise at k = 0)."""
        ts = self.resolved_timesteps(alphas_cumprod)
        dtype = z.dtype
        if batch is not None:
            k = self.scale_of_step(step or 0)
            if k == 0:
                x = self._noise(z, 0)
            else:
                if "latents" not in batch:
                    raise ValueError(
                        "the scale-wise student trains on real latents (`latents` in the batch): use a teacher-sample "
                        "dataset (python -m wadi.teacher_samples ... out=DIR; swd.samples=DIR)"
                    )
                real = batch["latents"].to(z.device, torch.float32)
                x = training_input(
                    real, self.scales[k - 1], self.scales[k], self._noise(z, k), alphas_cumprod, ts[k]
                )
            return self._x0(denoiser, x.to(dtype), ts[k], cond, alphas_cumprod, adapter, alpha_T)
        x = self._noise(z, 0)
        x0 = None
        for k in range(self.steps):
            if k > 0:
                x = upscale_and_renoise(x0, self.scales[k], self._noise(z, k), alphas_cumprod, ts[k]).to(
                    dtype
                )
            x0 = self._x0(denoiser, x, ts[k], cond, alphas_cumprod, adapter, alpha_T)
            if trajectory is not None:
                trajectory.append(upscale(x0, self.latent_size))
        return x0

    def export_info(self, alphas_cumprod: Tensor) -> dict[str, Any]:
        """What an export records so that sampling rebuilds this student (wadi.generation)."""
        return {
            "method": "swd",
            "kind": "scalewise",
            "scales": list(self.scales),
            "timesteps": self.resolved_timesteps(alphas_cumprod),
            "latent_size": self.latent_size,
        }

    @classmethod
    def from_export_info(cls, info: Mapping[str, Any]) -> ScaleWiseStudent:
        """The student an export's `student` entry describes (wadi.generation.student_from_export_info)."""
        return cls(info["scales"], info["timesteps"], int(info["latent_size"]))

    def pipeline_files(self) -> dict[str, Path]:
        """Files an export ships so that diffusers runs the student (`custom_pipeline=<export>/swd_pipeline.py`)."""
        from wadi.pipelines import swd_pipeline

        return {"swd_pipeline.py": Path(swd_pipeline.__file__)}

    def __repr__(self) -> str:
        return f"ScaleWiseStudent(scales={self.scales}, timesteps={self.timesteps or 'snr-matched'})"


def student_from_info(info: Mapping[str, Any]):
    """The student an export's `student` entry describes (None or absent: the one-step student)."""
    from wadi.distill.student import OneStepStudent

    if not info or info.get("kind") in (None, "one_step"):
        return OneStepStudent()
    if info["kind"] == "scalewise":
        return ScaleWiseStudent.from_export_info(info)
    raise ValueError(f"unknown student kind {info['kind']!r} in the export's metadata")


class ScaleWiseDMD(VSDLoss):
    """DMD for the scale-wise student: VSDLoss whose generator-side noise level is at most the trained scale's
    timestep t_k (the official `dmd_loss` draws it from the scale's boundary on down); `cap=False`: vsd.t_min..t_max
    as in WaDi. The fake score's loss is VSDLoss's own (every noise level, as the official)."""

    uses_batch = True  # reads the global step (the trained scale) and the module's student

    def __init__(self, config=None, weight: float = 1.0, cap: bool = True) -> None:
        super().__init__(config, weight)
        self.cap = bool(cap)

    def generator_loss(self, ctx, x0, cond, uncond, rng, *, batch=None, step=None):
        t_max = None
        student = getattr(ctx, "student", None)
        if self.cap and isinstance(student, ScaleWiseStudent):
            t_max = student.resolved_timesteps(ctx.alphas_cumprod)[student.scale_of_step(step or 0)]
        return super().generator_loss(ctx, x0, cond, uncond, rng, t_max=t_max)

    def __repr__(self) -> str:
        return f"ScaleWiseDMD({self.config}, cap={self.cap})"
