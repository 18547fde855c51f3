"""Adapter targets per backbone kind (conf/adapter/lorad.yaml), as every backbone composes them."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from wadi.adapters import get_adapter
from wadi.backbones.loading import KINDS, BackboneConfig
from wadi.config import CONF_DIR


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("backbone", ["sd15", "sd21", "pixart", "toy", "toy_pixart"])
def test_every_backbone_takes_its_kinds_targets_from_the_adapter(backbone):
    cfg = _compose(f"backbone={backbone}")
    assert "generator_targets" not in cfg.backbone  # defined once, per kind, in conf/adapter/
    adapter = get_adapter(OmegaConf.to_container(cfg.module.adapter, resolve=True))
    bb = BackboneConfig.from_mapping(OmegaConf.to_container(cfg.backbone, resolve=True))
    for role in ("generator", "fake_score"):
        assert bb.targets(role, adapter) == get_adapter().targets(bb.kind, role)


def test_the_adapter_config_covers_every_backbone_kind():
    assert set(get_adapter().target_config) == set(KINDS)


def test_paper_recipe_overrides_the_pixart_generator_only():
    paper = get_adapter(OmegaConf.to_container(_compose("backbone=pixart", "recipe=paper").adapter))
    wadi = get_adapter(OmegaConf.to_container(_compose("backbone=pixart").adapter))
    assert paper.targets("pixart", "generator").blocks[-1] == "adaln_single"
    assert paper.targets("pixart", "fake_score") == wadi.targets("pixart", "fake_score")
    assert paper.targets("unet", "generator") == wadi.targets("unet", "generator")


def test_legacy_backbone_targets_still_override():
    """Run configs stored in older checkpoints carry the targets under the backbone; they still rule."""
    cfg = BackboneConfig(
        "old", "pixart", None, 64, 8, 16, generator_targets={"blocks": ["transformer_blocks", "adaln_single"]}
    )
    adapter = get_adapter()
    assert cfg.targets("generator", adapter).blocks == ["transformer_blocks", "adaln_single"]
    assert cfg.targets("fake_score", adapter) == adapter.targets("pixart", "fake_score")


def test_stored_backbone_configs_of_an_earlier_wadi_still_load():
    """Exports and checkpoints written before the recipe keys left the backbone files load (the keys are dropped);
    a backbone file that still has them is refused, naming where they went."""
    import pytest

    from wadi.backbones.loading import BackboneConfig
    from wadi.config import ConfigError
    from wadi.testing import tiny_backbone_config

    old = {
        **tiny_backbone_config("/nowhere", "unet"),
        "guidance_scale": 4.5,
        "default_rank": 64,
        "default_lr": 1e-3,
    }
    assert BackboneConfig.from_stored(old) == BackboneConfig.from_mapping(
        tiny_backbone_config("/nowhere", "unet")
    )
    with pytest.raises(ConfigError, match="recipe_defaults"):
        BackboneConfig.from_mapping(old)
    with pytest.raises(ConfigError, match="unknown key"):
        BackboneConfig.from_stored({**old, "latnet_size": 8})
