"""`python -m wadi.sample model=<export dir | checkpoint | teacher dir> prompts=[...] seeds=[...]`.

One step for a WaDi export or checkpoint; `teacher_steps=25 guidance_scale=3.0` samples any diffusers
directory (the teacher) with DDIM + CFG; `hybrid_k=1` the hybrid sampler. Saves one PNG per image, a grid
and prompts.json. The generation keys are conf/generation/default.yaml's; the library is wadi.generation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

import wadi.config  # (importing it registers the resolvers)
from wadi.config import ConfigError

# Re-exported: the loaders lived here before wadi.generation (other modules' tests import them from here).
from wadi.generation import (  # noqa: F401
    Generator,
    generator_from_config,
    load_checkpoint_file,
    load_generator,
    load_module_from_checkpoint,
    prompt_list,
)


@hydra.main(version_base="1.3", config_path=str(wadi.config.CONF_DIR), config_name="sample")
def _main(cfg: DictConfig) -> None:
    try:
        sample(cfg)
    except (ConfigError, FileNotFoundError) as err:  # a user's mistake: one paragraph, no traceback
        print(f"wadi.sample: error: {err}", file=sys.stderr)
        sys.exit(2)


def sample(cfg: DictConfig) -> None:
    """Generate, save one PNG per image, prompts.json and a grid (the body of `python -m wadi.sample`)."""
    from wadi.console import quiet_console
    from wadi.images import save_grid, save_images

    quiet_console()

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    prompts = prompt_list(cfg.prompts)  # a string is one prompt, not one per character
    if cfg.seeds is not None:  # explicit seeds: one per prompt, checked before the model loads
        seeds = [int(s) for s in (cfg.seeds if OmegaConf.is_list(cfg.seeds) else [cfg.seeds])]
        if len(seeds) != len(prompts):
            raise ConfigError(
                f"seeds: got {len(seeds)} seeds for {len(prompts)} prompts; give one seed per prompt"
            )
        per_row = None
    else:
        seeds = list(range(cfg.seed, cfg.seed + len(prompts) * cfg.per_prompt))
        prompts = [p for p in prompts for _ in range(cfg.per_prompt)]
        per_row = cfg.per_prompt
    images = generator_from_config(cfg.generation, device)(prompts, seeds)
    out = Path(cfg.out)
    names = [f"{i:04d}_seed{s}" for i, s in enumerate(seeds)]
    save_images(images, out, names)
    (out / "prompts.json").write_text(
        json.dumps(
            [{"file": f"{n}.png", "prompt": p, "seed": s} for n, p, s in zip(names, prompts, seeds)], indent=2
        )
    )
    grid = save_grid(images, out / "grid.png", nrow=per_row, captions=prompts)  # a row per prompt, captioned
    print(f"wadi.sample: {len(images)} images in {out}/ (grid: {grid})")


def main(argv: list[str] | None = None) -> None:
    """`python -m wadi.sample key=value ...` (or `main([...])` in-process); a user's mistake (bad prompts or
    seeds, no model there) is one line on stderr and exit code 2, not a traceback."""
    from wadi.cli_help import exit_if_help

    exit_if_help(sys.argv[1:] if argv is None else argv, "wadi.sample", __doc__, "sample.yaml")
    saved = list(sys.argv)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        _main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
