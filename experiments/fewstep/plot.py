"""Curves of the few-step toy call (2026-12-04): prompt accuracy and toy FID against steps, TiUE and SwD figures.

    python experiments/fewstep/plot.py experiments/fewstep/2026-12-04/sweep.json experiments/fewstep/2026-12-04

Writes tiue_curves.png (toy-sd: the TiUE runs beside the one-step student sd_wadi) and swd_curves.png (toy-sd and
toy-pixart: SwD, the full-resolution 4-step student and the one-step student, PDM on and off). Dashed line: the
teacher at 25 steps (experiments/toy/baselines.json). The toy FID axis is logarithmic (the scale-wise toy-sd runs
are near 1000-1300).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "quality"))
from plot import teacher_rows  # noqa: E402

FIGURES = {
    "tiue_curves.png": [
        (
            "toy-sd: TiUE vs one-step",
            "toy-sd 25 steps g=4.5",
            ["sd_wadi", "tiue_k2", "tiue_k2_kl", "tiue_k4", "tiue_k4_kl", "tiue_k4_klsum"],
        ),
    ],
    "swd_curves.png": [
        (
            "toy-sd: SwD / full-res 4-step / one-step",
            "toy-sd 25 steps g=4.5",
            ["sd_wadi", "sd_wadi_pdm", "sd_swd", "sd_swd_nopdm", "sd_full4", "sd_full4_nopdm"],
        ),
        (
            "toy-pixart: SwD / full-res 4-step / one-step",
            "toy-pixart 25 steps g=3.0",
            ["px_wadi", "px_swd", "px_swd_nopdm", "px_full4"],
        ),
    ],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("out", type=Path, help="folder for the PNGs")
    args = ap.parse_args()
    runs = {r["name"]: r for r in json.loads(args.sweep.read_text())}
    teachers = teacher_rows()
    for filename, panels in FIGURES.items():
        fig, axes = plt.subplots(2, len(panels), figsize=(6.5 * len(panels), 8), squeeze=False)
        for col, (title, teacher, names) in enumerate(panels):
            for i, name in enumerate(names):
                evals = runs[name]["evals"]
                steps = [e["step"] for e in evals]
                style = "--" if "nopdm" in name or name.endswith("_pdm") else "-"
                for row, key in enumerate(("prompt_accuracy", "toy_fid")):
                    axes[row, col].plot(
                        steps,
                        [e[key] for e in evals],
                        style,
                        marker="o",
                        ms=4,
                        color=f"C{i}",
                        label=f"{name} (final {evals[-1][key]:.3g} @ {steps[-1]})",
                    )
            t = teachers[teacher]
            for row, key in enumerate(("prompt_accuracy", "toy_fid")):
                axes[row, col].axhline(t[key], ls=":", color="k", lw=1, label=f"{teacher}: {t[key]:.3g}")
                axes[row, col].legend(fontsize=7, loc="best")
                axes[row, col].set_xlabel("training step (4 min 45 s each, 15 runs on one H200)")
            axes[0, col].set_title(f"{title}\nprompt accuracy (n=1000)")
            axes[1, col].set_title(f"{title}\ntoy FID (real-render floor 195.9)")
            axes[0, col].set_ylabel("prompt accuracy")
            axes[1, col].set_ylabel("toy FID (log)")
            axes[0, col].set_ylim(0, 1)
            axes[1, col].set_yscale("log")
            axes[1, col].yaxis.set_major_formatter(ScalarFormatter())
            axes[1, col].yaxis.set_minor_formatter(ScalarFormatter())
        fig.tight_layout()
        args.out.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out / filename, dpi=100)
        print(f"wrote {args.out / filename}")


if __name__ == "__main__":
    main()
