"""`python -m wadi.analyze weights a=<teacher> b=<student>` and `python -m wadi.analyze trajectory model=<dir>`.

weights: per nn.Linear of the denoiser, the relative row-norm change and the row-direction angle between
a (teacher diffusers dir) and b (student: a merged export dir, or a wadi .ckpt, which is exported first and
whose teacher is the default for a), and the swap experiment (wadi.analysis.compare.analyze_weights).
Writes <out>/summary.json, <out>/blocks.png, <out>/svd_energy.png, <out>/swap_teacher_{norms,directions}/.

trajectory: decoded predicted x0 at every sampling step, one PNG strip per prompt under <out>/. A teacher dir
(no wadi_export.json) runs `steps`-step DDIM with CFG `guidance_scale`; a student (export or .ckpt) runs
the hybrid sampler: the teacher's first `teacher_steps` of a `steps`-step schedule, then the student
(wadi.analysis.trajectory.analyze_trajectory).
"""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig

from wadi.analysis.compare import analyze_weights
from wadi.analysis.trajectory import analyze_trajectory
from wadi.config import CONF_DIR  # (importing wadi.config registers the resolvers)
from wadi.generation import prompt_list

COMMANDS = ("weights", "trajectory")


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3g}"


def _norm_and_ratio(overall: dict) -> str:
    """ "norm change 0.012, direction/norm 22x", or "norms unchanged (to float precision)" when the mean norm
    change is zero (a LoRaD student: rounding is reported as 0, not as a 3e6x ratio)."""
    norm = overall["norm_change"]["mean"]
    if norm == 0:
        return "norms unchanged (to float precision): the change is in directions only"
    return f"norm change {norm:.3g}, direction/norm {_fmt(overall['direction_norm_ratio'])}x"


# An absolute config path, so `main([...])` also works in-process (tests, notebooks), not only under `-m`.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analyze")
def _run(cfg: DictConfig) -> None:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.command == "weights":
        if cfg.b is None:
            raise ValueError("wadi.analyze weights needs b=<student dir or .ckpt> (and a=<teacher dir>)")
        result = analyze_weights(
            cfg.a,
            cfg.b,
            cfg.out,
            blocks=list(cfg.blocks) if cfg.blocks else None,
            swap=cfg.swap,
            svd=cfg.svd,
            fractions=list(cfg.fractions),
            use_ema=cfg.use_ema,
            device=device,
        )
        overall = result["summary"]["overall"]
        print(
            f"wadi.analyze weights: {overall['layers']} linear layers; {_norm_and_ratio(overall)}, "
            f"angle {overall['angle']['mean']:.3g} rad; written to {cfg.out}/"
        )
    elif cfg.command == "trajectory":
        if cfg.model is None:
            raise ValueError("wadi.analyze trajectory needs model=<dir or .ckpt>")
        paths = analyze_trajectory(
            cfg.model,
            prompt_list(cfg.prompts),  # a string is one prompt, not one per character
            cfg.out,
            steps=cfg.steps,
            teacher_steps=cfg.teacher_steps,
            guidance_scale=cfg.guidance_scale,
            teacher_guidance=cfg.teacher_guidance,
            teacher=cfg.teacher,
            seed=cfg.seed,
            device=device,
        )
        print(f"wadi.analyze trajectory: {len(paths)} strips in {cfg.out}/")
    else:
        raise ValueError(
            f"unknown command {cfg.command!r}; use: python -m wadi.analyze {{{'|'.join(COMMANDS)}}} ..."
        )


def main(argv: list[str] | None = None) -> None:
    """`python -m wadi.analyze <command> key=value ...`: the command word becomes the `command=` override."""
    from wadi.cli_help import exit_if_help

    exit_if_help(
        sys.argv[1:] if argv is None else argv, "wadi.analyze {weights|trajectory}", __doc__, "analyze.yaml"
    )
    saved = list(sys.argv)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.argv[1] = f"command={sys.argv[1]}"
    elif len(sys.argv) > 1 and "=" not in sys.argv[1] and not sys.argv[1].startswith("-"):
        word, sys.argv = sys.argv[1], saved
        raise SystemExit(
            f"unknown command {word!r}: python -m wadi.analyze {{{'|'.join(COMMANDS)}}} key=value ..."
        )
    try:
        _run()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
