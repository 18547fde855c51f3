"""Build a backbone (denoiser + scheduler + VAE + text encoder) from a local diffusers directory.

Weights always come from disk: wadi never reaches a model hub. `meta=True` builds the denoiser's full-size
architecture from its config alone (no weights), for `dry_run` and parameter counting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from wadi.adapters.base import Adapter
from wadi.adapters.targets import AdapterTargets
from wadi.backbones.denoiser import Denoiser, PixArtDenoiser, UNetDenoiser
from wadi.backbones.text import TextEncoder, load_text_encoder

# kind -> (denoiser wrapper, diffusers subfolder, diffusers class name)
KINDS: dict[str, tuple[type[Denoiser], str, str]] = {
    "unet": (UNetDenoiser, "unet", "UNet2DConditionModel"),
    "pixart": (PixArtDenoiser, "transformer", "PixArtTransformer2DModel"),
}


# Training-recipe keys that lived in backbone files until the method seam (issue 15): now in
# conf/recipe_defaults/<backbone>.yaml as top-level shortcuts. Named in the error so an old file is easy to fix.
MOVED_TO_RECIPE = {
    "guidance_scale": "guidance_scale",
    "fake_guidance_scale": "fake_guidance_scale",
    "default_rank": "rank",
    "default_lr": "lr",
    "default_max_steps": "max_steps",
}


@dataclass
class BackboneConfig:
    """Mirror of `conf/backbone/*.yaml`: where the weights are. Validated once: unknown keys, wrong types and
    impossible sizes raise a ConfigError naming the key (`backbone.<key>`).

    Which layers the adapters cover is the adapter's config, per backbone `kind` (conf/adapter/*.yaml).
    `generator_targets` / `fake_score_targets` are only read from configs written before that (the run
    configs stored in older checkpoints): when set, they override the adapter's targets for this backbone.
    """

    name: str
    kind: str
    pretrained: str | None
    resolution: int
    latent_size: int
    text_max_length: int
    use_text_mask: bool = False
    generator_targets: dict | None = None  # legacy override, see the class docstring
    fake_score_targets: dict | None = None
    arch_config: str | None = None  # a denoiser config.json, for meta builds without weights
    alpha_T: float | None = None  # override of sqrt(alphas_cumprod[T]); None reads the scheduler

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> BackboneConfig:
        from wadi.config import ConfigError, check_keys

        cfg = dict(cfg)
        moved = sorted(set(cfg) & set(MOVED_TO_RECIPE))
        if moved:
            raise ConfigError(
                f"backbone: key(s) {moved} moved out of backbone files to the training recipe "
                f"(conf/recipe_defaults/<backbone>.yaml, top-level "
                f"{[MOVED_TO_RECIPE[k] for k in moved]}): set them there or on the command line"
            )
        check_keys(cfg, cls.__dataclass_fields__, "backbone")
        missing = sorted(
            f.name
            for f in cls.__dataclass_fields__.values()
            if f.name not in cfg and f.default is MISSING and f.default_factory is MISSING
        )
        if missing:
            raise ConfigError(f"backbone: missing key(s) {missing}")
        return cls(**cfg)

    def __post_init__(self) -> None:
        from wadi.config import ConfigError

        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"backbone.{key}={getattr(self, key)!r}: expected {expected}")

        for key in ("name", "kind"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise bad(key, "a non-empty string")
        if self.kind not in KINDS:
            raise bad("kind", f"one of the known kinds {sorted(KINDS)}")
        for key in ("resolution", "latent_size", "text_max_length"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(key, "an integer >= 1")
        if not isinstance(self.use_text_mask, bool):
            raise bad("use_text_mask", "true or false")
        for key in ("pretrained", "arch_config"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, str | Path):
                raise bad(key, "a path or null")
        a = self.alpha_T
        if a is not None and (isinstance(a, bool) or not isinstance(a, int | float) or not 0 < a < 1):
            raise bad("alpha_T", "null (read the scheduler) or a number in (0, 1)")
        for key in ("generator_targets", "fake_score_targets"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, Mapping):
                raise bad(
                    key,
                    "null or a mapping {blocks: [...], skip: [...]} (legacy; targets live in conf/adapter/)",
                )

    @classmethod
    def from_stored(cls, cfg: Mapping[str, Any]) -> BackboneConfig:
        """A backbone config stored by an earlier wadi (an export's wadi_export.json, a checkpoint's run config):
        the recipe keys it may still carry (MOVED_TO_RECIPE) are dropped, not refused; everything else is checked."""
        return cls.from_mapping({k: v for k, v in dict(cfg).items() if k not in MOVED_TO_RECIPE})

    def targets(self, role: str, adapter: Adapter) -> AdapterTargets:
        """The layers `adapter` covers for `role` ("generator" or "fake_score") on this backbone."""
        legacy = self.generator_targets if role == "generator" else self.fake_score_targets
        return AdapterTargets.from_mapping(legacy) if legacy else adapter.targets(self.kind, role)


def check_layout(pretrained: str | Path | None, kind: str, need_text: bool = True) -> Path:
    """The diffusers directory, or an error naming the path and the subfolders a `kind` model needs."""
    if kind not in KINDS:
        raise ValueError(f"unknown backbone kind {kind!r}; known kinds: {sorted(KINDS)}")
    sub = KINDS[kind][1]
    expected = [sub, "scheduler", "vae"] + (["text_encoder", "tokenizer"] if need_text else [])
    if pretrained is None:
        raise FileNotFoundError(
            f"weights not found: backbone.pretrained is not set (a diffusers directory with {expected})"
        )
    root = Path(str(pretrained)).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"weights not found at {root}: expected a local diffusers directory with subfolders "
            f"{', '.join(e + '/' for e in expected)} (set backbone.pretrained=<dir>)"
        )
    missing = [e for e in expected if not (root / e).is_dir()]
    if missing:
        other = {"unet": "transformer", "pixart": "unet"}[kind]
        hint = ""
        if (root / other).is_dir():
            hint = (
                f" It has {other}/ instead: is it a {'PixArt' if other == 'transformer' else 'U-Net'} model? "
            )
        raise FileNotFoundError(
            f"wrong layout at {root}: backbone kind {kind!r} expects subfolders "
            f"{', '.join(e + '/' for e in expected)}; missing {', '.join(m + '/' for m in missing)}.{hint}"
        )
    return root


def _denoiser_class(kind: str):
    import diffusers

    return getattr(diffusers, KINDS[kind][2])


def build_denoiser(cfg: BackboneConfig, meta: bool = False, dtype: torch.dtype = torch.float32) -> Denoiser:
    """The frozen denoiser; on the meta device from its config when `meta` (no weights read)."""
    wrapper, sub, _ = KINDS[cfg.kind]
    model_cls = _denoiser_class(cfg.kind)
    if meta:
        config_path = (
            Path(cfg.arch_config) if cfg.arch_config else Path(str(cfg.pretrained)) / sub / "config.json"
        )
        if not config_path.is_file():
            raise FileNotFoundError(f"architecture config not found at {config_path} (backbone {cfg.name!r})")
        with config_path.open() as f:
            config = json.load(f)
        with torch.device("meta"):
            model = model_cls.from_config(config)
    else:
        root = check_layout(cfg.pretrained, cfg.kind, need_text=False)
        model = model_cls.from_pretrained(root / sub, torch_dtype=dtype, local_files_only=True)
    model.requires_grad_(False)
    return wrapper(model)


class Backbone(nn.Module):
    """Everything WaDi needs from a pretrained text-to-image model, with one frozen denoiser."""

    def __init__(
        self,
        cfg: BackboneConfig,
        denoiser: Denoiser,
        alphas_cumprod: Tensor,
        vae: nn.Module | None = None,
        text_encoder: TextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.denoiser = denoiser
        self.vae = vae
        self.text_encoder = text_encoder
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def train(self, mode: bool = True) -> Backbone:
        """Only the denoiser follows train/eval: the frozen text encoder and VAE stay in eval (no dropout)."""
        super().train(mode)
        for frozen in (self.vae, self.text_encoder):
            if frozen is not None:
                frozen.eval()
        return self

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.denoiser.in_channels, self.cfg.latent_size, self.cfg.latent_size)

    @torch.no_grad()
    def decode(self, x0: Tensor) -> Tensor:
        """Latents -> images in [0, 1]."""
        if self.vae is None:
            raise RuntimeError(f"backbone {self.cfg.name!r} was loaded without its VAE")
        vae_dtype = next(self.vae.parameters()).dtype
        images = self.vae.decode(x0.to(vae_dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        return (images.float() / 2 + 0.5).clamp(0, 1)


def load_scheduler_alphas(root: Path) -> Tensor:
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(root / "scheduler", local_files_only=True)
    return scheduler.alphas_cumprod.clone()


def load_backbone(
    cfg: BackboneConfig | Mapping[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    load_vae: bool = True,
    load_text: bool = True,
) -> Backbone:
    """Load denoiser, scheduler, and optionally VAE and text encoder from `cfg.pretrained`."""
    from diffusers import AutoencoderKL

    if not isinstance(cfg, BackboneConfig):
        cfg = BackboneConfig.from_mapping(cfg)
    root = check_layout(cfg.pretrained, cfg.kind, need_text=load_text)
    denoiser = build_denoiser(cfg, dtype=dtype)
    vae = (
        AutoencoderKL.from_pretrained(root / "vae", torch_dtype=dtype, local_files_only=True)
        if load_vae
        else None
    )
    if vae is not None:
        vae.requires_grad_(False).eval()
    text = load_text_encoder(root, cfg.text_max_length, cfg.use_text_mask, dtype) if load_text else None
    return Backbone(cfg, denoiser, load_scheduler_alphas(root), vae, text)
