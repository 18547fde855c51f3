"""One-step generation speed (issue 6 item 4): the merged generator + VAE decode, against stock diffusers.

The merged export is a plain diffusers U-Net (LoRaD merged into the weights), so the benchmark builds the
full-size SD1.5 U-Net and SD VAE from their configs with random weights (speed does not depend on the
values) and runs, with the same weights, the same noise and the same text embeddings:
  stock    StableDiffusionPipeline, DDIM trailing, num_inference_steps=1, guidance 1.0, output_type="pt"
  wadi     wadi.samplers.one_step + Backbone.decode (what wadi.sample runs for an export), eager
  wadi+cl  the same with channels_last weights and activations
  wadi+cudnn  cudnn.benchmark (conv algorithm autotuning)
  wadi+compile  torch.compile(fullgraph) of U-Net and VAE decoder (shapes are static: one graph per batch)
  wadi+compile+graphs  the same with mode="reduce-overhead" (CUDA graphs)
Options combine with "+"; every variant's images are compared with stock's.
Every variant's images are compared with stock's (max abs difference, PSNR on [0, 1] images).

    python -m experiments.bench.bench_onestep --batches 1 32 --variants stock wadi wadi+compile
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from wadi.backbones import Backbone, BackboneConfig, Conditioning, UNetDenoiser
from wadi.samplers import one_step

REPO = Path(__file__).resolve().parents[2]

SD_VAE = dict(  # the public SD1.5 / SD2.1 VAE config
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
SD_SCHEDULE = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000
)


def build(tiny: bool, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):
        if tiny:
            from wadi.testing import tiny_unet, tiny_vae

            unet, vae = tiny_unet(cross_dim=32), tiny_vae()
        else:
            config = json.loads((REPO / "conf/arch/sd15_unet.json").read_text())
            unet, vae = UNet2DConditionModel.from_config(config), AutoencoderKL(**SD_VAE)
    return unet.to(dtype).eval().requires_grad_(False), vae.to(dtype).eval().requires_grad_(False)


def stock_pipeline(unet, vae):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    # What wadi.export writes: DDIM, trailing spacing (t = T), final alpha 1 (x_prev = x0).
    scheduler = DDIMScheduler(
        **SD_SCHEDULE, timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False, steps_offset=0
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=None,
        tokenizer=None,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class WadiOneStep:
    """wadi's one-step path: one_step on the merged U-Net, then Backbone.decode."""

    def __init__(
        self,
        unet,
        vae,
        latent_size: int,
        channels_last: bool = False,
        compile: bool = False,
        graphs: bool = False,
    ):
        from diffusers import DDPMScheduler

        alphas = DDPMScheduler(**SD_SCHEDULE).alphas_cumprod.to(unet.device)
        cfg = BackboneConfig(
            name="sd15",
            kind="unet",
            pretrained=None,
            resolution=latent_size * 8,
            latent_size=latent_size,
            text_max_length=77,
        )
        self.backbone = Backbone(cfg, UNetDenoiser(unet), alphas, vae=vae)
        self.channels_last = channels_last
        if channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        if compile:  # what `wadi.sample compile=true` does
            from wadi.speed import compile_sampler

            compile_sampler(self.backbone, mode="reduce-overhead" if graphs else None)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        x0 = one_step(bb.denoiser, z, Conditioning(embeds), bb.alphas_cumprod, None, bb.cfg.alpha_T)
        return bb.decode(x0)


def timed(fn, device: torch.device, warmup: int, reps: int) -> tuple[list[float], float, torch.Tensor]:
    t0 = time.perf_counter()
    for _ in range(warmup):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    return times, warm, out


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--variants", nargs="+", default=["stock", "wadi", "wadi+cl", "wadi+compile"])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke test)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import diffusers

    header = {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(json.dumps(header), flush=True)
    latent = 8 if args.tiny else 64
    text_len, text_dim = (16, 32) if args.tiny else (77, 768)
    rows, reference = [], {}
    for batch in args.batches:
        g = torch.Generator("cpu").manual_seed(batch)
        z = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
        embeds = torch.randn(batch, text_len, text_dim, generator=g).to(device, dtype)
        for variant in args.variants:
            unet, vae = build(args.tiny, device, dtype)  # fresh modules: layouts and compilation don't leak
            if variant == "stock":
                pipe = stock_pipeline(unet, vae)

                def fn(pipe=pipe, z=z, embeds=embeds):
                    return pipe(
                        prompt_embeds=embeds,
                        latents=z.clone(),
                        num_inference_steps=1,
                        guidance_scale=1.0,
                        output_type="pt",
                    ).images
            else:
                opts = set(variant.split("+")[1:])
                unknown = opts - {"cl", "cudnn", "compile", "graphs"}
                if unknown:
                    raise SystemExit(f"variant {variant!r}: unknown options {sorted(unknown)}")
                gen = WadiOneStep(
                    unet, vae, latent, "cl" in opts, compile="compile" in opts, graphs="graphs" in opts
                )

                def fn(gen=gen, z=z, embeds=embeds):
                    return gen(z.clone(), embeds)

            torch.backends.cudnn.benchmark = "cudnn" in variant.split("+")
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times, warm, images = timed(fn, device, args.warmup, args.reps)
            except Exception as e:
                rows.append({"batch": batch, "variant": variant, "error": f"{type(e).__name__}: {e}"[:400]})
                print(json.dumps(rows[-1]), flush=True)
                continue
            images = images.float()
            med = statistics.median(times)
            row = {
                "batch": batch,
                "variant": variant,
                "ms": med * 1e3,
                "ms_min": min(times) * 1e3,
                "img_per_s": batch / med,
                "warmup_s": warm,
                "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30
                if device.type == "cuda"
                else None,
            }
            if variant == "stock":
                reference[batch] = images
            elif batch in reference:
                diff = (images - reference[batch]).abs()
                mse = float(diff.square().mean())
                row["max_abs_diff"] = float(diff.max())
                row["psnr_db"] = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
            rows.append(row)
            print(json.dumps(row), flush=True)
            del unet, vae, fn
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "onestep.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    stock = {r["batch"]: r["img_per_s"] for r in rows if r["variant"] == "stock" and "img_per_s" in r}
    print(f"\n{header['device']}  torch {header['torch']}  diffusers {header['diffusers']}")
    print("| batch | variant | ms | img/s | x stock | peak GiB | max abs diff | PSNR dB | warm-up s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['batch']} | {r['variant']} | {r['error'][:70]} | | | | | | |")
            continue
        x = r["img_per_s"] / stock[r["batch"]] if r["batch"] in stock else float("nan")
        print(
            f"| {r['batch']} | {r['variant']} | {r['ms']:.1f} | {r['img_per_s']:.1f} | {x:.2f} | "
            f"{r['peak_gib'] or float('nan'):.2f} | {r.get('max_abs_diff', float('nan')):.4f} | "
            f"{r.get('psnr_db', float('nan')):.1f} | {r['warmup_s']:.1f} |"
        )
    return rows


if __name__ == "__main__":
    main()
