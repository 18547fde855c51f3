"""The Denoiser runs every pass as its SpeedOptions say; none of them changes the numbers."""

from __future__ import annotations

import pytest
import torch

import wadi.adapters.lorad as lorad_mod
from wadi.adapters import get_adapter
from wadi.adapters.context import fused_rotation
from wadi.backbones import Conditioning, load_backbone
from wadi.speed import SpeedOptions


@pytest.fixture
def adapted(tiny_sd_cfg):
    torch.manual_seed(0)
    backbone = load_backbone(tiny_sd_cfg, load_text=False, load_vae=False)
    adapter = get_adapter()
    model = backbone.denoiser.model
    adapter.attach(model, "generator", 4, backbone.cfg.targets("generator", adapter))
    params = adapter.parameters(model, "generator")
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.3)
    return backbone.denoiser, params


def _eps_and_grads(denoiser, params):
    for p in params:
        p.grad = None
    torch.manual_seed(1)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), Conditioning(torch.randn(2, 16, 32))
    out = denoiser(x, t, cond, "generator")
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize(
    "options",
    [
        SpeedOptions(fused_rotation=False),
        SpeedOptions(group_rotations=False),
        SpeedOptions(gradient_checkpointing=True),
    ],
    ids=["unfused", "ungrouped", "checkpointed"],
)
def test_speed_options_keep_eps_and_gradients(adapted, options):
    denoiser, params = adapted
    ref_out, ref_grads = _eps_and_grads(denoiser, params)
    denoiser.set_speed(options)
    assert denoiser.model.is_gradient_checkpointing == options.gradient_checkpointing
    out, grads = _eps_and_grads(denoiser, params)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    denoiser.set_speed(SpeedOptions())
    assert not denoiser.model.is_gradient_checkpointing


def test_unfused_rotation_reaches_each_layer(adapted, monkeypatch):
    """fused_rotation=False is bound to the pass: every layer builds W' with the plain formula."""
    denoiser, params = adapted
    seen = []
    per_layer = lorad_mod.rotated_weight
    monkeypatch.setattr(
        lorad_mod, "rotated_weight", lambda *a, **k: seen.append(fused_rotation()) or per_layer(*a, **k)
    )
    denoiser.set_speed(SpeedOptions(fused_rotation=False))
    _eps_and_grads(denoiser, params)
    assert seen and not any(seen)
    assert fused_rotation()  # outside the pass: the default again


def test_compute_dtype_runs_the_base_natively(adapted):
    denoiser, params = adapted
    denoiser.model.to(torch.bfloat16)
    for p in params:
        p.data = p.data.float()  # adapters stay float32, as WaDiModule.cast_frozen leaves them
    denoiser.update_speed(compute_dtype=torch.bfloat16)
    out, grads = _eps_and_grads(denoiser, params)
    assert out.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
