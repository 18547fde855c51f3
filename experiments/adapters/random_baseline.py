"""What direction/norm change ratio a *random* perturbation of the weights gives, as a reference for the WaDi claim.

The weight analysis (`python -m wadi.analyze weights`) reports mean row angle / mean relative row-norm change. For a
row w of width n and a random perturbation d, the angle is about |d_perp| / |w| while the norm change is only the
component of d along w, |d . w| / |w|^2, about 1/sqrt(n) of it: an isotropic Gaussian d gives, per row,
angle / norm change = sqrt((n - 1) / n) / sqrt(2 / (pi n)), about sqrt(pi n / 2) (10x at n = 64, 28x at n = 512). So
a ratio is evidence that training prefers directions only when it exceeds this baseline for the same layer widths.

    python experiments/adapters/random_baseline.py                 # CPU, ~20 s
    python experiments/adapters/random_baseline.py toy-pixart      # the other toy teacher, no full-size part

Prints, for a shipped toy teacher (wadi/assets/toy/<asset>, default toy-sd): the ratio and SVD energy of (a) an isotropic
Gaussian perturbation of 2% of each row's norm, (b) elementwise relative noise of 2%, (c) bf16 rounding of the
float16 weights (what a bf16 base adds to every GPU student), through the same functions as the analysis
(wadi.analysis.weights.layer_change / summarize); then the isotropic formula over every nn.Linear of the full-size
SD1.5 / SD2.1 U-Nets and PixArt-alpha 512 transformer built on the meta device (no weights; toy-sd run only).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from torch import nn

ARCH = Path(__file__).resolve().parents[2] / "conf" / "arch"


def isotropic_ratio(widths: list[int]) -> float:
    """Mean angle / mean relative norm change (means over layers) of an isotropic perturbation of equal relative size."""
    angle = [math.sqrt((n - 1) / n) for n in widths]
    norm = [math.sqrt(2 / (math.pi * n)) for n in widths]
    return (sum(angle) / len(angle)) / (sum(norm) / len(norm))


def main() -> None:
    from wadi.analysis.compare import DenoiserWeights
    from wadi.analysis.weights import layer_change, summarize
    from wadi.toy.assets import toy_asset_path

    asset = sys.argv[1] if len(sys.argv) > 1 else "toy-sd"
    torch.manual_seed(0)
    teacher = DenoiserWeights(toy_asset_path(asset))
    kinds = {
        "isotropic 2% per row": lambda w: (
            w + (d := torch.randn_like(w)) / d.norm(dim=1, keepdim=True) * w.norm(dim=1, keepdim=True) * 0.02
        ),
        "elementwise relative 2%": lambda w: w * (1 + 0.02 * torch.randn_like(w)),
        "bf16 rounding of the fp16 weights": lambda w: w.to(torch.bfloat16).float(),
    }
    widths = []
    for label, perturb in kinds.items():
        rows = []
        for name in teacher.linear_names:
            w = teacher[name].float()
            rows.append(layer_change(name, w, perturb(w)))
            if len(widths) < len(teacher.linear_names):
                widths.append(w.shape[1])
        overall = summarize(rows)["overall"]
        blocks = {b: round(v["direction_norm_ratio"], 1) for b, v in summarize(rows)["blocks"].items()}
        print(
            f"{asset}, {label}: direction/norm {overall['direction_norm_ratio']:.1f}x, "
            f"angle {overall['angle']['mean']:.3g} rad, norm change {overall['norm_change']['mean']:.3g}, "
            f"SVD energy in 30% of rank {overall['energy']['0.3']:.1%}; per block {blocks}"
        )
    print(f"{asset} ({len(widths)} Linear layers), isotropic formula: {isotropic_ratio(widths):.1f}x")
    if asset != "toy-sd":
        return

    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel

    for arch, cls in (
        ("sd15_unet", UNet2DConditionModel),
        ("sd21_unet", UNet2DConditionModel),
        ("pixart_512_transformer", PixArtTransformer2DModel),
    ):
        with torch.device("meta"):
            model = cls.from_config(json.loads((ARCH / f"{arch}.json").read_text()))
        widths = [m.in_features for m in model.modules() if isinstance(m, nn.Linear)]
        print(
            f"{arch} ({len(widths)} Linear layers, in_features {sorted(set(widths))}), isotropic formula: "
            f"{isotropic_ratio(widths):.1f}x"
        )


if __name__ == "__main__":
    main()
