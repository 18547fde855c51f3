"""Cost of a sample (issue 20 item 5): SwD 4-step vs a full-resolution 4-step student vs the one-step student.

Builds the full-size denoiser from its config with random weights (cost does not depend on the values): SD1.5 at
512 px (conf/arch/sd15_unet.json, latent 64, CLIP-L text 77 x 768) and PixArt-alpha at 256 px
(conf/arch/pixart_256_transformer.json, latent 32, T5 120 x 4096 with a mask), plus the SD VAE decoder. Each
generator runs through wadi's own code (`wadi.distill.swd.ScaleWiseStudent`, `wadi.distill.student.OneStepStudent`
on a `wadi.backbones` denoiser), with the default SwD sizes (1/2, 5/8, 3/4, 1 of the latent: SD 32/40/48/64,
PixArt 16/20/24/32) and SNR-matched timesteps; the full-resolution student runs the same timesteps at full size.

Reported per image: FLOPs of the generator (torch.utils.flop_counter, batch 1) and of the VAE decode, and the
median latency of generator + decode at batch 1 and 32 (CUDA-synchronised wall time, bf16).

    python experiments/swd/bench_cost.py --out experiments/swd/results/cost.json      # GPU
    python experiments/swd/bench_cost.py --tiny                                         # CPU smoke (tiny models)
    python experiments/swd/bench_cost.py --meta                                         # FLOPs only, CPU, no weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SD_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
ARCHS = {  # name: (kind, arch config, latent size, text length, text width, schedule)
    "sd15_512": ("unet", "conf/arch/sd15_unet.json", 64, 77, 768, "scaled_linear"),
    "pixart_256": ("pixart", "conf/arch/pixart_256_transformer.json", 32, 120, 4096, "linear"),
}
TINY = {
    "tiny_unet": ("unet", None, 8, 16, 32, "scaled_linear"),
    "tiny_pixart": ("pixart", None, 8, 16, 32, "linear"),
}


def schedule(kind: str) -> torch.Tensor:
    from diffusers import DDPMScheduler

    if kind == "scaled_linear":
        return DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    return DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).alphas_cumprod


def build(name: str, spec: tuple, device: torch.device, dtype: torch.dtype):
    """(denoiser, vae) with random weights."""
    from diffusers import AutoencoderKL, PixArtTransformer2DModel, UNet2DConditionModel

    from wadi.backbones.denoiser import PixArtDenoiser, UNetDenoiser
    from wadi.testing import tiny_pixart, tiny_unet, tiny_vae

    kind, arch, *_ = spec
    torch.manual_seed(0)
    with torch.device(device):
        if arch is None:
            model = tiny_unet(cross_dim=32) if kind == "unet" else tiny_pixart(cross_dim=32)
            vae = tiny_vae()
        else:
            config = json.loads((REPO / arch).read_text())
            cls = UNet2DConditionModel if kind == "unet" else PixArtTransformer2DModel
            model, vae = cls.from_config(config), AutoencoderKL(**SD_VAE)
    model = model.to(dtype).eval().requires_grad_(False)
    vae = vae.to(dtype).eval().requires_grad_(False)
    denoiser = (UNetDenoiser if kind == "unet" else PixArtDenoiser)(model)
    return denoiser, vae


def students(latent: int, ac: torch.Tensor, multiple: int) -> dict:
    from wadi.distill.student import OneStepStudent
    from wadi.distill.swd import ScaleWiseStudent, default_scales, default_timesteps

    ts = default_timesteps(ac, 4)
    return {
        "swd_4step": ScaleWiseStudent(default_scales(latent, 4, multiple), ts, latent_size=latent),
        "full_4step": ScaleWiseStudent([latent] * 4, ts, latent_size=latent),
        "one_step": OneStepStudent(),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sampler(student, denoiser, vae, ac, spec: tuple, b: int, device, dtype):
    """go(decode=True): one batch of b samples (random noise and text embeddings), decoded or not."""
    from wadi.backbones.conditioning import Conditioning

    kind, _, latent, length, width, _ = spec
    g = torch.Generator("cpu").manual_seed(0)
    z = torch.randn((b, *student.noise_shape((4, latent, latent))), generator=g).to(device, dtype)
    embeds = torch.randn(b, length, width, generator=g).to(device, dtype)
    mask = torch.ones(b, length, device=device, dtype=torch.long) if kind == "pixart" else None
    cond = Conditioning(embeds, mask)

    def go(decode: bool = True):
        with torch.no_grad():
            x0 = student.generate(denoiser, z, cond, ac, None, None)
            if decode:
                return vae.decode(x0.to(dtype) / vae.config.scaling_factor, return_dict=False)[0]
            return x0

    return go


def measure(
    name: str, spec: tuple, device, dtype, batches: list[int], repeats: int, warmup: int
) -> list[dict]:
    from torch.utils.flop_counter import FlopCounterMode

    kind, _, latent, _, _, sched = spec
    denoiser, vae = build(name, spec, device, dtype)
    ac = schedule(sched).to(device)
    multiple = 2 if kind == "pixart" else 1
    rows = []
    for label, student in students(latent, ac, multiple).items():
        row = {
            "arch": name,
            "student": label,
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
        }
        if hasattr(student, "scales"):
            row |= {"scales": student.scales, "timesteps": student.resolved_timesteps(ac.cpu())}

        go = sampler(student, denoiser, vae, ac, spec, 1, device, dtype)
        with FlopCounterMode(display=False) as counter:
            go(decode=False)
        row["gflops_generator"] = counter.get_total_flops() / 1e9
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            x0 = torch.zeros(1, 4, latent, latent, device=device, dtype=dtype)
            vae.decode(x0, return_dict=False)
        row["gflops_decode"] = counter.get_total_flops() / 1e9
        for b in batches:
            go = sampler(student, denoiser, vae, ac, spec, b, device, dtype)
            try:
                for _ in range(warmup):
                    go()
                times = []
                for _ in range(repeats):
                    _sync(device)
                    start = time.perf_counter()
                    go()
                    _sync(device)
                    times.append(time.perf_counter() - start)
                row[f"latency_ms_b{b}"] = 1000 * statistics.median(times)
                row[f"ms_per_image_b{b}"] = row[f"latency_ms_b{b}"] / b
            except torch.OutOfMemoryError as err:  # report, keep the other rows
                row[f"latency_ms_b{b}"] = None
                row[f"error_b{b}"] = str(err).splitlines()[0]
                torch.cuda.empty_cache()
        rows.append(row)
        print(json.dumps(row), flush=True)
    del denoiser, vae
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def meta_flops(name: str, spec: tuple) -> list[dict]:
    """FLOPs per image without running anything: one denoiser forward per latent size on the meta device
    (torch's flop counter reads shapes only), summed over each student's steps; the VAE decode at full size."""
    from torch.utils.flop_counter import FlopCounterMode

    from wadi.backbones.conditioning import Conditioning
    from wadi.distill.swd import default_scales

    kind, _, latent, length, width, _ = spec
    denoiser, vae = build(name, spec, torch.device("meta"), torch.bfloat16)
    embeds = torch.zeros(1, length, width, device="meta", dtype=torch.bfloat16)
    mask = torch.ones(1, length, device="meta", dtype=torch.long) if kind == "pixart" else None
    cond = Conditioning(embeds, mask)
    scales = default_scales(latent, 4, 2 if kind == "pixart" else 1)

    def count(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    per_size = {}
    for s in sorted(set(scales)):
        x = torch.zeros(1, 4, s, s, device="meta", dtype=torch.bfloat16)
        t = torch.zeros(1, device="meta", dtype=torch.long)
        # the kind-specific call itself (the wrapper asks autocast about the device, which meta has not)
        per_size[s] = count(lambda x=x, t=t: denoiser._eps(denoiser.model, x, t, cond))
    z = torch.zeros(1, 4, latent, latent, device="meta", dtype=torch.bfloat16)
    decode = count(lambda: vae.decode(z, return_dict=False))
    full = per_size[latent]
    students = {"swd_4step": sum(per_size[s] for s in scales), "full_4step": 4 * full, "one_step": full}
    rows = []
    for label, gflops in students.items():
        row = {
            "arch": name,
            "student": label,
            "gflops_generator": gflops,
            "gflops_decode": decode,
            "meta": True,
        }
        if label == "swd_4step":
            row |= {"scales": scales, "gflops_per_scale": [per_size[s] for s in scales]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict], batches: list[int]) -> str:
    head = "| arch | student | GFLOPs generator | GFLOPs decode |" + "".join(
        f" ms batch {b} (per image) |" for b in batches
    )
    lines = [head, "|" + "---|" * (4 + len(batches))]
    for r in rows:
        cells = [
            f"{r[f'latency_ms_b{b}']:.1f} ({r[f'ms_per_image_b{b}']:.2f})"
            if r.get(f"latency_ms_b{b}")
            else "-"
            for b in batches
        ]
        lines.append(
            f"| {r['arch']} | {r['student']} | {r['gflops_generator']:.4g} | {r['gflops_decode']:.4g} |"
            + "".join(f" {c} |" for c in cells)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models on the CPU (smoke test)")
    parser.add_argument("--archs", nargs="+", default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument(
        "--meta", action="store_true", help="FLOPs only, full-size models on the meta device (CPU)"
    )
    args = parser.parse_args(argv)
    specs = TINY if args.tiny else ARCHS
    names = args.archs or list(specs)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    batches = args.batches or ([1, 2] if args.tiny else [1, 32])
    repeats = args.repeats or (2 if args.tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    if not args.tiny:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    if args.meta:
        batches = []
        for name in names:
            rows += meta_flops(name, specs[name])
    else:
        for name in names:
            rows += measure(name, specs[name], device, dtype, batches, repeats, warmup)
    meta = {
        "torch": torch.__version__,
        "device": "meta (shapes only)"
        if args.meta
        else torch.cuda.get_device_name()
        if device.type == "cuda"
        else "cpu",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(table(rows, batches))
    return rows


if __name__ == "__main__":
    main()
