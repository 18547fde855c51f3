"""torch.compile paths (wadi.speed): same numbers as eager, one graph per role or batch shape, no state-dict leak.

A counting backend runs the captured graph eagerly, so these tests check tracing (fullgraph: a graph break
fails), routing and recompiles on CPU in seconds; the speed itself is measured in experiments/bench.
"""

from __future__ import annotations

import copy

import pytest
import torch

from wadi.distill.module import WaDiModule
from wadi.sample import Generator
from wadi.speed import SpeedOptions


class CountingBackend:
    """A torch.compile backend that records each graph it is given and runs it as is."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs += 1
        return gm.forward


def _randomize(params) -> None:
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.3)


def test_compiled_cfg_passes_match_eager_and_only_run_without_grad(tiny_sd_cfg):
    torch.manual_seed(0)
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2)
    _randomize(m.fake_score_parameters())
    keys = set(m.state_dict())
    cond = m.conditioning({"prompt": ["a red circle", "a blue square"]})
    uncond = m.null_conditioning()
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    with torch.no_grad():
        eager = {role: m.denoiser.cfg(x, t, cond, uncond, 3.0, role) for role in (None, "fake_score")}
    backend = CountingBackend()
    m.denoiser.update_speed(compile=True, compile_backend=backend)
    with torch.no_grad():
        for role, expected in eager.items():
            torch.testing.assert_close(m.denoiser.cfg(x, t, cond, uncond, 3.0, role), expected)
        assert backend.graphs == 2  # one graph per role: the adapter choice is a guard
        # Adapter updates are graph inputs, not constants: no recompile, and the new values are used.
        _randomize(m.fake_score_parameters())
        updated = m.denoiser.cfg(x, t, cond, uncond, 3.0, "fake_score")
        assert backend.graphs == 2 and not torch.allclose(updated, eager["fake_score"])
        e_u = m.denoiser(x, t, uncond.expand(2), "fake_score")
        e_c = m.denoiser(x, t, cond, "fake_score")
        torch.testing.assert_close(updated, e_u + 3.0 * (e_c - e_u), rtol=1e-4, atol=1e-4)
    m.denoiser.cfg(x, t, cond, uncond, 3.0, "fake_score")  # with grad: eager, no new graph
    assert backend.graphs == 2
    assert set(m.state_dict()) == keys  # the compiled graph is not a registered submodule


@pytest.mark.parametrize("cfg_name", ["tiny_sd_cfg", "tiny_pixart_cfg"])
def test_compile_all_vsd_step_matches_eager(cfg_name, request):
    """The module's own generator and fake-score steps under compile=all: the same losses and gradients."""
    torch.manual_seed(0)
    eager = WaDiModule(backbone=request.getfixturevalue(cfg_name), rank=4, fake_rank=2)
    _randomize(eager.generator_parameters())
    _randomize(eager.fake_score_parameters())
    compiled = copy.deepcopy(eager)
    backend = CountingBackend()
    compiled.denoiser.update_speed(compile="all", compile_backend=backend)
    results = []
    for m in (eager, compiled):
        rng = torch.Generator().manual_seed(7)
        cond = m.conditioning({"prompt": ["a red circle", "a blue square"]})
        uncond = m.null_conditioning()
        gen = m.generator_step(cond, uncond, rng)
        fake = m.fake_score_step(gen["x0"], cond, uncond, rng)
        (gen["loss"] + fake["loss"]).backward()
        params = m.generator_parameters() + m.fake_score_parameters()
        results.append([gen["loss"].detach(), fake["loss"].detach()] + [p.grad.clone() for p in params])
    # Teacher and fake-score CFG (no grad), generator and fake score (with grad): one graph each.
    assert backend.graphs == 4
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_many_compiled_modules_in_one_process(tiny_sd_cfg):
    """An in-process Hydra multirun builds a module per job. Dynamo counts graphs per code object, and
    every job's denoiser shares one forward, so each compile must make room for its own graphs: at the
    default limit (8) the third compile=all job failed under fullgraph. Here the limit starts at 1."""
    torch._dynamo.reset()  # earlier tests' graphs on the same code object would count too
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    with torch._dynamo.config.patch(recompile_limit=1):
        for _job in range(2):
            m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2)
            m.denoiser.update_speed(compile="all", compile_backend=CountingBackend())
            cond = m.conditioning({"prompt": ["a red circle", "a blue square"]})
            for role in ("generator", "fake_score"):
                m.denoiser(x, t, cond, role).mean().backward()
            with torch.no_grad():
                for role in (None, "fake_score"):
                    m.denoiser.cfg(x, t, cond, m.null_conditioning(), 3.0, role)


def test_compiled_sampler_pads_the_last_batch_and_matches_eager(tiny_sd_cfg):
    from wadi.backbones import load_backbone

    torch.manual_seed(0)
    backbone = load_backbone(tiny_sd_cfg).eval()
    prompts, seeds = ["a red circle", "a blue square", "a green star"], [3, 4, 5]
    eager = Generator(backbone, None, None, 1.0, batch_size=2)(prompts, seeds)
    backend = CountingBackend()
    gen = Generator(backbone, None, None, 1.0, batch_size=2).compile(backend=backend)
    images = gen(prompts, seeds)
    assert images.shape == eager.shape
    torch.testing.assert_close(images, eager, rtol=1e-4, atol=1e-4)
    assert backend.graphs == 2  # denoiser and VAE decoder, once each: the ragged last batch was padded


def test_compile_config_key_reaches_the_module(tiny_sd_cfg):
    """`compile=true` in the run config compiles the frozen passes at setup (lazily: nothing traced yet)."""
    from hydra import compose, initialize_config_dir

    from wadi.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["compile=true"])
    assert cfg.module.compile_passes is True
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_passes=cfg.module.compile_passes)
    assert m.denoiser.compiled is None
    m.setup("fit")
    assert m.denoiser.compiled is not None and m.denoiser.speed.compile is True


def test_compile_all_reaches_the_module_and_bad_values_are_refused(tiny_sd_cfg):
    from hydra import compose, initialize_config_dir

    from wadi.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["compile=all"])
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_passes=cfg.module.compile_passes)
    m.setup("fit")
    assert m.denoiser.compiled is not None and m.denoiser.speed.compile == "all"
    with pytest.raises(ValueError, match="compile must be false, true .* or all"):
        WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_passes="grad")
    with pytest.raises(ValueError, match="compile=all with gradient_checkpointing=true"):
        WaDiModule(
            backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_passes="all", gradient_checkpointing=True
        )


def test_fsdp_refuses_compiled_passes(tiny_sd_cfg):
    from wadi.distributed import check_fsdp_compatible

    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_passes=True)
    check_fsdp_compatible(m)  # nothing compiled yet: fine
    m.setup("fit")
    with pytest.raises(ValueError, match="compile=true / compile=all is not supported with trainer=fsdp"):
        check_fsdp_compatible(m)


def test_compiled_training_passes_match_eager_gradients(tiny_sd_cfg):
    """With grad passes compiled, eps and the adapters' gradients equal eager; one graph per training role."""
    torch.manual_seed(0)
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2)
    for params in (m.generator_parameters(), m.fake_score_parameters()):
        _randomize(params)
    cond = m.conditioning({"prompt": ["a red circle", "a blue square"]})
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 700])
    roles = {"generator": m.generator_parameters(), "fake_score": m.fake_score_parameters()}

    def eps_and_grads(role):
        params = roles[role]
        for p in params:
            p.grad = None
        eps = m.denoiser(x, t, cond, role)
        eps.square().mean().backward()
        return eps.detach(), [p.grad.clone() for p in params]

    eager = {role: eps_and_grads(role) for role in roles}
    backend = CountingBackend()
    m.denoiser.update_speed(compile="all", compile_backend=backend)
    for role, (eps, grads) in eager.items():
        got_eps, got_grads = eps_and_grads(role)
        torch.testing.assert_close(got_eps, eps)
        for got, expected in zip(got_grads, grads, strict=True):
            torch.testing.assert_close(got, expected)
    assert backend.graphs == 2
    with torch.no_grad():
        m.denoiser(x, t, cond, "generator")  # a no-grad pass outside cfg (sample grids): eager
    assert backend.graphs == 2


def test_speed_options_refuse_bad_values_and_upgrade_in_place(tiny_sd_cfg):
    """One frozen options object: invalid combinations fail at construction; true -> all keeps the graph."""
    with pytest.raises(ValueError, match="compile must be false, true .* or all"):
        SpeedOptions(compile="grad")
    with pytest.raises(ValueError, match="compile=all with gradient_checkpointing=true"):
        SpeedOptions(compile="all", gradient_checkpointing=True)
    with pytest.raises(AttributeError):
        SpeedOptions().compile = True  # frozen: change it through the denoiser
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2)
    assert m.denoiser.speed == SpeedOptions()
    m.denoiser.update_speed(compile=True, compile_backend=CountingBackend())
    graph = m.denoiser.compiled
    m.denoiser.update_speed(compile="all")
    assert m.denoiser.compiled is graph and m.denoiser.speed.compile == "all"
    m.denoiser.update_speed(compile=False)
    assert m.denoiser.compiled is None
