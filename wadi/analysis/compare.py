"""Weight norm vs direction between two diffusers directories (WaDi's analysis), read one layer at a time.

Per nn.Linear of the denoiser: the relative row-norm change and the row-direction angle between a (the
teacher) and b (the student: a merged export dir, or a wadi .ckpt, exported first, whose teacher is the
default for a); per-block and overall summaries, the direction/norm ratio, the SVD energy of the direction
residual (the math: wadi.analysis.weights), and the swap experiment as two diffusers dirs that
`wadi.evaluate` scores:
    <out>/swap_teacher_norms       b's directions with a's row norms
    <out>/swap_teacher_directions  a's directions with b's row norms
`analyze_weights` writes <out>/summary.json (summary + per-layer rows), <out>/blocks.png, <out>/svd_energy.png.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from wadi.analysis.plots import plot_blocks, plot_energy
from wadi.analysis.weights import DEFAULT_FRACTIONS, layer_change, recombine, summarize
from wadi.backbones.loading import KINDS, _denoiser_class

SWAPS = {
    # name: (whose directions, whose norms)
    "swap_teacher_norms": ("b", "a"),
    "swap_teacher_directions": ("a", "b"),
}


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


def _json_float(value):
    return None if isinstance(value, float) and math.isnan(value) else value
