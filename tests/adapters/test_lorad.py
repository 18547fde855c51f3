"""LoRaD against the direct per-pair rotation formula of spec section 2, plus merge/unmerge semantics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wadi.adapters import (
    AdapterTargets,
    LoRaD,
    LoRaDLinear,
    get_adapter,
    lorad_weight,
    use_adapter,
    wrap_angle,
)

LORAD = LoRaD()  # no config: tests give their targets


def direct_rotation(W: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Spec 2 written out element by element, in float64."""
    W, theta = W.double(), (A.double() @ B.double())
    theta = ((theta + math.pi) % (2 * math.pi)) - math.pi
    out = W.clone()
    for k in range(W.shape[1] // 2):
        c, s = torch.cos(theta[:, k]), torch.sin(theta[:, k])
        out[:, 2 * k] = W[:, 2 * k] * c - W[:, 2 * k + 1] * s
        out[:, 2 * k + 1] = W[:, 2 * k] * s + W[:, 2 * k + 1] * c
    return out


def adapted(out_f=6, in_f=8, rank=3, seed=0, scale=3.0) -> LoRaDLinear:
    torch.manual_seed(seed)
    layer = LoRaDLinear.from_linear(nn.Linear(in_f, out_f))
    layer.add_adapter("generator", rank)
    with torch.no_grad():
        layer.lorad["generator"].lorad_A.normal_(std=scale)  # large angles exercise the wrap
    return layer


def test_wrap_angle_range_and_identity_inside():
    theta = torch.linspace(-20, 20, 1001)
    wrapped = wrap_angle(theta)
    assert wrapped.min() >= -math.pi and wrapped.max() < math.pi
    assert torch.allclose(torch.cos(wrapped), torch.cos(theta), atol=1e-5)
    inside = torch.tensor([-3.0, -1.0, 0.0, 2.5])
    assert torch.allclose(wrap_angle(inside), inside, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forward_matches_direct_rotation(seed):
    layer = adapted(seed=seed)
    x = torch.randn(5, 8)
    adapter = layer.lorad["generator"]
    expected = (
        x.double() @ direct_rotation(layer.weight, adapter.lorad_A, adapter.lorad_B).T + layer.bias.double()
    )
    with use_adapter("generator"):
        got = layer(x)
    assert torch.allclose(got.double(), expected, atol=1e-5)
    assert not torch.allclose(got, nn.functional.linear(x, layer.weight, layer.bias), atol=1e-3)


def test_row_norms_preserved():
    layer = adapted(out_f=16, in_f=32, rank=4)
    a = layer.lorad["generator"]
    W2 = lorad_weight(layer.weight, a.lorad_A, a.lorad_B)
    assert torch.allclose(W2.norm(dim=1), layer.weight.norm(dim=1), rtol=1e-5)
    assert not torch.allclose(W2, layer.weight, atol=1e-3)


def test_identity_at_init():
    torch.manual_seed(0)
    layer = LoRaDLinear.from_linear(nn.Linear(8, 4))
    layer.add_adapter("generator", 2)
    assert layer.lorad["generator"].lorad_B.abs().sum() > 0  # B random, A zero
    x = torch.randn(3, 8)
    with use_adapter("generator"):
        assert torch.equal(layer(x), nn.functional.linear(x, layer.weight, layer.bias))


def test_trainable_count_is_r_times_out_plus_half_in():
    layer = adapted(out_f=6, in_f=8, rank=3)
    assert sum(p.numel() for p in layer.lorad.parameters()) == 3 * (6 + 8 // 2)


def test_merge_unmerge_exact_and_idempotent():
    layer = adapted()
    original = layer.weight.detach().clone()
    x = torch.randn(4, 8)
    with use_adapter("generator"):
        before = layer(x)
    layer.merge("generator")
    layer.merge("generator")  # idempotent
    assert not torch.equal(layer.weight, original)
    with use_adapter("generator"):
        assert torch.allclose(layer(x), before, atol=1e-6)
    with use_adapter(None):  # the teacher still sees the original weight while merged
        assert torch.allclose(layer(x), nn.functional.linear(x, original, layer.bias))
    layer.unmerge()
    layer.unmerge()
    assert torch.equal(layer.weight, original)  # bit for bit


def test_merge_refuses_non_finite():
    layer = adapted()
    with torch.no_grad():
        layer.lorad["generator"].lorad_A[0, 0] = float("nan")
    original = layer.weight.detach().clone()
    with pytest.raises(ValueError, match="non-finite"):
        layer.merge("generator")
    assert torch.equal(layer.weight, original) and layer.merged_adapter is None


def test_odd_input_width_names_layer():
    model = nn.Sequential()
    model.add_module("block", nn.Sequential(nn.Linear(7, 4), nn.Linear(4, 4)))
    with pytest.raises(ValueError, match=r"block\.0.*in_features=7"):
        LORAD.attach(model, "generator", 2, AdapterTargets(["block"]))
    assert LORAD.attach(model, "generator", 2, AdapterTargets(["block"], on_odd="skip")) == ["block.1"]


def test_rank_below_one_rejected():
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LORAD.attach(nn.Sequential(nn.Linear(4, 4)), "generator", 0, AdapterTargets(["0"]))


def test_two_adapters_one_base_and_target_selection():
    torch.manual_seed(0)
    model = nn.ModuleDict(
        {
            "blocks": nn.ModuleDict({"proj_in": nn.Linear(4, 4), "ff": nn.Linear(4, 4)}),
            "head": nn.Linear(4, 4),
        }
    )
    gen = LORAD.attach(model, "generator", 2, AdapterTargets(["blocks"]))
    fake = LORAD.attach(model, "fake_score", 1, AdapterTargets(["blocks"], ["proj_in"]))
    assert gen == ["blocks.proj_in", "blocks.ff"] and fake == ["blocks.ff"]
    assert isinstance(model["head"], nn.Linear) and not isinstance(model["head"], LoRaDLinear)
    frozen = [p for p in model["blocks"].parameters() if not p.requires_grad]
    assert len(frozen) == 4  # two weights + two biases, one copy each, shared by both adapters
    with torch.no_grad():
        for p in LORAD.parameters(model, "generator") + LORAD.parameters(model, "fake_score"):
            p.normal_()
    x = torch.randn(2, 4)
    ff = model["blocks"]["ff"]
    outs = {}
    for role in (None, "generator", "fake_score"):
        with use_adapter(role):
            outs[role] = ff(x)
    assert not torch.allclose(outs["generator"], outs["fake_score"])
    assert not torch.allclose(outs[None], outs["generator"])
    LORAD.merge(model, "generator")
    LORAD.unmerge(model)
    with use_adapter("generator"):
        assert torch.allclose(ff(x), outs["generator"])


def test_grouped_rotation_equals_per_layer_forward_and_grads(tiny_sd_cfg, monkeypatch):
    """The pass-level, shape-batched rotation gives the per-layer outputs and gradients, and replaces it."""
    import wadi.adapters.lorad as lorad_mod
    from wadi.backbones import Conditioning, load_backbone

    torch.manual_seed(0)
    backbone = load_backbone(tiny_sd_cfg, load_text=False, load_vae=False)
    cfg = backbone.cfg
    model = backbone.denoiser.model
    LORAD.attach(model, "generator", 4, cfg.targets("generator", get_adapter("lorad")))
    params = LORAD.parameters(model, "generator")
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.3)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    cond = Conditioning(torch.randn(2, 16, 32))
    calls = []
    per_layer = lorad_mod.rotated_weight
    monkeypatch.setattr(lorad_mod, "rotated_weight", lambda *a, **k: calls.append(1) or per_layer(*a, **k))

    def run(grouped: bool):
        backbone.denoiser.update_speed(group_rotations=grouped)
        for p in params:
            p.grad = None
        calls.clear()
        out = backbone.denoiser(x, t, cond, "generator")
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in params], len(calls)

    ref_out, ref_grads, ref_calls = run(grouped=False)
    out, grads, n_calls = run(grouped=True)
    groups = backbone.denoiser._groups["generator"]
    n_layers = sum(len(g) for g in groups)
    assert ref_calls == n_layers and n_calls == 0  # every layer took its precomputed W'
    assert len(groups) < n_layers  # same-shape layers really share a launch
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
