"""How far one generator optimizer step moves the merged generator weights, per adapter kind and lr (CPU).

The toy recipe's lr (1e-3) was tuned for LoRaD; LoRA, DoRA and full fine-tuning parametrise the update
differently, so the same lr is not the same step. This measures, on the shipped toy teacher, the relative
change ||W_merged - W|| / ||W|| over the generator's adapted layers after ONE AdamW step of the real VSD
generator loss (batch 4, seed 0), and prints the lr at which each kind's first step matches LoRaD's at 1e-3
(the step is ~proportional to lr at the first Adam step). A first-step match is a heuristic, not a tuned lr.

    python experiments/adapters/lr_calibration.py [--backbone toy] [--out experiments/adapters/lr_calibration.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from wadi.adapters.base import plain_key
from wadi.distill.module import WaDiModule
from wadi.testing import compose_config

# (rank, lr) per kind: LoRaD at the toy recipe's rank and lr, the others at its equal-budget rank (dry_run's table).
RUNS = {
    "toy": {"lorad": (64, 1e-3), "lora": (49, 1e-4), "dora": (48, 1e-4), "full": (1, 1e-5)},
    "toy_pixart": {"lorad": (64, 1e-3), "lora": (48, 1e-4), "dora": (47, 1e-4), "full": (1, 1e-5)},
}


def merged_weights(module: WaDiModule) -> dict[str, torch.Tensor]:
    """The plain model's weight matrices (copies), with whatever adapter is merged."""
    kinds = module.adapters.values()
    state = ((plain_key(kinds, k), v) for k, v in module.denoiser.model.state_dict().items())
    return {k: v.detach().clone() for k, v in state if k is not None and k.endswith("weight")}


def relative_step(backbone: str, kind: str, rank: int, lr: float) -> float:
    from omegaconf import OmegaConf

    cfg = compose_config([f"backbone={backbone}"])
    torch.manual_seed(0)
    module = WaDiModule(
        backbone=OmegaConf.to_container(cfg.backbone, resolve=True),
        generator={"adapter": kind, "rank": rank, "lr": lr},
        fake_score={"adapter": "lorad", "rank": 8, "lr": 1e-2},
        method=OmegaConf.to_container(cfg.method, resolve=True),
    )
    model = module.denoiser.model
    adapter = module.adapters["generator"]
    with adapter.merged(model, "generator"):
        before = merged_weights(module)
    prompts = ["a red circle", "a blue square", "a green triangle", "two yellow circles"]
    cond = module.conditioning({"prompt": prompts})
    uncond = module.null_conditioning()
    rng = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(module.generator_parameters(), lr=lr, weight_decay=0.0)
    loss = module.generator_step(cond, uncond, rng)["loss"]
    loss.backward()
    opt.step()
    with adapter.merged(model, "generator"):
        after = merged_weights(module)
    num = sum(
        (after[k] - before[k]).double().square().sum() for k in before if not torch.equal(after[k], before[k])
    )
    den = sum(before[k].double().square().sum() for k in before if not torch.equal(after[k], before[k]))
    return float((num / den).sqrt()) if den > 0 else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="toy")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    runs = RUNS[args.backbone]
    rows = {kind: relative_step(args.backbone, kind, r, lr) for kind, (r, lr) in runs.items()}
    report = {}
    for kind, step in rows.items():
        rank, lr = runs[kind]
        match = (
            lr * rows["lorad"] / step if step > 0 else float("nan")
        )  # the first step is ~ proportional to lr
        report[kind] = {"rank": rank, "lr": lr, "relative_step": step, "lr_matching_lorad_1e-3": match}
        print(
            f"{kind:6s} r={rank:3d} lr={lr:.0e}: relative weight step {step:.3e}; lr matching LoRaD@1e-3 ~ {match:.2e}"
        )
    if args.out:
        args.out.write_text(json.dumps({"backbone": args.backbone, "runs": report}, indent=2) + "\n")


if __name__ == "__main__":
    main()
