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


def null_group_overrides(overrides: Iterable[str], conf_dir: Path | None = None) -> list[str]:
    """`group=null` on the command line turns a config group off, as `~group` does (Hydra itself refuses a null
    group override: "Config group override must be a string or a list"). Other overrides pass unchanged."""
    conf_dir = CONF_DIR if conf_dir is None else Path(conf_dir)
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and value.strip() == "null" and key.isidentifier() and (conf_dir / key).is_dir():
            arg = f"~{key}"
        out.append(arg)
    return out


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
    check_backbone_sizes(backbone)
    module = raw.get("module") or {}
    generator = RoleConfig.from_mapping(module.get("generator", raw.get("generator")), "generator")
    fake_score = RoleConfig.from_mapping(module.get("fake_score", raw.get("fake_score")), "fake_score")
    method = build_method(module.get("method", raw.get("method")))
    strategy = (raw.get("trainer") or {}).get("strategy")
    if isinstance(strategy, dict) and str(strategy.get("_target_", "")).endswith("FSDPStrategy"):
        for node, role in (("generator", generator), ("fake_score", fake_score)):
            if role.adapter == "full":
                raise ConfigError(
                    f"{node}.adapter=full with trainer=fsdp is refused: wadi's FSDP shards only the frozen base and "
                    "keeps every trainable tensor whole on every rank, so a full trainable copy would not be "
                    "sharded (no memory saved, and its gradients are all-reduced whole). Use trainer=ddp or one "
                    f"GPU for {node}.adapter=full, or a low-rank kind (lorad, lora, dora) with trainer=fsdp"
                )
    if hasattr(method.student, "check_backbone"):  # a student for some backbone kinds only (TiUE: U-Nets)
        method.student.check_backbone(backbone.kind)
    if hasattr(method.student, "check_trainer"):  # a student that calls parts of the model (TiUE: no FSDP)
        method.student.check_trainer((raw.get("trainer") or {}).get("strategy"))
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


def _json(path: Path) -> dict | None:
    import json

    return json.loads(path.read_text()) if path.is_file() else None


def check_backbone_sizes(backbone: Any) -> None:
    """`backbone.resolution`, `backbone.latent_size` and the model must agree, checked from the config files only
    (no weights load): latent_size is the denoiser's `sample_size` (<pretrained>/<unet|transformer>/config.json,
    else `arch_config`), and resolution = latent_size x the VAE's downsampling factor (vae/config.json). A file
    that is not there (dry runs without weights) skips its check."""
    from wadi.backbones.loading import KINDS

    if backbone.kind not in KINDS:
        return  # BackboneConfig / check_layout name the kinds
    sub = KINDS[backbone.kind][1]
    root = Path(str(backbone.pretrained)).expanduser() if backbone.pretrained else None
    model_path = root / sub / "config.json" if root is not None else None
    model = _json(model_path) if model_path is not None else None
    if model is None and backbone.arch_config:
        model_path = Path(str(backbone.arch_config))
        model = _json(model_path)
    latent, resolution = backbone.latent_size, backbone.resolution
    sample = (model or {}).get("sample_size")
    if isinstance(sample, list | tuple):
        sample = sample[0]
    if sample is not None and sample != latent:
        factor = resolution // latent if latent and resolution % latent == 0 else None
        fix = f" (and backbone.resolution={sample * factor})" if factor else ""
        raise ConfigError(
            f"backbone.latent_size={latent} but the model's sample_size is {sample} ({model_path}): the "
            f"{sub} was built for {sample}x{sample} latents; set backbone.latent_size={sample}{fix}"
        )
    vae = _json(root / "vae" / "config.json") if root is not None else None
    if vae is not None and vae.get("block_out_channels"):
        factor = 2 ** (len(vae["block_out_channels"]) - 1)
        if latent * factor != resolution:
            raise ConfigError(
                f"backbone.resolution={resolution} but backbone.latent_size={latent} with the VAE's downsampling "
                f"factor {factor} ({root / 'vae' / 'config.json'}) decodes {latent * factor} px images; set "
                f"backbone.resolution={latent * factor} (or backbone.latent_size={resolution // factor})"
            )
