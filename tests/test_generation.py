"""wadi.generation: the generation config node (conf/generation) and the loaders built from it."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from wadi.config import CONF_DIR
from wadi.generation import generator_from_config, load_generator
from wadi.samplers import DDIM, Hybrid, OneStep


@pytest.mark.parametrize("command", ["sample", "evaluate"])
def test_top_level_keys_of_the_readme_command_lines_reach_the_generation_node(command):
    overrides = ["model=m", "hybrid_k=1", "teacher=t", "batch_size=100", "compile=true", "teacher_guidance=2"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(command, overrides=overrides)
    assert dict(cfg.generation) == {
        "model": "m",
        "teacher_steps": None,
        "guidance_scale": 1.0,
        "hybrid_k": 1,
        "schedule_steps": 25,
        "teacher_guidance": 2,
        "teacher": "t",
        "use_ema": True,
        "batch_size": 100,
        "compile": True,
    }
    assert cfg.device is None


def test_generator_from_config_is_load_generator_and_its_sampler(tiny_sd_dir):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("sample", overrides=[f"model={tiny_sd_dir}", "teacher_steps=2", "guidance_scale=2.0"])
    gen = generator_from_config(cfg.generation)
    assert gen.sampler == DDIM(2, 2.0, None)
    ref = load_generator(tiny_sd_dir, teacher_steps=2, guidance_scale=2.0)
    assert torch.equal(gen(["a red circle"], [3]), ref(["a red circle"], [3]))
    gen.steps, gen.hybrid_k = None, 0
    assert gen.sampler == OneStep(None, gen.backbone.cfg.alpha_T)
    gen.hybrid_k = 1
    assert isinstance(gen.sampler, Hybrid) and gen.sampler.teacher_steps == 1
