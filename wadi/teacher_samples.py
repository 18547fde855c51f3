"""`python -m wadi.teacher_samples backbone=<name> dataset=<name> n=<count> out=<dir>`: teacher samples for SwD / PDM.

Loads the backbone (the teacher), takes the dataset's first `n` prompts (the training prompt list: same parser,
seed and order) and writes the sharded dataset of `wadi.data.teacher_samples` (latents, prompts, an embedding
cache). Rerun the same command to resume an interrupted build. `source=renders` (toy world only) stores the toy
scenes' own renders, encoded by the VAE, instead of teacher samples. conf/teacher_samples.yaml lists the keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import wadi.config
from wadi.config import ConfigError


def make_teacher_samples(cfg: DictConfig) -> Path:
    """The CLI's work: check the keys, load the teacher, build (or finish) the dataset; returns its folder."""
    from hydra.utils import instantiate

    from wadi.backbones import load_backbone
    from wadi.data.cache import parse_dtype
    from wadi.data.teacher_samples import SOURCES, build_teacher_samples

    n = cfg.n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r}: expected the number of samples, an integer >= 1")
    if cfg.source not in SOURCES:
        raise ConfigError(f"source={cfg.source!r}: expected one of {list(SOURCES)}")
    if not cfg.out:
        raise ConfigError("out is not set: the dataset's directory")
    datamodule = instantiate(cfg.dataset)
    scene_seeds = None
    if cfg.source == "renders":
        if getattr(datamodule, "source", None) != "toy":
            raise ConfigError("source=renders needs dataset=toy (the toy world renders its own scenes)")
        from wadi.toy.world import sample_seeds

        scene_seeds = sample_seeds(int(datamodule.num_prompts), seed=int(datamodule.seed), split="train")[:n]
    prompts = datamodule.prompts()
    if len(prompts) < n:
        raise ConfigError(f"n={n}: the dataset has only {len(prompts)} prompts")
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    dtype = parse_dtype(cfg.get("model_dtype"), torch.float32)
    backbone = load_backbone(backbone_cfg, dtype=dtype, load_vae=cfg.source == "renders").to(device).eval()
    out = build_teacher_samples(
        backbone,
        prompts[:n],
        cfg.out,
        source=cfg.source,
        steps=int(cfg.steps),
        guidance_scale=float(cfg.guidance_scale),
        seed=int(cfg.seed),
        shard_size=int(cfg.shard_size),
        batch_size=int(cfg.batch_size),
        dtype=cfg.dtype,
        scene_seeds=scene_seeds,
        sample_prompts=list(cfg.dataset.get("sample_prompts") or []),
    )
    print(f"wadi: {n} teacher samples ({cfg.source}) in {out}  (train: method=swd swd.samples={out})")
    return out


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR), config_name="teacher_samples")
def main(cfg: DictConfig) -> None:
    try:
        make_teacher_samples(cfg)
    except ConfigError as err:
        print(f"wadi.teacher_samples: configuration error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
