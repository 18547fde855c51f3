"""Curves of the quality sweeps: prompt accuracy and toy FID against steps, one panel per backbone.

    python experiments/quality/plot.py experiments/quality/finals/sweep.json experiments/quality/finals/curves.png

Each run of a sweep.json (experiments/toy/sweep_gpu.sh) is one line; runs whose names differ only by
`_s<seed>` share a colour. Dashed lines: the teacher at 25 steps (experiments/toy/baselines.json, at the guidance
given by --teacher-guidance) and its own one-step output (g 1.0), the baseline a one-step student must beat.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BASELINES = Path(__file__).resolve().parents[1] / "toy" / "baselines.json"


def teacher_rows(path: Path = BASELINES) -> dict[str, dict]:
    return {r["row"]: r for r in json.loads(path.read_text())["rows"]}


def family(name: str) -> str:
    return re.sub(r"_s\d+$", "", name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="sweep.json files, then the output PNG last")
    ap.add_argument("--teacher-guidance", default="sd=4.5,pixart=3.0")
    args = ap.parse_args()
    *sweeps, out = args.sweeps
    runs = [r for s in sweeps for r in json.loads(s.read_text())]
    guidance = dict(kv.split("=") for kv in args.teacher_guidance.split(","))
    teachers = teacher_rows()
    panels = [
        ("toy-sd", "sd", lambda n: not n.startswith("px")),
        ("toy-pixart", "pixart", lambda n: n.startswith("px")),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex="col")
    for col, (title, key, keep) in enumerate(panels):
        chosen = [r for r in runs if keep(r["name"]) and r["evals"]]
        colours = {f: f"C{i}" for i, f in enumerate(dict.fromkeys(family(r["name"]) for r in chosen))}
        for r in chosen:
            steps = [e["step"] for e in r["evals"]]
            f = family(r["name"])
            label = f if r["name"] == f or r["name"].endswith("_s0") else None
            axes[0, col].plot(
                steps, [e["prompt_accuracy"] for e in r["evals"]], "-o", ms=3, color=colours[f], label=label
            )
            axes[1, col].plot(
                steps, [e["toy_fid"] for e in r["evals"]], "-o", ms=3, color=colours[f], label=label
            )
        g = float(guidance[key])
        for name, style in ((f"toy-{key} 25 steps g={g}", "k--"), (f"toy-{key} 1 steps g=1.0", "k:")):
            t = teachers.get(name)
            if t:
                axes[0, col].axhline(t["prompt_accuracy"], ls=style[1:], color="k", lw=1, label=name)
                axes[1, col].axhline(t["toy_fid"], ls=style[1:], color="k", lw=1, label=name)
        axes[0, col].set_title(f"{title}: prompt accuracy (1000 held-out samples)")
        axes[1, col].set_title(f"{title}: toy FID (real-render floor 195.9)")
        axes[0, col].set_ylabel("prompt accuracy")
        axes[1, col].set_ylabel("toy FID")
        axes[1, col].set_xlabel("training step (one generator step + its fake-score steps)")
        axes[0, col].set_ylim(0, 1)
        axes[1, col].set_ylim(180, 450)
        axes[0, col].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
