"""TiUE's cost, measured rather than counted as "one network evaluation" (issue 19, item 4).

FLOPs per image (torch.utils.flop_counter: matmuls, convolutions, attention) and latency at batch 1 and 32 of
the student's U-Net work (no text encoder, no VAE) on SD1.5 at 512 px, bf16, random full-size weights built from
conf/arch/sd15_unet.json (speed does not depend on the values):
  onestep   WaDi's student: one U-Net evaluation at t = T
  tiue      TiUE, K = 4: the encoder once, the decoder on batch 4B in one forward, the DDIM chain
  tiue_seq  the same with the K decoder runs one after another (the test oracle)
  ddim4     four full U-Net evaluations (a 4-step sampler without CFG), for scale

    python -m experiments.tiue.bench_cost                  # GPU: prints one JSON object
    python -m experiments.tiue.bench_cost --tiny           # CPU smoke test on a tiny U-Net
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from wadi.backbones import Conditioning, UNetDenoiser
from wadi.distill.student import OneStepStudent
from wadi.distill.tiue import TiUEStudent

REPO = Path(__file__).resolve().parents[2]
SD_SCHEDULE = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000
)


class DDIMLoop:
    """K full U-Net evaluations along the same DDIM chain (a K-step sampler, no CFG)."""

    def __init__(self, k: int = 4) -> None:
        self.k = k

    def generate(self, denoiser, z, cond, alphas_cumprod, adapter=None, alpha_T=None):
        from wadi.diffusion import ddim_step
        from wadi.pipelines.tiue_pipeline import leading_timesteps

        ts = leading_timesteps(alphas_cumprod.shape[0], self.k)
        x = z
        for i, t in enumerate(ts):
            eps = denoiser(x, torch.full((z.shape[0],), t, device=z.device), cond, adapter).float()
            x, x0 = ddim_step(x, eps, alphas_cumprod, t, ts[i + 1] if i + 1 < len(ts) else None)
            x = x.to(z.dtype)
        return x0


STUDENTS = {
    "onestep": OneStepStudent,
    "tiue": lambda: TiUEStudent(k=4),
    "tiue_seq": lambda: TiUEStudent(k=4, parallel=False),
    "ddim4": lambda: DDIMLoop(4),
}


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    """(denoiser, latent (C, h, w), text (L, D), alphas_cumprod)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            from wadi.testing import tiny_unet

            unet, latent, text = tiny_unet(cross_dim=32), (4, 8, 8), (16, 32)
        else:
            config = json.loads((REPO / "conf" / "arch" / "sd15_unet.json").read_text())
            unet, latent, text = UNet2DConditionModel.from_config(config), (4, 64, 64), (77, 768)
    unet = unet.to(device, dtype).eval().requires_grad_(False)
    alphas = DDPMScheduler(**SD_SCHEDULE).alphas_cumprod.to(device)
    return UNetDenoiser(unet), latent, text, alphas


def flops_per_image(student, denoiser, latent, text, alphas, device, dtype, batch: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(batch, *latent, device=device, dtype=dtype)
    cond = Conditioning(torch.randn(batch, *text, device=device, dtype=dtype))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        student.generate(denoiser, z, cond, alphas, None, None)
    return counter.get_total_flops() / batch


def latency_ms(student, denoiser, latent, text, alphas, device, dtype, batch: int, warmup: int, iters: int):
    """Median and all per-call wall times (ms) of one generation of `batch` latents."""
    z = torch.randn(batch, *latent, device=device, dtype=dtype)
    cond = Conditioning(torch.randn(batch, *text, device=device, dtype=dtype))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad():
        for i in range(warmup + iters):
            sync()
            start = time.perf_counter()
            student.generate(denoiser, z, cond, alphas, None, None)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny U-Net on the CPU, float32 (smoke test)")
    parser.add_argument("--batches", type=int, nargs="+", default=None, help="default: 1 32 (tiny: 1 2)")
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS))
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--iters", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    tiny = args.tiny
    device = torch.device("cpu" if tiny or not torch.cuda.is_available() else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16
    batches = args.batches or ([1, 2] if tiny else [1, 32])
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    iters = args.iters if args.iters is not None else (2 if tiny else 20)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    denoiser, latent, text, alphas = build(tiny, device, dtype)
    result = {
        "model": "tiny_unet" if tiny else "sd15_unet (conf/arch/sd15_unet.json, random weights)",
        "latent": list(latent),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "warmup": warmup,
        "iters": iters,
        "students": {},
    }
    for name in args.students:
        student = STUDENTS[name]()
        row = {
            "gflops_per_image": flops_per_image(student, denoiser, latent, text, alphas, device, dtype, 1)
            / 1e9
        }
        for batch in batches:
            median, times = latency_ms(
                student, denoiser, latent, text, alphas, device, dtype, batch, warmup, iters
            )
            row[f"latency_ms_batch{batch}"] = median
            row[f"ms_per_image_batch{batch}"] = median / batch
            row[f"latency_ms_batch{batch}_all"] = [round(t, 3) for t in times]
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        result["students"][name] = row
    if "onestep" in result["students"]:
        base = result["students"]["onestep"]
        for row in result["students"].values():
            row["flops_vs_onestep"] = row["gflops_per_image"] / base["gflops_per_image"]
            for batch in batches:
                row[f"latency_vs_onestep_batch{batch}"] = (
                    row[f"latency_ms_batch{batch}"] / base[f"latency_ms_batch{batch}"]
                )
    text_out = json.dumps(result, indent=2)
    print(text_out)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text_out + "\n")
    return result


if __name__ == "__main__":
    main()
