"""`cuda_graphs=true` (issue 16, item 7): config plumbing and refusals on CPU. The graphs themselves only run on a
GPU (experiments/fastlab/NOTES.md has the lead's benchmark command)."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from wadi.config import CONF_DIR, ConfigError, validate_train_config
from wadi.distill.module import WaDiModule
from wadi.speed import SpeedOptions, check_cuda_graphs_device


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_speed_options_refuse_cuda_graphs_without_compiled_passes_or_inductor():
    assert SpeedOptions().compile_mode is None
    assert SpeedOptions(compile="all", cuda_graphs=True).compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="cuda_graphs=true .* compile=false compiles none"):
        SpeedOptions(cuda_graphs=True)
    with pytest.raises(ValueError, match="needs compile_backend=inductor"):
        SpeedOptions(compile="all", compile_backend="aot_eager", cuda_graphs=True)
    with pytest.raises(ValueError, match="true or false"):
        SpeedOptions(compile="all", cuda_graphs="yes")


def test_the_config_key_reaches_the_module_and_bad_combinations_fail_before_loading():
    cfg = _compose("experiment=toy_gpu", "compile=all", "cuda_graphs=true")
    validate_train_config(cfg)
    assert cfg.module.cuda_graphs is True and cfg.module.compile_passes == "all"
    assert _compose().module.cuda_graphs is False  # off by default
    with pytest.raises(ConfigError, match="compile=false compiles none"):
        validate_train_config(_compose("cuda_graphs=true"))
    with pytest.raises(ConfigError, match="compile_backend=inductor"):
        validate_train_config(_compose("compile=true", "compile_backend=aot_eager", "cuda_graphs=true"))


def test_cpu_training_is_refused_at_setup_and_the_denoiser_compiles_in_reduce_overhead(
    tiny_sd_cfg, monkeypatch
):
    with pytest.raises(ValueError, match="compile=false compiles none"):
        WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, cuda_graphs=True)
    m = WaDiModule(backbone=tiny_sd_cfg, rank=4, fake_rank=2, compile_passes="all", cuda_graphs=True)
    assert m.hparams.cuda_graphs is True
    with pytest.raises(ConfigError, match="need a CUDA device; this run trains on cpu"):
        m.setup("fit")
    check_cuda_graphs_device(SpeedOptions(compile="all", cuda_graphs=True), torch.device("cuda", 0))
    check_cuda_graphs_device(SpeedOptions(), torch.device("cpu"))  # off: any device
    # What setup does on a GPU: the passes compile lazily with mode="reduce-overhead" (nothing traced here).
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    m.denoiser.update_speed(compile="all", cuda_graphs=True)
    assert calls[-1]["mode"] == "reduce-overhead" and calls[-1]["fullgraph"] is True
    m.denoiser.update_speed(cuda_graphs=False)  # switching graphs off recompiles in the default mode
    assert calls[-1]["mode"] is None and len(calls) == 2


def test_graphed_passes_build_w_prime_inside_the_graph_with_the_same_eps_and_gradients(
    tiny_sd_cfg, monkeypatch
):
    """Under cuda_graphs a compiled pass traces every layer's W' (no eager prerotation, no W' graph inputs). On
    CPU a counting backend stands in for inductor + CUDA graphs: fullgraph tracing, routing and numbers."""
    import wadi.adapters.prerotate as prerotate_mod
    from wadi.adapters import get_adapter
    from wadi.backbones import Conditioning, load_backbone

    torch.manual_seed(0)
    backbone = load_backbone(tiny_sd_cfg, load_text=False, load_vae=False)
    adapter = get_adapter()
    model = backbone.denoiser.model
    adapter.attach(model, "generator", 4, backbone.cfg.targets("generator", adapter))
    params = adapter.parameters(model, "generator")
    with torch.no_grad():
        for p in params:
            p.normal_(std=0.3)
    denoiser = backbone.denoiser

    def eps_and_grads():
        for p in params:
            p.grad = None
        torch.manual_seed(1)
        x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), Conditioning(torch.randn(2, 16, 32))
        out = denoiser(x, t, cond, "generator")
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in params]

    ref_out, ref_grads = eps_and_grads()  # eager, W' built in groups
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(sum(1 for n in gm.graph.nodes if n.op == "placeholder"))
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda m, mode=None, backend=None, **kw: real_compile(m, backend=counting, **kw)
    )
    built = []
    real_prerotate = prerotate_mod.prerotate
    monkeypatch.setattr(prerotate_mod, "prerotate", lambda *a: built.append(1) or real_prerotate(*a))
    denoiser.update_speed(compile="all", cuda_graphs=True)
    torch._dynamo.reset()
    out, grads = eps_and_grads()
    assert graphs and not built  # traced, and no W' built outside the graph
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    denoiser.update_speed(cuda_graphs=False)  # compile=all without graphs keeps the groups outside
    eps_and_grads()
    assert built
