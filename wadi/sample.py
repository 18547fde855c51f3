"""`python -m wadi.sample model=<export dir | checkpoint | teacher dir> prompts=[...] seeds=[...]`.

One step for a WaDi export or checkpoint; `teacher_steps=25 guidance_scale=3.0` samples any diffusers
directory (the teacher) with DDIM + CFG; `hybrid_k=1` the hybrid sampler. Saves one PNG per image, a grid
and prompts.json. The generation keys are conf/generation/default.yaml's; the library is wadi.generation.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import wadi.config  # noqa: F401  (registers resolvers)

# Re-exported: the loaders lived here before wadi.generation (other modules' tests import them from here).
from wadi.generation import (  # noqa: F401
    Generator,
    generator_from_config,
    load_checkpoint_file,
    load_generator,
    load_module_from_checkpoint,
)


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR), config_name="sample")
def main(cfg: DictConfig) -> None:
    from wadi.images import save_grid, save_images

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = list(cfg.prompts)
    seeds = list(cfg.seeds) if cfg.seeds else list(range(cfg.seed, cfg.seed + len(prompts) * cfg.per_prompt))
    prompts = [p for p in prompts for _ in range(cfg.per_prompt)] if not cfg.seeds else prompts
    images = generator_from_config(cfg.generation, device)(prompts, seeds)
    out = Path(cfg.out)
    names = [f"{i:04d}_seed{s}" for i, s in enumerate(seeds)]
    save_images(images, out, names)
    (out / "prompts.json").write_text(
        json.dumps(
            [{"file": f"{n}.png", "prompt": p, "seed": s} for n, p, s in zip(names, prompts, seeds)], indent=2
        )
    )
    grid = save_grid(images, out / "grid.png", nrow=cfg.per_prompt if not cfg.seeds else None)
    print(f"wadi.sample: {len(images)} images in {out}/ (grid: {grid})")


if __name__ == "__main__":
    main()
