"""`python -m wadi.cache_prompts backbone=<name> dataset=<name> cache_dir=<dir>`: encode the prompts once.

Composes the training config, so the prompt list (file, format, seed, max_samples) is exactly the one
training will stream, and writes `<cache_dir>/<encoder_hash[:16]>-<prompts_hash[:16]>/`. Rerun the same
command to resume an interrupted build. Optional knobs (add with `+key=value` while conf/config.yaml lacks
them): `cache_batch_size` (64), `cache_shard_size` (1024), `cache_dtype` (null: the encoder's dtype),
`cache_encoder_dtype` (null: float16 on CUDA, float32 on CPU), `cache_compact` (true).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import wadi.config  # noqa: F401  (registers resolvers)
from wadi.data.cache import TextEncoderLike, backbone_encoder_hash, build_cache, parse_dtype

log = logging.getLogger(__name__)

# Where a run of this CLI writes nothing but the cache: no Hydra run folder inside a training run's folder.
_DEFAULT_OVERRIDES = ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=stdout")


def load_encoder(backbone: DictConfig, dtype: torch.dtype, device: str) -> TextEncoderLike:
    """The frozen text encoder of `backbone`. This is the single place the CLI builds it (lead: wire here)."""
    from wadi.backbones.text import load_text_encoder

    encoder = load_text_encoder(
        backbone.pretrained, int(backbone.text_max_length), bool(backbone.use_text_mask), dtype=dtype
    )
    return encoder.to(device)


def cache_prompts(cfg: DictConfig) -> Path:
    """Load the dataset's prompts and the backbone's text encoder, build (or finish) the cache."""
    from hydra.utils import instantiate

    if not cfg.get("cache_dir"):
        raise ValueError(
            "cache_dir is not set: python -m wadi.cache_prompts ... cache_dir=<dir> (or +cache_dir=)"
        )
    datamodule = instantiate(cfg.dataset)
    prompts = datamodule.prompts()  # the training list itself: same parser, seed and max_samples
    device = "cuda" if torch.cuda.is_available() else "cpu"
    default_dtype = torch.float16 if device == "cuda" else torch.float32
    encoder_dtype = parse_dtype(cfg.get("cache_encoder_dtype"), default_dtype)
    log.info(
        "encoding %d prompts with %s (%s, %s)", len(prompts), cfg.backbone.pretrained, encoder_dtype, device
    )
    encoder = load_encoder(cfg.backbone, encoder_dtype, device)
    path = build_cache(
        prompts,
        encoder,
        cfg.cache_dir,
        batch_size=int(cfg.get("cache_batch_size") or 64),
        shard_size=int(cfg.get("cache_shard_size") or 1024),
        dtype=cfg.get("cache_dtype"),
        extra_prompts=list(cfg.dataset.get("sample_prompts") or []),
        compact=bool(cfg.get("cache_compact", True)),
        encoder_hash=backbone_encoder_hash(
            cfg.backbone
        ),  # what training computes without loading the encoder
    )
    print(f"wadi: {len(prompts)} prompt embeddings cached in {path}")
    return path


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    cache_prompts(cfg)


def _with_default_overrides(argv: list[str]) -> list[str]:
    given = {a.split("=", 1)[0].lstrip("+~") for a in argv}
    return argv + [o for o in _DEFAULT_OVERRIDES if o.split("=", 1)[0] not in given]


if __name__ == "__main__":
    from wadi.cli_help import exit_if_help

    only = {"backbone", "dataset", "cache_dir", "seed"}  # the training config's keys this command reads
    exit_if_help(sys.argv[1:], "wadi.cache_prompts", __doc__, "config.yaml", only=only)
    sys.argv[1:] = _with_default_overrides(sys.argv[1:])
    main()
