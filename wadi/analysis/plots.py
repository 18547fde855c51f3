"""Plots of the weight analysis (matplotlib, Agg): per-block bars and the SVD energy curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def plot_blocks(summary: dict, path: Path) -> Path:
    """Per-block bars, one panel each (own scales): mean relative norm change and mean angle, std as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["blocks"])
    blocks = [summary["blocks"][n] for n in names]
    x = list(range(len(names)))
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(names) + 3), 4))
    panels = (
        ("norm_change", "relative row-norm change", "|‖b_i‖ - ‖a_i‖| / ‖a_i‖", "C0"),
        ("angle", "row-direction change", "angle(a_i, b_i) [rad]", "C1"),
    )
    for ax, (key, label, ylabel, color) in zip(axes, panels):
        ax.bar(
            x, [b[key]["mean"] for b in blocks], yerr=[b[key]["std"] for b in blocks], color=color, capsize=2
        )
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("block (mean over its linear layers; error bar: std)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    overall = summary["overall"]
    ratio = overall["direction_norm_ratio"]
    if overall["norm_change"]["mean"] == 0:
        ratio_text = "; norms unchanged (to float precision)"
    else:
        ratio_text = f"; overall direction/norm = {ratio:.3g}x" if ratio else ""
    fig.suptitle("per block, mean over layers" + ratio_text, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_energy(summary: dict, rows: Sequence[dict], path: Path) -> Path:
    """SVD energy of the direction residual vs fraction of rank: every layer (faint) and their mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    curves = [r["curve"] for r in rows if r.get("curve")]
    if curves:
        f = [(i + 1) / len(curves[0]) for i in range(len(curves[0]))]
        for c in curves:
            ax.plot(f, c, color="0.8", lw=0.5)
        ax.plot(f, summary["mean_energy_curve"], color="C3", lw=2, label=f"mean of {len(curves)} layers")
        for k, v in summary["overall"].get("energy", {}).items():
            ax.plot([float(k)], [v], "o", color="C3")
            ax.annotate(f"{100 * v:.0f}%", (float(k), v), textcoords="offset points", xytext=(4, -12))
        ax.legend(loc="lower right")
    ax.set_xlabel("fraction of rank")
    ax.set_ylabel("fraction of energy (sum s^2)")
    ax.set_title("direction residual unit(W_b) - unit(W_a)")
    ax.set_ylim(0, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
