"""The adapter ablation's table and curves from the sweep.json files of experiments/quality/run_sweep.sh.

    python experiments/adapters/summarize.py experiments/adapters/ablation1/sweep.json \
        experiments/adapters/ablation2/sweep.json --out experiments/adapters/results

Run names follow the plan files (experiments/adapters/plans/): <backbone>_<kind>_<budget>_s<seed>, backbone
`sd` (toy-sd) or `px` (toy-pixart), kind lorad/lora/dora/full, budget A/B (full: `F`). Runs that differ only by
seed form one cell. Writes <out>/table.md (mean +- sample standard deviation over seeds, and the seed count:
at each run's last evaluation, and at the last evaluation step every run of that backbone reached, so cells
that ran at different speeds are also compared at equal steps) and <out>/curves.png (prompt accuracy and toy
FID against steps; the line is the seed mean, the band the min-max over seeds). With --weights <dir>...
(experiments/adapters/weights_gpu.sh's $OUT/weights), also <out>/weights.md: the weight analysis per student.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

NAME = re.compile(r"^(?P<backbone>sd|px)_(?P<kind>[a-z]+)_(?P<budget>[A-Z])_s(?P<seed>\d+)$")
BACKBONES = {"sd": "toy-sd", "px": "toy-pixart"}
ORDER = {"lorad": 0, "lora": 1, "dora": 2, "full": 3}
BUDGETS = {"A": 0, "F": 1, "B": 2}


def order(cell: tuple[str, str, str]) -> tuple[int, int]:
    return BUDGETS.get(cell[2], 9), ORDER.get(cell[1], 9)


def parse_overrides(text: str) -> dict[str, str]:
    """The last value of every key=value override (the plan's own come last and win)."""
    out = {}
    for token in text.split():
        key, sep, value = token.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def cells(runs: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """{(backbone, kind, budget): [runs]} for the runs whose names follow the plan's pattern."""
    out: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for run in runs:
        m = NAME.match(run["name"])
        if m:
            out[(m["backbone"], m["kind"], m["budget"])].append(run)
    return dict(out)


def at_step(run: dict, step: int) -> dict | None:
    """The run's evaluation at `step` (None if it has none there)."""
    return next((e for e in run["evals"] if e["step"] == step), None)


def mean_spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict]) -> str:
    grouped = cells(runs)
    lines = [
        "| backbone | generator adapter | budget | rank | lr | seeds | steps reached | prompt accuracy | toy FID "
        "| diversity | common step | accuracy @ common | FID @ common |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backbone in ("sd", "px"):
        chosen = {k: v for k, v in grouped.items() if k[0] == backbone}
        finished = [r for rs in chosen.values() for r in rs if r["evals"]]
        # The last evaluation step that every run of this backbone reached.
        common = min((max(e["step"] for e in r["evals"]) for r in finished), default=None)
        for (_, kind, budget), rs in sorted(chosen.items(), key=lambda kv: order(kv[0])):
            done = [r for r in rs if r["evals"]]
            o = parse_overrides(rs[0]["overrides"])
            last = [r["evals"][-1] for r in done]
            at_common = [e for e in (at_step(r, common) for r in done) if e] if common else []
            failed = len(rs) - len(done) + sum(r.get("rc", 0) != 0 for r in done)
            seeds = f"{len(done)}" + (f" ({failed} failed)" if failed else "")
            lines.append(
                "| "
                + " | ".join(
                    [
                        BACKBONES[backbone],
                        kind,
                        budget,
                        "-" if kind == "full" else o.get("generator.rank", o.get("rank", "?")),
                        o.get("generator.lr", o.get("lr", "?")),
                        seeds,
                        mean_spread([float(e["step"]) for e in last], 0),
                        mean_spread([e["prompt_accuracy"] for e in last], 3),
                        mean_spread([e["toy_fid"] for e in last], 1),
                        mean_spread([e["diversity"] for e in last], 1),
                        str(common) if common else "-",
                        mean_spread([e["prompt_accuracy"] for e in at_common], 3),
                        mean_spread([e["toy_fid"] for e in at_common], 1),
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def curves(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = cells(runs)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex="col")
    for col, backbone in enumerate(("sd", "px")):
        chosen = sorted(((k, v) for k, v in grouped.items() if k[0] == backbone), key=lambda kv: order(kv[0]))
        for i, ((_, kind, budget), rs) in enumerate(chosen):
            label = f"{kind} {budget} ({len(rs)} seeds)"
            style = "-" if budget in ("A", "F") else "--"
            for row, metric in enumerate(("prompt_accuracy", "toy_fid")):
                by_step: dict[int, list[float]] = defaultdict(list)
                for r in rs:
                    for e in r["evals"]:
                        by_step[e["step"]].append(e[metric])
                # Only steps every seed reached: a band over fewer seeds would mislead.
                steps = sorted(s for s, v in by_step.items() if len(v) == len(rs))
                if not steps:
                    continue
                mean = [statistics.fmean(by_step[s]) for s in steps]
                ax = axes[row, col]
                ax.plot(steps, mean, style, marker="o", ms=3, color=f"C{i}", label=label)
                ax.fill_between(
                    steps,
                    [min(by_step[s]) for s in steps],
                    [max(by_step[s]) for s in steps],
                    color=f"C{i}",
                    alpha=0.15,
                )
        axes[0, col].set_title(f"{BACKBONES[backbone]}: prompt accuracy (1000 held-out samples)")
        axes[1, col].set_title(f"{BACKBONES[backbone]}: toy FID")
        axes[0, col].set_ylim(0, 1)
        axes[1, col].set_xlabel("training step")
        axes[0, col].legend(fontsize=7, loc="lower right")
    axes[0, 0].set_ylabel("prompt accuracy")
    axes[1, 0].set_ylabel("toy FID")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def weights_table(root: Path) -> str:
    """The weight analysis of experiments/adapters/weights_gpu.sh: one row per student under `root`/<run>/."""
    lines = [
        "| student | direction/norm ratio | mean angle (rad) | mean relative norm change | SVD energy @ 30% rank "
        "| toy FID / accuracy: student | teacher norms | teacher directions |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def score(path: Path) -> str:
        if not path.is_file():
            return "missing"
        m = json.loads(path.read_text())
        return f"{m['toy_fid']:.1f} / {m['prompt_accuracy']:.3f}"

    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        summary = run / "summary.json"
        if not summary.is_file():
            lines.append(f"| {run.name} | missing | | | | | | |")
            continue
        overall = json.loads(summary.read_text())["summary"]["overall"]
        ratio = overall["direction_norm_ratio"]
        energy = overall.get("energy", {}).get("0.3")
        lines.append(
            f"| {run.name} | {'undefined' if ratio is None else f'{ratio:.1f}x'} | {overall['angle']['mean']:.3g} "
            f"| {overall['norm_change']['mean']:.3g} | {'-' if energy is None else f'{energy:.1%}'} "
            f"| {score(run / 'eval_student.json')} | {score(run / 'eval_swap_teacher_norms.json')} "
            f"| {score(run / 'eval_swap_teacher_directions.json')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweeps", nargs="+", type=Path, help="sweep.json files")
    ap.add_argument("--out", type=Path, default=Path("experiments/adapters/results"))
    ap.add_argument("--weights", type=Path, nargs="*", default=[], help="weights/ dirs of weights_gpu.sh")
    args = ap.parse_args()
    runs = [r for s in args.sweeps for r in json.loads(s.read_text())]
    args.out.mkdir(parents=True, exist_ok=True)
    text = table(runs)
    (args.out / "table.md").write_text(text)
    curves(runs, args.out / "curves.png")
    print(text)
    print(f"wrote {args.out / 'table.md'} and {args.out / 'curves.png'}")
    if args.weights:
        weights = "".join(weights_table(w) for w in args.weights)
        (args.out / "weights.md").write_text(weights)
        print(weights)


if __name__ == "__main__":
    main()
