"""`python -m wadi.analyze weights a=<teacher> b=<student>` and `python -m wadi.analyze trajectory model=<dir>`.

weights: per nn.Linear of the denoiser, the relative row-norm change and the row-direction angle between
a (teacher diffusers dir) and b (student: a merged export dir, or a wadi .ckpt, which is exported first and
whose teacher is the default for a); per-block and overall summaries, the direction/norm ratio, the SVD
energy of the direction residual, and the swap experiment as two diffusers dirs that `wadi.evaluate` scores:
    <out>/swap_teacher_norms       b's directions with a's row norms
    <out>/swap_teacher_directions  a's directions with b's row norms
Writes <out>/summary.json (summary + per-layer rows), <out>/blocks.png, <out>/svd_energy.png.

trajectory: decoded predicted x0 at every sampling step, one PNG strip per prompt under <out>/. A teacher dir
(no wadi_export.json) runs `steps`-step DDIM with CFG `guidance_scale`; a student (export or .ckpt) runs
the hybrid sampler: the teacher's first `teacher_steps` of a `steps`-step schedule, then the student.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from wadi.analysis.weights import DEFAULT_FRACTIONS, layer_change, recombine, summarize
from wadi.backbones.loading import KINDS, _denoiser_class
from wadi.config import CONF_DIR  # (importing wadi.config registers the resolvers)
from wadi.export import EXPORT_INFO

COMMANDS = ("weights", "trajectory")
SWAPS = {
    # name: (whose directions, whose norms)
    "swap_teacher_norms": ("b", "a"),
    "swap_teacher_directions": ("a", "b"),
}


# ----------------------------------------------------------------------------- reading weights
class DenoiserWeights:
    """The nn.Linear weights of a diffusers directory's denoiser, read one tensor at a time from safetensors.

    Layer names come from the architecture built on the meta device (no weights loaded), so full-size
    models are compared with one layer in memory at a time.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(str(root)).expanduser()
        kinds = [k for k, (_, sub, _) in KINDS.items() if (self.root / sub).is_dir()]
        if not kinds:
            subs = sorted(sub for _, sub, _ in KINDS.values())
            raise FileNotFoundError(
                f"no denoiser in {self.root}: expected a diffusers dir with one of {subs}/"
            )
        self.kind = kinds[0]
        self.sub = KINDS[self.kind][1]
        self.files = weight_files(self.root / self.sub)
        self._where: dict[str, Path] = {}
        from safetensors import safe_open

        for file in self.files:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    self._where.setdefault(key, file)
        config = json.loads((self.root / self.sub / "config.json").read_text())
        with torch.device("meta"):
            model = _denoiser_class(self.kind).from_config(config)
        self.linear_names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def __getitem__(self, layer: str) -> torch.Tensor:
        from safetensors import safe_open

        key = f"{layer}.weight"
        if key not in self._where:
            raise KeyError(f"{self.root / self.sub}: no tensor {key!r} for linear layer {layer}")
        with safe_open(str(self._where[key]), framework="pt") as f:
            return f.get_tensor(key)


def weight_files(sub_dir: Path) -> list[Path]:
    """The denoiser's safetensors files (all shards); the plain set when fp16/other variants sit beside it."""
    files = sorted(sub_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(
            f"no .safetensors weights in {sub_dir} (save the model with safe_serialization, the default)"
        )
    plain = [f for f in files if "." not in f.name.removesuffix(".safetensors")]
    return plain or files


def common_layers(a: DenoiserWeights, b: DenoiserWeights, blocks: Sequence[str] | None = None) -> list[str]:
    """Linear layers of b that a also has (same names), optionally only inside `blocks` prefixes."""
    if a.kind != b.kind:
        raise ValueError(f"a ({a.root}) is a {a.kind} model but b ({b.root}) is a {b.kind} model")
    in_a = set(a.linear_names)
    missing = [n for n in b.linear_names if n not in in_a]
    if missing:
        raise ValueError(
            f"{len(missing)} linear layers of b ({b.root}) are not in a ({a.root}), e.g. {missing[:3]}"
        )
    names = b.linear_names
    if blocks:
        names = [n for n in names if any(n == p or n.startswith(p + ".") for p in blocks)]
        if not names:
            raise ValueError(f"no linear layer inside blocks={list(blocks)}")
    return names


def compare(
    a: DenoiserWeights,
    b: DenoiserWeights,
    layers: Sequence[str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    svd: bool = True,
    device: str | torch.device = "cpu",
) -> Iterator[dict]:
    """layer_change rows, one layer in memory at a time (on `device`: the SVDs are the slow part)."""
    for name in layers:
        yield layer_change(name, a[name].to(device), b[name].to(device), fractions, svd)


def resolve_student(
    b: str | Path, a: str | Path | None, out: Path, use_ema: bool = True
) -> tuple[Path, Path]:
    """(a dir, b dir): a .ckpt student is exported (generator merged) to <out>/student; its teacher is a's default."""
    b_path = Path(str(b)).expanduser()
    if not b_path.exists():
        raise FileNotFoundError(f"student not found at {b_path}: expected a diffusers dir or a wadi .ckpt")
    if b_path.is_file():
        from wadi.export import export_merged
        from wadi.generation import load_module_from_checkpoint

        module = load_module_from_checkpoint(b_path)
        a = a or module.backbone.cfg.pretrained
        b_path = export_merged(module, out / "student", use_ema=use_ema)
    if a is None:
        raise ValueError("the teacher `a` is required when b is a diffusers directory")
    return Path(str(a)).expanduser(), b_path


# ----------------------------------------------------------------------------- the swap experiment
@torch.no_grad()
def write_swap(
    a: DenoiserWeights, b: DenoiserWeights, layers: Sequence[str], out_dir: Path, directions: str, norms: str
) -> Path:
    """A full copy of b's directory whose denoiser linear weights take `directions` rows with `norms` row norms.

    Everything else (biases, convolutions, norms, VAE, text encoder, scheduler, export info) is b's,
    byte for byte; weights keep the dtype b stored them in.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = {"a": a, "b": b}
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(b.root, tmp, ignore=shutil.ignore_patterns(".*"))
    wanted = {f"{n}.weight": n for n in layers}
    for file in sorted((tmp / b.sub).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(file))
        for key in tensors.keys() & wanted.keys():
            layer = wanted[key]
            new = recombine(src[directions][layer].to(tensors[key].dtype), src[norms][layer])
            tensors[key] = new.to(tensors[key].dtype).contiguous()
        save_file(tensors, str(file), metadata=metadata)
    info = {
        "directions_of": str(src[directions].root),
        "norms_of": str(src[norms].root),
        "layers": len(layers),
    }
    (tmp / "wadi_swap.json").write_text(json.dumps(info, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


# ----------------------------------------------------------------------------- plots
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
        ("norm_change", "relative row-norm change", "C0"),
        ("angle", "row-direction change (angle, rad)", "C1"),
    )
    for ax, (key, label, color) in zip(axes, panels):
        ax.bar(
            x, [b[key]["mean"] for b in blocks], yerr=[b[key]["std"] for b in blocks], color=color, capsize=2
        )
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ratio = summary["overall"]["direction_norm_ratio"]
    fig.suptitle(
        "per block, mean over layers" + (f"; overall direction/norm = {ratio:.3g}x" if ratio else ""),
        fontsize=10,
    )
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


# ----------------------------------------------------------------------------- the two commands
def analyze_weights(
    a: str | Path | None,
    b: str | Path,
    out: str | Path,
    blocks: Sequence[str] | None = None,
    swap: bool = True,
    svd: bool = True,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    use_ema: bool = True,
    plots: bool = True,
    device: str | torch.device = "cpu",
) -> dict:
    """Run the weight analysis; returns what it writes to <out>/summary.json."""
    out = Path(str(out))
    out.mkdir(parents=True, exist_ok=True)
    a_dir, b_dir = resolve_student(b, a, out, use_ema)
    wa, wb = DenoiserWeights(a_dir), DenoiserWeights(b_dir)
    layers = common_layers(wa, wb, blocks)
    rows = list(compare(wa, wb, layers, fractions, svd, device))
    summary = summarize(rows)
    result = {
        "a": str(a_dir),
        "b": str(b_dir),
        "definitions": {
            "norm_change": "|‖b_i‖ - ‖a_i‖| / ‖a_i‖ per weight row, mean over rows",
            "angle": "angle between rows a_i and b_i in radians, mean over rows",
            "one_minus_cos": "1 - cos(angle), mean over rows",
            "direction_norm_ratio": "mean angle / mean norm change, over layers",
            "energy": "fraction of sum s^2 of unit(W_b) - unit(W_a) in the top ceil(f * rank) singular values",
        },
        "summary": summary,
        "layers": rows,
        "swaps": {},
    }
    if swap:
        for name, (directions, norms) in SWAPS.items():
            result["swaps"][name] = str(write_swap(wa, wb, layers, out / name, directions, norms))
    if plots:
        plot_blocks(summary, out / "blocks.png")
        if svd:
            plot_energy(summary, rows, out / "svd_energy.png")
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=_json_float))
    return result


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3g}"


def _json_float(value):
    return None if isinstance(value, float) and math.isnan(value) else value


def analyze_trajectory(
    model: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    steps: int = 25,
    teacher_steps: int = 1,
    guidance_scale: float = 1.0,
    teacher_guidance: float = 0.0,
    teacher: str | Path | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> list[Path]:
    """One strip per prompt (seed = seed + prompt index) of the decoded x0 predictions; returns the PNG paths."""
    from wadi.analysis.trajectory import decode_trajectory, generator_trajectory, save_strips
    from wadi.generation import load_generator

    path = Path(str(model)).expanduser()
    if path.is_dir() and not (path / EXPORT_INFO).is_file():
        gen = load_generator(path, teacher_steps=steps, guidance_scale=guidance_scale, device=device)
    else:
        gen = load_generator(
            path,
            device=device,
            hybrid_k=teacher_steps,
            schedule_steps=steps,
            teacher_guidance=teacher_guidance,
            teacher=teacher,
        )
    prompts = list(prompts)
    seeds = [seed + i for i in range(len(prompts))]
    images = decode_trajectory(gen.backbone, generator_trajectory(gen, prompts, seeds))
    names = [f"trajectory_{i:02d}" for i in range(len(prompts))]
    paths = save_strips(images, out, names)
    frames = images.shape[1]
    (Path(str(out)) / "prompts.json").write_text(
        json.dumps(
            [
                {"file": p.name, "prompt": q, "seed": s, "frames": frames}
                for p, q, s in zip(paths, prompts, seeds)
            ],
            indent=2,
        )
    )
    return paths


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
            f"wadi.analyze weights: {overall['layers']} linear layers; norm change {overall['norm_change']['mean']:.3g}, "
            f"angle {overall['angle']['mean']:.3g} rad, direction/norm {_fmt(overall['direction_norm_ratio'])}x; "
            f"written to {cfg.out}/"
        )
    elif cfg.command == "trajectory":
        if cfg.model is None:
            raise ValueError("wadi.analyze trajectory needs model=<dir or .ckpt>")
        paths = analyze_trajectory(
            cfg.model,
            list(cfg.prompts),
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
