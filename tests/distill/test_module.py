"""The VSD LightningModule on tiny random models: which parameters each step moves, and how."""

from __future__ import annotations

import copy

import pytest
import torch

from wadi.adapters.context import use_adapter
from wadi.backbones import Conditioning
from wadi.distill.module import WaDiModule

PROMPTS = ["a red circle at the left", "a small blue square", "a large star", "a green cross at the top"]


def make_module(cfg, **kw) -> WaDiModule:
    torch.manual_seed(0)
    kw = {"rank": 4, "fake_rank": 2, **kw}
    return WaDiModule(backbone=cfg, **kw)


def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params):
    return [not torch.equal(b, p) for b, p in zip(before, params)]


def randomize(params, std=0.3):
    with torch.no_grad():
        for p in params:
            p.normal_(std=std)


def run_step(module, step, opt_g=None, opt_f=None):
    """One step outside a Trainer: the module's own generator_step / fake_score_step pieces."""
    rng = torch.Generator().manual_seed(step)
    cond = module.conditioning({"prompt": PROMPTS})
    uncond = module.null_conditioning()
    gen = module.generator_step(cond, uncond, rng)
    return gen, cond, uncond, rng


def test_one_frozen_copy_and_three_roles(tiny_sd_cfg):
    m = make_module(tiny_sd_cfg)
    frozen = [p for p in m.denoiser.parameters() if not p.requires_grad]
    n_base = sum(p.numel() for p in frozen)
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in m.generator_parameters() + m.fake_score_parameters()}
    from wadi.testing import tiny_unet

    assert n_base == sum(p.numel() for p in tiny_unet().parameters())  # not duplicated per role
    randomize(m.generator_parameters())
    randomize(m.fake_score_parameters())
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([500, 500])
    cond = m.conditioning({"prompt": PROMPTS[:2]})
    outs = [m.denoiser(x, t, cond, role) for role in (None, "generator", "fake_score")]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])
    assert not torch.allclose(outs[1], outs[2])


def test_generator_step_moves_only_generator(tiny_sd_cfg):
    m = make_module(tiny_sd_cfg)
    randomize(m.fake_score_parameters())  # so eps_real != eps_fake and g != 0
    randomize(m.generator_parameters(), std=0.05)  # A = 0 at init would leave dL/dB = 0 in the first step
    opt_g, _ = m.configure_optimizers()
    gen_before, fake_before = snapshot(m.generator_parameters()), snapshot(m.fake_score_parameters())
    gen, *_ = run_step(m, 0)
    opt_g.zero_grad()
    gen["loss"].backward()
    assert all(p.grad is None for p in m.fake_score_parameters())
    opt_g.step()
    assert all(changed(gen_before, m.generator_parameters()))
    assert not any(changed(fake_before, m.fake_score_parameters()))


def test_fake_score_step_moves_only_fake_score(tiny_sd_cfg):
    m = make_module(tiny_sd_cfg)
    randomize(m.fake_score_parameters(), std=0.05)
    _, opt_f = m.configure_optimizers()
    gen_before, fake_before = snapshot(m.generator_parameters()), snapshot(m.fake_score_parameters())
    gen, cond, uncond, rng = run_step(m, 0)
    fake = m.fake_score_step(gen["x0"].detach(), cond, uncond, rng)
    opt_f.zero_grad()
    fake["loss"].backward()
    assert all(p.grad is None for p in m.generator_parameters())
    opt_f.step()
    assert not any(changed(gen_before, m.generator_parameters()))
    assert all(changed(fake_before, m.fake_score_parameters()))


def test_fake_score_loss_falls_on_fixed_batch(tiny_sd_cfg):
    m = make_module(tiny_sd_cfg, fake_lr=5e-2)
    _, opt_f = m.configure_optimizers()
    gen, cond, uncond, _ = run_step(m, 0)
    x0 = gen["x0"].detach()
    losses = []
    for _ in range(40):
        rng = torch.Generator().manual_seed(123)  # the same t, noise and dropout every time
        loss = m.fake_score_step(x0, cond, uncond, rng)["loss"]
        opt_f.zero_grad()
        loss.backward()
        opt_f.step()
        losses.append(loss.item())
    assert losses[-1] < 0.93 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 0.9 * (len(losses) - 1)  # falls steadily


@pytest.mark.parametrize("cfg_name", ["tiny_sd_cfg", "tiny_pixart_cfg"])
def test_gradient_checkpointing_gives_same_gradients(cfg_name, request):
    cfg = request.getfixturevalue(cfg_name)
    plain = make_module(cfg)
    randomize(plain.generator_parameters())
    randomize(plain.fake_score_parameters())
    ckpt = copy.deepcopy(plain)
    ckpt.denoiser.update_speed(gradient_checkpointing=True)
    assert ckpt.denoiser.speed.group_rotations  # recomputation reuses the pass's precomputed W'
    grads = []
    for m in (plain, ckpt):
        m.train()
        gen, cond, uncond, rng = run_step(m, 7)
        # One backward through both roles: the recomputation must re-enter each role's own adapter.
        fake = m.fake_score_step(gen["x0"], cond, uncond, rng)
        with use_adapter("fake_score"):  # a different role active at backward time must not leak in
            (gen["loss"] + fake["loss"]).backward()
        grads.append([p.grad.clone() for p in m.generator_parameters() + m.fake_score_parameters()])
    assert len(grads[0]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_global_switch_would_break_checkpointing(tiny_sd_cfg):
    """Guard for the test above: recomputing under the wrong role really changes the gradients."""
    import torch.utils.checkpoint as cp

    m = make_module(tiny_sd_cfg)
    randomize(m.generator_parameters())
    m.denoiser.model.enable_gradient_checkpointing(
        gradient_checkpointing_func=lambda f, *a: cp.checkpoint(f, *a, use_reentrant=False)
    )
    ref = make_module(tiny_sd_cfg)
    ref.load_state_dict(m.state_dict())
    grads = []
    for mod in (ref, m):
        mod.train()
        gen, *_ = run_step(mod, 3)
        loss = gen["x0"].square().mean()
        with use_adapter(None):  # backward recomputes with the teacher active
            try:
                loss.backward()
            except torch.utils.checkpoint.CheckpointError:
                return  # torch noticed the recomputation differs: broken, as expected
        grads.append(torch.cat([p.grad.flatten() for p in mod.generator_parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_cfg_batched_equals_separate(tiny_pixart_cfg):
    m = make_module(tiny_pixart_cfg)
    randomize(m.fake_score_parameters())
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([100, 800])
    cond = m.conditioning({"prompt": PROMPTS[:2]})
    uncond = m.null_conditioning()
    batched = m.denoiser.cfg(x, t, cond, uncond, 1.5, "fake_score")
    e_c = m.denoiser(x, t, cond, "fake_score")
    e_u = m.denoiser(x, t, uncond.expand(2), "fake_score")
    assert torch.allclose(batched, e_u + 1.5 * (e_c - e_u), atol=1e-5)


def test_rank_below_one_is_an_error(tiny_sd_cfg):
    with pytest.raises(ValueError, match=r"generator.rank=0: expected an integer >= 1"):
        make_module(tiny_sd_cfg, rank=0)
    with pytest.raises(ValueError, match=r"fake_score.rank=0: expected an integer >= 1"):
        make_module(tiny_sd_cfg, fake_score={"rank": 0})


def test_generate_shapes_and_ema(tiny_sd_cfg):
    m = make_module(tiny_sd_cfg, ema_decay=0.9)
    images = m.generate(PROMPTS[:2], [0, 1])
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    randomize(m.generator_parameters())
    live = m.generate(PROMPTS[:2], [0, 1], use_ema=False)
    ema = m.generate(PROMPTS[:2], [0, 1], use_ema=True)
    assert not torch.allclose(live, ema)
    assert torch.equal(m.generate(PROMPTS[:2], [0, 1], use_ema=False), live)  # swap restored


def test_teacher_unaffected_by_adapters(tiny_sd_cfg):
    m = make_module(tiny_sd_cfg)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    cond = Conditioning(*m.backbone.text_encoder.encode(PROMPTS[:1]))
    before = m.denoiser(x, t, cond, None)
    randomize(m.generator_parameters())
    assert torch.equal(m.denoiser(x, t, cond, None), before)


def test_nested_role_configs_equal_the_shortcuts(tiny_sd_cfg):
    nested = make_module(
        tiny_sd_cfg,
        rank=None,
        fake_rank=None,
        generator={"adapter": "lorad", "rank": 4, "lr": 3e-4, "grad_clip": 0.5},
        fake_score={"rank": 2, "lr": 5e-2},
    )
    short = make_module(tiny_sd_cfg, lr=3e-4, fake_lr=5e-2)
    assert nested.generator_config.rank == short.generator_config.rank == 4
    assert (nested.generator_config.lr, nested.generator_config.grad_clip) == (3e-4, 0.5)
    assert (nested.fake_score_config.rank, nested.fake_score_config.lr) == (2, 5e-2)
    assert (nested.hparams.rank, nested.hparams.fake_rank) == (4, 2)  # what checkpoints and exports read
    gen, fake = nested.configure_optimizers()
    assert (gen.param_groups[0]["lr"], fake.param_groups[0]["lr"]) == (3e-4, 5e-2)
    with pytest.raises(ValueError, match=r"generator: unknown key\(s\) \['rnak'\]"):
        make_module(tiny_sd_cfg, rank=None, generator={"rnak": 4})


def test_a_given_text_encoder_is_used_and_the_backbones_never_loads(tiny_sd_cfg, monkeypatch):
    from wadi.backbones import loading

    def refuse(*a, **k):
        raise AssertionError("the backbone's text encoder must not load when one is given")

    monkeypatch.setattr(loading, "load_text_encoder", refuse)
    seen = []

    class Given:
        def encode(self, prompts):
            seen.append(list(prompts))
            return torch.zeros(len(prompts), 8, 32), None

    m = make_module(tiny_sd_cfg, text_encoder=Given())
    assert m.backbone.text_encoder is None and isinstance(m.text_encoder, Given)
    cond = m.conditioning({"prompt": PROMPTS[:2]})
    assert cond.embeds.shape[0] == 2 and seen == [PROMPTS[:2]]
    none = make_module(tiny_sd_cfg, text_encoder=False)
    with pytest.raises(RuntimeError, match="no text encoder"):
        none.conditioning({"prompt": PROMPTS[:1]})


def test_an_extra_loss_term_adds_to_the_generator_loss(tiny_sd_cfg):
    from wadi.distill.method import Method
    from wadi.distill.vsd import VSDLoss

    class Shift:
        weight = 0.5

        def generator_loss(self, ctx, x0, cond, uncond, rng):
            return {"loss": x0.float().square().mean()}

    plain = make_module(tiny_sd_cfg)
    extra = make_module(tiny_sd_cfg, method=Method(losses={"vsd": VSDLoss(), "shift": Shift()}))
    a, *_ = run_step(plain, 3)
    b, *_ = run_step(extra, 3)
    assert torch.equal(a["loss"], b["loss_vsd"])  # the VSD term draws the same noise with a term after it
    assert torch.allclose(b["loss"], b["loss_vsd"] + 0.5 * b["loss_shift"])
    assert extra.method.fake_steps == 1 and [k for k, _ in extra.method.fake_score_terms] == ["vsd"]
