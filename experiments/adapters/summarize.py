"""The adapter ablation's table and curves from the sweep.json files of experiments/quality/run_sweep.sh.

    python experiments/adapters/summarize.py experiments/adapters/ablation1/sweep.json \
        experiments/adapters/ablation2/sweep.json --out experiments/adapters/results

Run names follow the plan files (experiments/adapters/plans/): <backbone>_<kind>_<budget>_s<seed>, backbone
`sd` (toy-sd) or `px` (toy-pixart), kind lorad/lora/dora/full, budget A/B (full: `F`). Runs that differ only by
seed form one cell. Writes <out>/table.md (mean +- sample standard deviation over seeds, and the seed count:
at each run's last evaluation (equal wall time); at step 200 and at the last evaluation step every run of that
backbone has (equal steps; runs stop on wall time at different steps); and the toy FID at equal prompt accuracy,
interpolated linearly along each run between the two evaluations that bracket the level (`--accuracy`, per
backbone; "-" where a run never reaches it)) and one PNG of curves per backbone, <out>/curves.png (toy-sd) and
<out>/curves_pixart.png (toy-pixart): prompt accuracy and toy FID against steps, and accuracy against toy FID; one
line per run. With --weights <dir>... (experiments/adapters/weights_gpu.sh's $OUT/weights), also <out>/weights.md:
the weight analysis per student and per block, one section per backbone, with the toy-protocol scores of each student
and its two swaps from <dir>/<run>/eval_*.json or from <dir>/swapeval.json (entries
se_<run>_<student|swap_teacher_norms|swap_teacher_directions>).
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
CURVES = {"sd": "curves.png", "px": "curves_pixart.png"}
# The accuracy at which the table compares toy FID: the highest level (to 0.01) that every budget-A and full run of
# the backbone reaches (toy-sd: the lowest last accuracy 0.904; toy-pixart: 0.794).
ACCURACY = {"sd": 0.90, "px": 0.79}
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


def fid_at_accuracy(run: dict, level: float) -> float | None:
    """The run's toy FID where its prompt accuracy first reaches `level`, linear in accuracy between the two
    evaluations that bracket it (an estimate between evaluations, not an evaluation); None if it never does."""
    evals = run["evals"]
    for prev, cur in zip(evals, evals[1:]):
        a0, a1 = prev["prompt_accuracy"], cur["prompt_accuracy"]
        if a0 < level <= a1:
            return prev["toy_fid"] + (level - a0) / (a1 - a0) * (cur["toy_fid"] - prev["toy_fid"])
    return None


def mean_spread(values: list[float], digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} +- {statistics.stdev(values):.{digits}f}"


def table(runs: list[dict], step: int = 200, accuracy: dict[str, float] | None = None) -> str:
    accuracy = ACCURACY if accuracy is None else accuracy
    grouped = cells(runs)
    lines = [
        "| backbone | generator adapter | budget | rank | lr | seeds | steps reached | prompt accuracy | toy FID "
        f"| diversity | accuracy @ {step} | FID @ {step} | common step | accuracy @ common | FID @ common "
        "| FID @ accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for backbone in ("sd", "px"):
        chosen = {k: v for k, v in grouped.items() if k[0] == backbone}
        finished = [r for rs in chosen.values() for r in rs if r["evals"]]
        # The last evaluation step that every run of this backbone has (runs stop on wall time, so their own
        # last evaluations fall at different steps; the regular every-N-steps evaluations are shared).
        shared = set.intersection(*({e["step"] for e in r["evals"]} for r in finished)) if finished else set()
        common = max(shared, default=None)
        level = accuracy.get(backbone)
        for (_, kind, budget), rs in sorted(chosen.items(), key=lambda kv: order(kv[0])):
            done = [r for r in rs if r["evals"]]
            o = parse_overrides(rs[0]["overrides"])
            last = [r["evals"][-1] for r in done]
            at_common = [e for e in (at_step(r, common) for r in done) if e] if common else []
            at_fixed = [e for e in (at_step(r, step) for r in done) if e]
            at_level = (
                [f for f in (fid_at_accuracy(r, level) for r in done) if f is not None] if level else []
            )
            failed = len(rs) - len(done) + sum(r.get("rc", 0) != 0 for r in done)
            seeds = f"{len(done)}" + (f" ({failed} failed)" if failed else "")
            reached = (
                f" ({len(at_level)} of {len(done)} runs reach it)"
                if at_level and len(at_level) < len(done)
                else ""
            )
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
                        mean_spread([e["prompt_accuracy"] for e in at_fixed], 3),
                        mean_spread([e["toy_fid"] for e in at_fixed], 1),
                        str(common) if common else "-",
                        mean_spread([e["prompt_accuracy"] for e in at_common], 3),
                        mean_spread([e["toy_fid"] for e in at_common], 1),
                        (f"{mean_spread(at_level, 1)} @ {level:.2f}{reached}" if at_level else "-"),
                    ]
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def curves(runs: list[dict], out: Path, backbone: str) -> None:
    """One backbone: prompt accuracy and toy FID against steps, and accuracy against FID (the trade-off).

    One thin line per run through its own evaluations (runs stop on wall time at different steps, so a seed mean
    exists only at the shared evaluation steps); colour = adapter kind and budget, solid = budget A or full,
    dashed = budget B."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = cells(runs)
    fig, (ax_acc, ax_fid, ax_trade) = plt.subplots(1, 3, figsize=(16, 4.6))
    chosen = sorted(((k, v) for k, v in grouped.items() if k[0] == backbone), key=lambda kv: order(kv[0]))
    for i, ((_, kind, budget), rs) in enumerate(chosen):
        o = parse_overrides(rs[0]["overrides"])
        rank = "" if kind == "full" else f" r={o.get('rank', '?')}"
        what = "every targeted Linear" if budget == "F" else f"budget {budget}"
        label = f"{kind}{rank} ({what}), {len(rs)} seed{'s' * (len(rs) > 1)}"
        style = "--" if budget == "B" else "-"
        for j, r in enumerate(rs):
            steps = [e["step"] for e in r["evals"]]
            acc = [e["prompt_accuracy"] for e in r["evals"]]
            fid = [e["toy_fid"] for e in r["evals"]]
            kw = dict(color=f"C{i}", marker="o", ms=4, lw=1.2, alpha=0.85, label=label if j == 0 else None)
            ax_acc.plot(steps, acc, style, **kw)
            ax_fid.plot(steps, fid, style, **kw)
            ax_trade.plot(fid, acc, style, **kw)
    # Keep the FID axes on the budget-A / full runs: a budget-B run's first evaluation can be far above them
    # (toy-pixart: 470-499 at step 200), which would flatten every other line; such points are named in the title.
    main_fid = [
        e["toy_fid"] for (_, _, budget), rs in chosen if budget != "B" for r in rs for e in r["evals"]
    ]
    all_fid = [e["toy_fid"] for _, rs in chosen for r in rs for e in r["evals"]]
    clipped = ""
    if main_fid and max(all_fid) > max(main_fid) + 30:
        top = max(main_fid) + 10
        ax_fid.set_ylim(top=top)
        ax_trade.set_xlim(right=top)
        clipped = f"\n(points above {top:.0f}: budget B's first evaluations, off the axes)"
    name = BACKBONES[backbone]
    ax_acc.set_title(f"{name}: prompt accuracy (toy protocol, 1000 samples)")
    ax_fid.set_title(f"{name}: toy FID (lower is closer to the real renders){clipped}", fontsize=10)
    ax_trade.set_title(f"{name}: accuracy vs toy FID (one line per run){clipped}", fontsize=10)
    ax_acc.set(xlabel="training step", ylabel="prompt accuracy")
    ax_fid.set(xlabel="training step", ylabel="toy FID")
    ax_trade.set(xlabel="toy FID", ylabel="prompt accuracy")
    ax_acc.legend(fontsize=7, loc="lower right")
    for ax in (ax_acc, ax_fid, ax_trade):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


SCORES = ("student", "swap_teacher_norms", "swap_teacher_directions")


def swap_scores(root: Path, run: str) -> dict[str, dict | None]:
    """The toy-protocol metrics of a student and its two swaps: <root>/<run>/eval_<name>.json (weights_gpu.sh), or
    the entries se_<run>_<name> of <root>/swapeval.json (the metrics of a separate evaluation call, merged)."""
    merged = root / "swapeval.json"
    flat = json.loads(merged.read_text()) if merged.is_file() else {}
    out = {}
    for name in SCORES:
        path = root / run / f"eval_{name}.json"
        out[name] = json.loads(path.read_text()) if path.is_file() else flat.get(f"se_{run}_{name}")
    return out


def weights_table(root: Path) -> str:
    """The weight analysis of experiments/adapters/weights_gpu.sh, one section per backbone (the run names' prefix;
    the backbones' blocks differ): one row per student under `root`/<run>/, then the direction/norm ratio and the
    SVD energy in 30% of rank per block."""
    runs = sorted(p for p in root.iterdir() if p.is_dir())
    out = []
    for prefix, name in BACKBONES.items():
        mine = [r for r in runs if r.name.startswith(f"{prefix}_")]
        if mine:
            out.append(f"## {name}\n\n" + backbone_weights_table(root, mine))
    rest = [r for r in runs if not any(r.name.startswith(f"{p}_") for p in BACKBONES)]
    if rest:
        out.append("## other\n\n" + backbone_weights_table(root, rest))
    return "\n".join(out)


def backbone_weights_table(root: Path, runs: list[Path]) -> str:
    lines = [
        "| student | layers | direction/norm ratio | mean angle (rad) | mean relative norm change "
        "| SVD energy @ 10% / 30% / 50% of rank | toy FID / accuracy: student | teacher norms (delta FID) "
        "| teacher directions (delta FID) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def score(m: dict | None, base: dict | None = None) -> str:
        if m is None:
            return "missing"
        text = f"{m['toy_fid']:.1f} / {m['prompt_accuracy']:.3f}"
        return text + (f" ({m['toy_fid'] - base['toy_fid']:+.1f})" if base else "")

    summaries = {}
    for run in runs:
        summary = run / "summary.json"
        if not summary.is_file():
            lines.append(f"| {run.name} | missing | | | | | | | |")
            continue
        summaries[run.name] = json.loads(summary.read_text())["summary"]
        overall = summaries[run.name]["overall"]
        ratio = overall["direction_norm_ratio"]
        energy = overall.get("energy") or {}
        shares = " / ".join(f"{energy[f]:.1%}" if f in energy else "-" for f in ("0.1", "0.3", "0.5"))
        scores = swap_scores(root, run.name)
        base = scores["student"]
        lines.append(
            f"| {run.name} | {overall['layers']} | {'undefined' if ratio is None else f'{ratio:.1f}x'} "
            f"| {overall['angle']['mean']:.3g} | {overall['norm_change']['mean']:.3g} | {shares} "
            f"| {score(base)} | {score(scores['swap_teacher_norms'], base)} "
            f"| {score(scores['swap_teacher_directions'], base)} |"
        )
    if summaries:
        names = list(summaries)
        blocks = list(next(iter(summaries.values()))["blocks"])
        lines += [
            "",
            "Per block: direction/norm ratio (mean angle / mean relative norm change), SVD energy in 30% of rank.",
            "",
            "| block | layers | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        for block in blocks:
            cells_ = []
            for name in names:
                b = summaries[name]["blocks"].get(block)
                if b is None:
                    cells_.append("-")
                    continue
                ratio = b["direction_norm_ratio"]
                e30 = (b.get("energy") or {}).get("0.3")
                cells_.append(
                    f"{'undefined' if ratio is None else f'{ratio:.1f}x'}, {'-' if e30 is None else f'{e30:.0%}'}"
                )
            layers = next(s["blocks"][block]["layers"] for s in summaries.values() if block in s["blocks"])
            lines.append(f"| {block} | {layers} | " + " | ".join(cells_) + " |")
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
    print(text)
    for backbone in sorted({k[0] for k in cells(runs)}):
        curves(runs, args.out / CURVES[backbone], backbone)
        print(f"wrote {args.out / CURVES[backbone]}")
    print(f"wrote {args.out / 'table.md'}")
    if args.weights:
        weights = "".join(weights_table(w) for w in args.weights)
        (args.out / "weights.md").write_text(weights)
        print(weights)


if __name__ == "__main__":
    main()
