"""Typed, validated configs (issue 15): one clean error naming the key, the value and what was expected, before
anything slow loads; the user-facing shortcuts compose into the nested role configs; `method=wadi` composes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from wadi.backbones.loading import BackboneConfig
from wadi.config import CONF_DIR, ConfigError, validate_train_config
from wadi.distill.method import Method
from wadi.distill.roles import RoleConfig
from wadi.distill.student import OneStepStudent
from wadi.distill.vsd import VSDConfig, VSDLoss
from wadi.testing import tiny_backbone_config


def _compose(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as err:
        validate_train_config(_compose(*overrides))
    return str(err.value)


# ------------------------------------------------------------------ unknown keys name the key and the node
def test_unknown_backbone_key_is_refused_naming_it():
    raw = tiny_backbone_config("/nowhere", "unet") | {"latnet_size": 8}
    with pytest.raises(
        ConfigError, match=r"backbone: unknown key\(s\) \['latnet_size'\]; known keys: \[.*latent_size"
    ):
        BackboneConfig.from_mapping(raw)
    assert "backbone: unknown key(s) ['latnet_size']" in _error("+backbone.latnet_size=8")


def test_recipe_keys_in_a_backbone_file_say_where_they_moved():
    raw = tiny_backbone_config("/nowhere", "unet") | {"default_rank": 4, "guidance_scale": 1.5}
    with pytest.raises(
        ConfigError, match=r"\['default_rank', 'guidance_scale'\] moved .* \['rank', 'guidance_scale'\]"
    ):
        BackboneConfig.from_mapping(raw)


def test_unknown_generator_and_fake_score_keys_are_refused():
    assert "generator: unknown key(s) ['rnak']" in _error("+generator.rnak=4")
    assert "fake_score: unknown key(s) ['lr_']" in _error("+fake_score.lr_=4")
    with pytest.raises(ConfigError, match=r"generator: unknown key\(s\) \['fake_rank'\]"):
        RoleConfig.from_mapping({"rank": 4, "fake_rank": 2}, "generator")


def test_unknown_vsd_key_is_refused():
    assert "vsd: unknown key(s) ['guidnce']" in _error("+vsd.guidnce=3")


def test_unknown_adapter_lists_the_known_ones():
    known = "expected one of the known adapters ['dora', 'full', 'lora', 'lorad']"
    assert f"generator.adapter='lorax': {known}" in _error("generator.adapter=lorax")
    assert f"fake_score.adapter='LoRA': {known}" in _error("fake_score.adapter=LoRA")


# ------------------------------------------------------------------ types and ranges
@pytest.mark.parametrize(
    "override,message",
    [
        ("rank=abc", "rank='abc': expected an integer >= 1"),
        ("rank=16.5", "rank=16.5: expected an integer >= 1 (a fractional rank is refused, not truncated)"),
        ("fake_rank=0", "fake_rank=0: expected an integer >= 1"),
        ("generator.rank=8.5", "generator.rank=8.5: expected an integer >= 1"),
        ("lr=-1e-4", "lr=-0.0001: expected a finite number > 0"),
        ("fake_lr=inf", "fake_lr=inf: expected a finite number > 0"),
        ("lr=0", "lr=0: expected a finite number > 0"),
        ("guidance_scale=-1", "guidance_scale=-1: expected a finite number >= 0"),
        ("guidance_scale=nan", "guidance_scale=nan: expected a finite number >= 0"),
        ("fake_guidance_scale=-2", "fake_guidance_scale=-2: expected null or a finite number >= 0"),
        ("max_steps=0", "max_steps=0: expected an integer >= 1"),
        ("batch_size=0", "batch_size=0: expected an integer >= 1"),
        ("ema_decay=1.5", "ema_decay=1.5: expected null (no EMA) or a number in (0, 1)"),
        ("backbone.resolution=abc", "backbone.resolution='abc': expected an integer >= 1"),
        (
            "backbone.alpha_T=2",
            "backbone.alpha_T=2: expected null (read the scheduler) or a number in (0, 1)",
        ),
        ("vsd.fake_steps=0", "vsd.fake_steps=0: expected an integer >= 1"),
        ("nonfinite=ignore", "nonfinite='ignore': expected stop"),
        ("compile=grad", "compile='grad': expected false, true"),
    ],
)
def test_bad_values_are_refused_naming_key_value_and_expectation(override, message):
    assert message in _error(override)


def test_train_validates_before_loading_anything(tmp_path):
    from wadi.train import train

    cfg = _compose("rank=16.5", "backbone.pretrained=/does/not/exist")
    with pytest.raises(ConfigError, match="rank=16.5"):  # not FileNotFoundError: validation comes first
        train(cfg)


@pytest.mark.slow
def test_cli_prints_one_clean_error_and_exits_2(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "wadi.train", "rank=16.5", f"output_root={tmp_path}", "logger=csv"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert "configuration error: rank=16.5: expected an integer >= 1" in out.stderr
    assert "Traceback" not in out.stderr and "Set the environment variable HYDRA_FULL_ERROR" not in out.stderr


# ------------------------------------------------------------------ shortcuts compose to the nested values
def test_shortcuts_compose_into_the_nested_role_configs():
    cfg = _compose(
        "backbone=pixart",
        "rank=64",
        "fake_rank=16",
        "lr=3e-4",
        "fake_lr=1e-3",
        "guidance_scale=4.5",
        "fake_guidance_scale=1.0",
        "batch_size=8",
        "max_steps=7",
        "ema_decay=0.99",
        "vsd.fake_steps=2",
        "backbone.alpha_T=0.15",
    )
    typed = validate_train_config(cfg)
    assert typed.generator == RoleConfig(adapter="lorad", rank=64, lr=3e-4, grad_clip=1.0)
    assert typed.fake_score == RoleConfig(adapter="lorad", rank=16, lr=1e-3, grad_clip=1.0)
    assert (typed.vsd.guidance_scale, typed.vsd.fake_guidance_scale, typed.vsd.fake_steps) == (4.5, 1.0, 2)
    assert (typed.batch_size, typed.max_steps, typed.ema_decay, typed.backbone.alpha_T) == (8, 7, 0.99, 0.15)
    module = OmegaConf.to_container(cfg.module, resolve=True)
    assert module["generator"] == {"adapter": "lorad", "rank": 64, "lr": 3e-4, "grad_clip": 1.0}
    assert module["fake_score"] == {"adapter": "lorad", "rank": 16, "lr": 1e-3, "grad_clip": 1.0}
    assert module["method"]["losses"]["vsd"]["config"]["guidance_scale"] == 4.5
    assert cfg.trainer.max_steps == 7 and cfg.dataset.batch_size == 8 and cfg.name == "pixart_r64"


@pytest.mark.parametrize(
    "backbone,rank,lr,max_steps,gs,fgs",
    [
        ("toy", 64, 1e-3, 150, 4.5, 1.0),
        ("toy_pixart", 64, 1e-3, 150, 3.0, 1.0),
        ("sd15", 256, 1e-4, 21875, 1.5, None),
        ("sd21", 256, 1e-4, 21875, 1.5, None),
        ("pixart", 128, 1e-4, 21875, 1.5, None),
    ],
)
def test_per_backbone_recipe_defaults_are_unchanged(backbone, rank, lr, max_steps, gs, fgs):
    cfg = _compose(f"backbone={backbone}")
    assert (cfg.rank, cfg.fake_rank, cfg.lr, cfg.fake_lr) == (rank, 32, lr, 1e-2)
    assert (cfg.max_steps, cfg.guidance_scale, cfg.fake_guidance_scale) == (max_steps, gs, fgs)
    typed = validate_train_config(cfg)
    assert (typed.generator.rank, typed.generator.lr, typed.vsd.guidance_scale) == (rank, lr, gs)
    assert not {"guidance_scale", "default_rank", "default_lr", "default_max_steps"} & set(cfg.backbone)


def test_method_wadi_composes_to_the_one_step_student_and_vsd():
    cfg = _compose("method=wadi")
    assert OmegaConf.to_container(cfg.module, resolve=True) == OmegaConf.to_container(
        _compose().module, resolve=True
    )
    method = validate_train_config(cfg).method
    assert isinstance(method, Method) and method.name == "wadi"
    assert isinstance(method.student, OneStepStudent)
    assert list(method.losses) == ["vsd"] and isinstance(method.losses["vsd"], VSDLoss)
    assert method.vsd == VSDConfig(guidance_scale=4.5, fake_guidance_scale=1.0) and method.fake_steps == 1


def test_an_extra_loss_term_is_added_by_config():
    cfg = _compose()
    with open_dict(cfg):
        cfg.method.losses.extra = {"_target_": "tests.test_config.ZeroLoss", "weight": 0.5}
    method = validate_train_config(cfg).method
    assert list(method.losses) == ["vsd", "extra"]
    assert [k for k, _ in method.generator_terms] == ["vsd", "extra"]
    assert [k for k, _ in method.fake_score_terms] == ["vsd"]


class ZeroLoss:
    """A generator-only loss term (for the test above)."""

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def generator_loss(self, ctx, x0, cond, uncond, rng):
        return {"loss": (x0 * 0).sum()}
