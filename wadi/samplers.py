"""Samplers as objects over a `Denoiser`: the one-step student, the teacher's DDIM with CFG, and the hybrid.

A sampler holds its settings; calling it runs it on noise:

    sampler = build_sampler(steps=None, hybrid_k=1, teacher_guidance=0.0)   # or OneStep(), DDIM(25, 3.0)
    x0 = sampler(denoiser, z, cond, uncond, alphas_cumprod, trajectory=frames)

`uncond` is only read by samplers with `needs_uncond` (the one-step student takes None). Every multi-step
sampler runs the same DDIM loop (`ddim_loop`); `build_sampler` is the one place that turns the generation
flags (`steps`, `hybrid_k`) into a sampler. The math is wadi.diffusion's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.backbones.denoiser import Denoiser
from wadi.diffusion import ddim_step, ddim_timesteps, generator_schedule, x0_from_eps


def seeded_noise(seeds: list[int], shape: tuple[int, ...], device, dtype=torch.float32) -> Tensor:
    """One latent per seed, independent of batch composition (so sharded generation equals unsharded)."""
    out = []
    for seed in seeds:
        g = torch.Generator("cpu").manual_seed(int(seed))
        out.append(torch.randn(shape, generator=g))
    return torch.stack(out).to(device=device, dtype=dtype)


def _timestep(x: Tensor, t: int) -> Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


def one_step(
    denoiser: Denoiser,
    z: Tensor,
    cond: Conditioning,
    alphas_cumprod: Tensor,
    adapter: str | None = "generator",
    alpha_T: float | None = None,
) -> Tensor:
    """x0 = G(z, c): one denoiser evaluation at t = T on pure noise (spec section 1)."""
    T, a_T, s_T = generator_schedule(alphas_cumprod, alpha_T)
    eps = denoiser(z, _timestep(z, T), cond, adapter)
    return x0_from_eps(z, eps.float(), a_T, s_T)


def ddim_loop(
    denoiser: Denoiser,
    z: Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    alphas_cumprod: Tensor,
    timesteps: Sequence[int],
    n: int,
    guidance_scale: float,
    adapter: str | None = None,
    trajectory: list[Tensor] | None = None,
) -> Tensor:
    """The first `n` deterministic DDIM steps (eta = 0, CFG `guidance_scale`) of `timesteps` from `z`.

    Returns the latent after step n in z's dtype (after the last timestep: the clean latent); each step's
    predicted x0 (float32) is appended to `trajectory` when given.
    """
    x = z
    for i in range(n):
        t = timesteps[i]
        eps = denoiser.cfg(x, _timestep(x, t), cond, uncond, guidance_scale, adapter).float()
        x, x0 = ddim_step(x, eps, alphas_cumprod, t, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        x = x.to(z.dtype)  # the denoiser's dtype for the next step
        if trajectory is not None:
            trajectory.append(x0)
    return x


@dataclass
class OneStep:
    """The one-step student: x0 = G(z, c) under `adapter` at t = T (alpha_T: the backbone's override)."""

    adapter: str | None = "generator"
    alpha_T: float | None = None
    needs_uncond = False

    @torch.no_grad()
    def __call__(self, denoiser, z, cond, uncond, alphas_cumprod, trajectory=None) -> Tensor:
        x0 = one_step(denoiser, z, cond, alphas_cumprod, self.adapter, self.alpha_T)
        if trajectory is not None:
            trajectory.append(x0)
        return x0


@dataclass
class DDIM:
    """`steps`-step trailing DDIM (eta = 0) with CFG `guidance_scale` under `adapter` (a teacher: None)."""

    steps: int
    guidance_scale: float = 1.0
    adapter: str | None = None
    needs_uncond = True

    @torch.no_grad()
    def __call__(self, denoiser, z, cond, uncond, alphas_cumprod, trajectory=None) -> Tensor:
        timesteps = ddim_timesteps(alphas_cumprod.shape[0], self.steps)
        return ddim_loop(
            denoiser,
            z,
            cond,
            uncond,
            alphas_cumprod,
            timesteps,
            len(timesteps),
            self.guidance_scale,
            self.adapter,
            trajectory,
        )


@dataclass
class Hybrid:
    """Diversity distillation's hybrid sampler (Gandikota & Bau, spec section 6).

    The teacher takes the first `teacher_steps` DDIM steps of a `schedule_steps`-step trailing schedule
    (its own CFG scale, default 0 = unconditional, which restores diversity), then the one-step student
    predicts x0 from the partially denoised latent at the matching timestep. teacher_steps=0 is the student
    (with `alpha_T`). The teacher is the denoiser with `teacher_adapter` (a checkpoint: one network, two
    roles) or a separate `teacher_denoiser` (a merged export next to its teacher directory).
    """

    teacher_steps: int = 1
    schedule_steps: int = 25
    teacher_guidance: float = 0.0
    student_adapter: str | None = "generator"
    teacher_adapter: str | None = None
    teacher_denoiser: Denoiser | None = None
    alpha_T: float | None = None
    needs_uncond = True

    def __post_init__(self) -> None:
        if not 0 <= self.teacher_steps <= self.schedule_steps:
            raise ValueError(f"teacher_steps must be in [0, {self.schedule_steps}], got {self.teacher_steps}")

    @torch.no_grad()
    def __call__(self, denoiser, z, cond, uncond, alphas_cumprod, trajectory=None) -> Tensor:
        k = self.teacher_steps
        timesteps = ddim_timesteps(alphas_cumprod.shape[0], self.schedule_steps)
        teacher = self.teacher_denoiser or denoiser
        x = ddim_loop(
            teacher,
            z,
            cond,
            uncond,
            alphas_cumprod,
            timesteps,
            k,
            self.teacher_guidance,
            self.teacher_adapter,
            trajectory,
        )
        if k == len(timesteps):
            return x
        if k == 0:  # the student alone, with its own alpha_T (which may override the schedule's)
            return OneStep(self.student_adapter, self.alpha_T)(
                denoiser, z, cond, None, alphas_cumprod, trajectory
            )
        t = timesteps[k]
        abar = alphas_cumprod[t].float()
        eps = denoiser(x, _timestep(x, t), cond, self.student_adapter).float()
        x0 = x0_from_eps(x, eps, abar.sqrt(), (1 - abar).sqrt())
        if trajectory is not None:
            trajectory.append(x0)
        return x0


@dataclass
class StudentSampler:
    """A method's own student (`wadi.distill.student.Student`, e.g. TiUE's loop-free one) under `adapter`."""

    student: object
    adapter: str | None = "generator"
    alpha_T: float | None = None
    needs_uncond = False

    @torch.no_grad()
    def __call__(self, denoiser, z, cond, uncond, alphas_cumprod, trajectory=None) -> Tensor:
        return self.student.generate(
            denoiser, z, cond, alphas_cumprod, self.adapter, self.alpha_T, trajectory=trajectory
        )


Sampler = OneStep | DDIM | Hybrid | StudentSampler


def build_sampler(
    steps: int | None = None,
    guidance_scale: float = 1.0,
    adapter: str | None = "generator",
    hybrid_k: int = 0,
    schedule_steps: int = 25,
    teacher_guidance: float = 0.0,
    teacher_denoiser: Denoiser | None = None,
    alpha_T: float | None = None,
    student: object | None = None,
) -> Sampler:
    """The sampler the generation flags ask for: `steps`=N -> N-step DDIM with CFG `guidance_scale` under
    `adapter`; else `hybrid_k`=k > 0 -> the teacher's first k of `schedule_steps` steps (CFG
    `teacher_guidance`; `teacher_denoiser`, or the adapter-free base of the denoiser), then the student
    under `adapter`; else the one-step student under `adapter` with `alpha_T`, or `student` (a method's own,
    e.g. TiUE's) when given."""
    if steps is not None:
        return DDIM(steps, guidance_scale, adapter)
    if student is not None:
        if hybrid_k:
            raise ValueError(
                f"hybrid sampling (hybrid_k={hybrid_k}) needs a one-step student, not {student!r}"
            )
        return StudentSampler(student, adapter, alpha_T)
    if hybrid_k == 0:
        return OneStep(adapter, alpha_T)
    return Hybrid(
        hybrid_k,
        schedule_steps,
        teacher_guidance,
        student_adapter=adapter,
        teacher_adapter=None,
        teacher_denoiser=teacher_denoiser,
        alpha_T=alpha_T,
    )


# ------------------------------------------------------------------ the function forms (tests, benchmarks)
@torch.no_grad()
def ddim_sample(
    denoiser: Denoiser,
    z: Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    alphas_cumprod: Tensor,
    steps: int,
    guidance_scale: float,
    adapter: str | None = None,
    trajectory: list[Tensor] | None = None,
) -> Tensor:
    """Deterministic DDIM (eta=0) with CFG from pure noise; returns the final x0 latent (`DDIM`)."""
    return DDIM(steps, guidance_scale, adapter)(denoiser, z, cond, uncond, alphas_cumprod, trajectory)


@torch.no_grad()
def hybrid_sample(
    denoiser: Denoiser,
    z: Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    alphas_cumprod: Tensor,
    teacher_steps: int = 1,
    schedule_steps: int = 25,
    teacher_guidance: float = 0.0,
    student_adapter: str | None = "generator",
    teacher_adapter: str | None = None,
    trajectory: list[Tensor] | None = None,
    teacher_denoiser: Denoiser | None = None,
    alpha_T: float | None = None,
) -> Tensor:
    """The hybrid sampler (`Hybrid`) run once; teacher_steps=0 is the student."""
    sampler = Hybrid(
        teacher_steps,
        schedule_steps,
        teacher_guidance,
        student_adapter,
        teacher_adapter,
        teacher_denoiser,
        alpha_T,
    )
    return sampler(denoiser, z, cond, uncond, alphas_cumprod, trajectory)
