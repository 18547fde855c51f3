"""The VSD math of WaDi as pure functions (spec sections 1 and 3)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def _bcast(values: Tensor, like: Tensor) -> Tensor:
    """(B,) -> (B, 1, 1, 1) so per-sample schedule values broadcast over latents."""
    return values.reshape(-1, *([1] * (like.ndim - 1)))


def x0_from_eps(z: Tensor, eps: Tensor, alpha_T: float | Tensor, sigma_T: float | Tensor) -> Tensor:
    """Spec 1: the one-step generator's image latent x0 = (z - sigma_T eps_hat) / alpha_T."""
    return (z - sigma_T * eps) / alpha_T


def add_noise(x0: Tensor, eps: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (DDPMScheduler.add_noise)."""
    abar = _bcast(alphas_cumprod[t].to(x0.dtype), x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * eps


def cfg_combine(eps_uncond: Tensor, eps_cond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: e_u + w (e_c - e_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def vsd_gradient(eps_real: Tensor, eps_fake: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Spec 3.4: g = sigma_t^2 (eps_real - eps_fake), sigma_t^2 = 1 - abar_t.

    NaN/inf are kept: the module counts them (train/vsd_g_nonfinite) and skips or stops (`nonfinite`); zeroing
    them would train on a loss that is silently 0.
    """
    sigma2 = _bcast(1 - alphas_cumprod[t].float(), eps_real)
    return sigma2 * (eps_real.float() - eps_fake.float())


def dmd_gradient(
    x0: Tensor, x_t: Tensor, eps_real: Tensor, eps_fake: Tensor, alphas_cumprod: Tensor, t: Tensor
) -> Tensor:
    """DMD's normalised gradient (Yin et al. 2024, eq. 8; DMD2's `compute_distribution_matching_loss`).

    g = (x0_fake - x0_real) / mean_{c,h,w} |x0 - x0_real| per sample, with x0_s = (x_t - sigma_t eps_s) / alpha_t,
    i.e. (sigma_t / alpha_t) (eps_real - eps_fake) over the teacher's per-sample x0 error. NaN/inf are kept.
    """
    abar = _bcast(alphas_cumprod[t].float(), eps_real)
    alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
    x0_real = (x_t.float() - sigma * eps_real.float()) / alpha
    scale = (x0.detach().float() - x0_real).abs().mean(dim=tuple(range(1, x0.ndim)), keepdim=True)
    return (sigma / alpha) * (eps_real.float() - eps_fake.float()) / scale


def generator_loss(x0: Tensor, g: Tensor) -> Tensor:
    """Spec 3.5: 0.5 mean((x0 - stopgrad(x0 - g))^2); its gradient w.r.t. x0 is g / numel."""
    x0 = x0.float()
    target = (x0 - g).detach()
    return 0.5 * F.mse_loss(x0, target, reduction="mean")


def fake_score_loss(eps_hat: Tensor, eps: Tensor, alphas_cumprod: Tensor, t: Tensor) -> Tensor:
    """Spec 3 (fake score): mean((alpha_t (eps_hat - eps))^2), alpha_t = sqrt(abar_t)."""
    alpha_t = _bcast(alphas_cumprod[t].float().sqrt(), eps)
    return ((alpha_t * (eps_hat.float() - eps.float())) ** 2).mean()
