"""torch.compile paths (wadi.speed): same numbers as eager, one graph per role or batch shape, no state-dict leak.

A counting backend runs the captured graph eagerly, so these tests check tracing (fullgraph: a graph break
fails), routing and recompiles on CPU in seconds; the speed itself is measured in experiments/bench.
"""

from __future__ import annotations

import pytest
import torch

from wadi.distill.module import WaDiModule
from wadi.sample import Generator
from wadi.speed import compile_frozen_passes


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
    compile_frozen_passes(m.denoiser, backend=backend)
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
    assert cfg.module.compile_frozen is True
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_frozen=cfg.module.compile_frozen)
    assert m.denoiser.compiled_model is None
    m.setup("fit")
    assert m.denoiser.compiled_model is not None


def test_fsdp_refuses_compiled_passes(tiny_sd_cfg):
    from wadi.distributed import check_fsdp_compatible

    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_frozen=True)
    check_fsdp_compatible(m)  # nothing compiled yet: fine
    m.setup("fit")
    with pytest.raises(ValueError, match="compile=true is not supported with trainer=fsdp"):
        check_fsdp_compatible(m)
