"""`recipe=paper`: the public scripts' VSD choices, composed over any backbone (conf/recipe/paper.yaml)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from wadi.config import CONF_DIR
from wadi.train import train


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("backbone", ["sd15", "sd21", "pixart", "toy", "toy_pixart"])
def test_paper_recipe_sets_the_public_choices(backbone):
    cfg = _compose(f"backbone={backbone}", "recipe=paper")
    assert cfg.backbone.alpha_T == pytest.approx(0.0047**0.5, rel=1e-6)  # SD's, hard-coded on every backbone
    assert (cfg.vsd.guidance_scale, cfg.vsd.fake_guidance_scale) == (1.5, None)
    assert cfg.vsd.caption_drop == "batch" and cfg.vsd.uncond_prob == 0.1
    assert (cfg.lr, cfg.fake_lr) == (1e-4, 1e-2)
    assert cfg.module.method.losses.vsd.config.guidance_scale == 1.5  # what the module receives


def test_paper_recipe_adapts_adaln_single_on_pixart():
    cfg = _compose("backbone=pixart", "recipe=paper", "dry_run=true")
    metrics, _ = train(cfg)
    assert metrics["parameters"]["generator"] == 82_563_072  # every nn.Linear of the DiT, at rank 128
    assert "adaln_single" not in _compose("backbone=pixart").adapter.targets.pixart.generator.blocks


def test_wadi_recipe_keeps_the_measured_toy_defaults():
    sd, px = _compose("backbone=toy"), _compose("backbone=toy_pixart")
    assert (sd.vsd.guidance_scale, sd.vsd.fake_guidance_scale) == (4.5, 1.0)
    assert (px.vsd.guidance_scale, px.vsd.fake_guidance_scale) == (3.0, 1.0)
    assert (
        px.backbone.alpha_T == pytest.approx(0.0685565) and sd.backbone.alpha_T == 0.15
    )  # CPU job: 0.715 -> 0.861
    assert _compose("backbone=pixart").backbone.alpha_T == pytest.approx(0.0685565)
    assert _compose("experiment=wadi_pixart").backbone.alpha_T == pytest.approx(0.0685565)
