"""Samplers over a `Denoiser`: the one-step generator and the teacher's multi-step DDIM with CFG."""

from __future__ import annotations

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
    t = torch.full((z.shape[0],), T, device=z.device, dtype=torch.long)
    eps = denoiser(z, t, cond, adapter)
    return x0_from_eps(z, eps.float(), a_T, s_T)


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
    """Deterministic DDIM (eta=0) with CFG from pure noise; returns the final x0 latent.

    Each step's predicted x0 is appended to `trajectory` when given (x0-trajectory visualisation).
    """
    x = z
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], steps)
    for i, t in enumerate(timesteps):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = denoiser.cfg(x, tt, cond, uncond, guidance_scale, adapter).float()
        x, x0 = ddim_step(x, eps, alphas_cumprod, t, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        x = x.to(z.dtype)  # the denoiser's dtype for the next step
        if trajectory is not None:
            trajectory.append(x0)
    return x


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
    """Diversity distillation's hybrid sampler (Gandikota & Bau, spec section 6).

    The teacher takes the first `teacher_steps` DDIM steps of a `schedule_steps`-step trailing schedule
    (its own CFG scale, default 0 = unconditional, which restores diversity), then the one-step student
    predicts x0 from the partially denoised latent at the matching timestep. teacher_steps=0 is the student.
    The teacher is `denoiser` with `teacher_adapter` (a checkpoint: one network, two roles) or a separate
    `teacher_denoiser` (a merged export next to its teacher directory).
    Predicted x0 of every step is appended to `trajectory` when given (for x0-trajectory strips).
    """
    if not 0 <= teacher_steps <= schedule_steps:
        raise ValueError(f"teacher_steps must be in [0, {schedule_steps}], got {teacher_steps}")
    timesteps = ddim_timesteps(alphas_cumprod.shape[0], schedule_steps)
    x = z
    for i in range(teacher_steps):
        t = timesteps[i]
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = (
            (teacher_denoiser or denoiser).cfg(x, tt, cond, uncond, teacher_guidance, teacher_adapter).float()
        )
        x, x0 = ddim_step(x, eps, alphas_cumprod, t, timesteps[i + 1] if i + 1 < len(timesteps) else None)
        x = x.to(z.dtype)
        if trajectory is not None:
            trajectory.append(x0)
    if teacher_steps == len(timesteps):
        return x
    if teacher_steps == 0:  # the student alone, with its own alpha_T (which may override the schedule's)
        x0 = one_step(denoiser, z, cond, alphas_cumprod, student_adapter, alpha_T)
        if trajectory is not None:
            trajectory.append(x0)
        return x0
    t = timesteps[teacher_steps]
    abar = alphas_cumprod[t].float()
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps = denoiser(x, tt, cond, student_adapter).float()
    x0 = x0_from_eps(x, eps, abar.sqrt(), (1 - abar).sqrt())
    if trajectory is not None:
        trajectory.append(x0)
    return x0
