"""The VSD losses against direct formulas (spec section 3); the schedule math is tested in test_diffusion."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from wadi.distill.losses import fake_score_loss, generator_loss, vsd_gradient


def sched():
    return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def test_generator_loss_gradient_is_g_over_numel():
    x0 = torch.randn(2, 4, 8, 8, requires_grad=True)
    g = torch.randn(2, 4, 8, 8)
    generator_loss(x0, g).backward()
    assert torch.allclose(x0.grad, g / g.numel(), atol=1e-9)


def test_generator_loss_value():
    x0, g = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert torch.allclose(generator_loss(x0, g), 0.5 * (g**2).mean())


def test_vsd_gradient_formula_keeps_nonfinite_entries():
    acp = sched().alphas_cumprod
    t = torch.tensor([20, 500, 980])
    er, ef = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    g = vsd_gradient(er, ef, acp, t)
    for i in range(3):
        assert torch.allclose(g[i], (1 - acp[t[i]]) * (er[i] - ef[i]))
    er[0, 0, 0, 0] = float("nan")
    ef[1, 0, 0, 0] = float("inf")
    g = vsd_gradient(er, ef, acp, t)
    # kept, not zeroed: the module counts and refuses them (zeroing trained on a loss of exactly 0)
    assert g[0, 0, 0, 0].isnan() and g[1, 0, 0, 0].isinf() and int((~g.isfinite()).sum()) == 2


def test_fake_score_loss_formula():
    acp = sched().alphas_cumprod
    t = torch.tensor([3, 700])
    e_hat, e = torch.randn(2, 4, 2, 2), torch.randn(2, 4, 2, 2)
    direct = torch.stack([(acp[t[i]] * (e_hat[i] - e[i]) ** 2).mean() for i in range(2)]).mean()
    assert torch.allclose(fake_score_loss(e_hat, e, acp, t), direct)
