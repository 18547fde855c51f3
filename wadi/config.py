"""OmegaConf resolvers and config checks shared by every entry point."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


def _find_conf_dir() -> Path:
    """The repository's conf/ in a checkout (editable install, PYTHONPATH), else the copy installed with the
    package as `wadi.conf` (a wheel, `pip install .`: setup.py maps conf/ into the package)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "conf"
    if (package.parent / "pyproject.toml").is_file() and (checkout / "config.yaml").is_file():
        return checkout
    return package / "conf"


class ConfigError(ValueError):
    """A configuration value a user can fix: the message names the key, the value and what was expected."""


def check_keys(cfg: Mapping[str, Any], known: Iterable[str], node: str) -> None:
    """Refuse keys a typed config does not have, naming them and the node (a typo is never ignored)."""
    known = set(known)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{node}: unknown key(s) {unknown}; known keys: {sorted(known)}")


CONF_DIR = _find_conf_dir()


def _precision() -> str:
    """bf16-mixed on a CUDA device, full fp32 on CPU."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _cuda() -> bool:
    """Whether a CUDA device is present: GPU-only speed levers (fused AdamW, cudnn.benchmark) key on it."""
    import torch

    return torch.cuda.is_available()


def _toy_asset(name: str) -> str:
    from wadi.toy.assets import toy_asset_path

    return str(toy_asset_path(name))


def _conf_path(relative: str) -> str:
    return str(CONF_DIR / relative)


def register_resolvers() -> None:
    for name, fn in (
        ("wadi_precision", _precision),
        ("wadi_cuda", _cuda),
        ("toy_asset", _toy_asset),
        ("conf_path", _conf_path),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def _number(node: str, value: Any, expected: str, *, integer: bool = False, low: float | None = None) -> None:
    """Refuse a non-number, a bool, NaN/inf, a fractional integer or a value below `low`, naming the key."""
    import math

    ok = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    ok = ok and math.isfinite(value) and (low is None or value >= low)
    if not ok:
        raise ConfigError(f"{node}={value!r}: expected {expected}")


@dataclass(frozen=True)
class TrainConfig:
    """The run's settings that wadi.train validates before anything slow loads (`validate_train_config`).

    The user-facing shortcuts (`rank`, `lr`, `guidance_scale`, ...) are checked under their own names; the
    nested nodes they feed (`generator`, `fake_score`, `vsd`, `backbone`, `method`) as typed configs that refuse
    unknown keys, naming the key and the node.
    """

    backbone: Any  # wadi.backbones.loading.BackboneConfig
    generator: Any  # wadi.distill.roles.RoleConfig
    fake_score: Any
    vsd: Any  # wadi.distill.vsd.VSDConfig, or None for a method without VSD
    method: Any  # wadi.distill.method.Method
    batch_size: int
    max_steps: int
    ema_decay: float | None
    seed: int


SHORTCUTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rank": ("an integer >= 1 (a fractional rank is refused, not truncated)", {"integer": True, "low": 1}),
    "fake_rank": (
        "an integer >= 1 (a fractional rank is refused, not truncated)",
        {"integer": True, "low": 1},
    ),
    "lr": ("a finite number > 0", {"low": 0}),
    "fake_lr": ("a finite number > 0", {"low": 0}),
    "guidance_scale": ("a finite number >= 0", {"low": 0}),
    "batch_size": ("an integer >= 1", {"integer": True, "low": 1}),
    "max_steps": ("an integer >= 1", {"integer": True, "low": 1}),
    "seed": ("an integer", {"integer": True}),
}


def validate_train_config(cfg: Any) -> TrainConfig:
    """Check a composed training config once, before any weights load; a ConfigError names the key, the value and
    what was expected. Returns the typed configs."""
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

    from wadi.backbones.loading import BackboneConfig
    from wadi.distill.method import build_method
    from wadi.distill.roles import RoleConfig

    try:
        raw = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(f"the configuration does not resolve: {err}") from None
    for key, (expected, rule) in SHORTCUTS.items():
        if key in raw:
            _number(key, raw[key], expected, **rule)
    for key in ("lr", "fake_lr"):
        if key in raw and raw[key] <= 0:
            raise ConfigError(f"{key}={raw[key]!r}: expected a finite number > 0")
    if raw.get("fake_guidance_scale") is not None:
        _number("fake_guidance_scale", raw["fake_guidance_scale"], "null or a finite number >= 0", low=0)
    ema = raw.get("ema_decay")
    if ema is not None:
        _number("ema_decay", ema, "null (no EMA) or a number in (0, 1)")
        if not 0 < ema < 1:
            raise ConfigError(f"ema_decay={ema!r}: expected null (no EMA) or a number in (0, 1)")
    from wadi.distill.guards import NONFINITE_CHOICES
    from wadi.speed import COMPILE_CHOICES

    if raw.get("nonfinite", "stop") not in NONFINITE_CHOICES:
        raise ConfigError(
            f"nonfinite={raw['nonfinite']!r}: expected stop (end the run at the first NaN/inf loss or gradient) "
            "or skip (skip that optimizer step and count it)"
        )
    if raw.get("compile", False) not in COMPILE_CHOICES:
        raise ConfigError(
            f"compile={raw['compile']!r}: expected false, true (the no-grad teacher / fake-score passes) or all"
        )
    if raw.get("cuda_graphs", False):  # its combination with compile (the device is checked at setup)
        from wadi.speed import SpeedOptions

        try:
            SpeedOptions(
                raw.get("compile", False),
                raw.get("compile_backend", "inductor"),
                gradient_checkpointing=bool(raw.get("gradient_checkpointing", False)),
                cuda_graphs=raw["cuda_graphs"],
            )
        except ValueError as err:
            raise ConfigError(str(err)) from None
    backbone = BackboneConfig.from_mapping(raw["backbone"])
    module = raw.get("module") or {}
    generator = RoleConfig.from_mapping(module.get("generator", raw.get("generator")), "generator")
    fake_score = RoleConfig.from_mapping(module.get("fake_score", raw.get("fake_score")), "fake_score")
    method = build_method(module.get("method", raw.get("method")))
    return TrainConfig(
        backbone=backbone,
        generator=generator,
        fake_score=fake_score,
        vsd=method.vsd,
        method=method,
        batch_size=raw.get("batch_size", 1),
        max_steps=raw.get("max_steps", 1),
        ema_decay=ema,
        seed=raw.get("seed", 0),
    )
