"""CPU diagnosis of the scale-wise SwD student on toy-sd (experiments/swd/RESULTS.md, "Why scale-wise fails").

    python -m experiments.swd.diagnose_toy --n 100
    python -m experiments.swd.diagnose_toy --n 100 --no-shapes --chains 8,10,12,16 16,16,16,16 8,16,16,16 \
        8,10,16,16 12,12,12,16 --teacher-sizes 12 16 --grid experiments/swd/results/diagnose_toy_grid.png
    python -m experiments.swd.diagnose_toy --n 100 --no-shapes --experiment toy_pixart_gpu --guidance 3.0 \
        --chains 8,10,12,16 16,16,16,16 --teacher-sizes 12 16

No training: the untrained student (the generator adapter is zero at init, so it is the teacher) sampled through
the same `generate` the eval callback uses, for the default scale-wise chain (8/10/12/16) and the full-resolution
one (16/16/16/16, same timesteps); then the teacher itself (25-step DDIM, CFG 4.5) at latent sizes 8/10/12/16
(upscaled bicubically to 16 before decoding), which is what DMD's real score sees at the small scales; then the
U-Net's block shapes at each size. Toy metrics on `--n` held-out samples (toy FID at small n is dominated by its
sample-size bias: compare accuracies).
"""

from __future__ import annotations

import argparse
import time

import torch

from wadi.distill.swd import default_timesteps, upscale
from wadi.evaluation import ToyPromptEvaluator, evaluate_prompts
from wadi.samplers import ddim_sample, seeded_noise
from wadi.testing import compose_config
from wadi.train import build_module

EXPERIMENT = "toy_gpu"


def module_for(*overrides: str):
    cfg = compose_config([f"experiment={EXPERIMENT}", "method=swd", "swd.samples=/nonexistent", *overrides])
    module = build_module(cfg)
    module.eval()
    return module


def teacher_generate(module, size: int, guidance: float, steps: int = 25):
    def generate(prompts, seeds):
        cond = module.conditioning({"prompt": prompts})
        uncond = module.null_conditioning({"prompt": prompts})
        c = module.backbone.latent_shape[0]
        z = seeded_noise(seeds, (c, size, size), module.device)
        x0 = ddim_sample(module.denoiser, z, cond, uncond, module.alphas_cumprod, steps, guidance)
        return module.backbone.decode(upscale(x0.float(), module.backbone.cfg.latent_size))

    return generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="held-out samples per row (a multiple of 4)")
    ap.add_argument(
        "--chains",
        nargs="*",
        default=["8,10,12,16", "16,16,16,16"],
        help="untrained-student chains to measure (latent sizes, comma-separated)",
    )
    ap.add_argument("--teacher-sizes", nargs="*", type=int, default=[8, 10, 12, 16])
    ap.add_argument(
        "--grid", type=str, default=None, help="also save a PNG: one row of 8 held-out prompts per row"
    )
    ap.add_argument("--experiment", default="toy_gpu", help="toy_pixart_gpu: the toy-pixart backbone")
    ap.add_argument("--guidance", type=float, default=4.5, help="the teacher rows' CFG (toy-pixart: 3.0)")
    ap.add_argument("--no-shapes", action="store_true", help="skip the block shapes and the x0 statistics")
    args = ap.parse_args()
    global EXPERIMENT
    EXPERIMENT = args.experiment
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    swd = module_for()
    full4 = module_for("swd.scales=[16,16,16,16]")
    ac = swd.alphas_cumprod
    ts = default_timesteps(ac)
    print(f"swd student: {swd.student!r}; full4: {full4.student!r}")
    print(f"SNR-matched timesteps (the backbone schedule, {ac.shape[0]} steps): {ts}")
    for t in ts:
        a = float(ac[t])
        print(f"  t={t}: abar={a:.4f} alpha={a**0.5:.3f} sigma={(1 - a) ** 0.5:.3f} SNR={a / (1 - a):.4f}")
    print(f"alpha_T used at t=T by the student (backbone.alpha_T): {swd.backbone.cfg.alpha_T}")

    if args.no_shapes:
        return evaluate_rows(args, swd)
    shapes: list[str] = []
    unet = swd.backbone.denoiser if hasattr(swd.backbone, "denoiser") else None
    unet = getattr(swd.denoiser, "model", None) or getattr(swd.denoiser, "unet", None) or unet
    hooks = []
    if unet is not None and hasattr(unet, "down_blocks"):
        for name in (
            "conv_in",
            "down_blocks.0",
            "down_blocks.1",
            "down_blocks.2",
            "mid_block",
            "up_blocks.0",
            "up_blocks.1",
            "up_blocks.2",
            "conv_out",
        ):
            mod = unet.get_submodule(name)
            hooks.append(
                mod.register_forward_hook(
                    lambda m, i, o, name=name: shapes.append(
                        f"{name}:{tuple((o[0] if isinstance(o, tuple) else o).shape[-2:])}"
                    )
                )
            )
    for size in (8, 10, 12, 16):
        shapes.clear()
        x = torch.randn(1, 4, size, size)
        cond = swd.conditioning({"prompt": ["a red circle"]})
        swd.denoiser(x, torch.tensor([500]), cond, None)
        print(f"U-Net at {size}x{size}: " + " ".join(shapes))
    for h in hooks:
        h.remove()

    prompts8 = ["a large red circle at the center", "a small blue square at the left"] * 4
    for name, m in (("scale-wise", swd), ("full-res", full4)):
        traj: list[torch.Tensor] = []
        cond = m.conditioning({"prompt": prompts8})
        z = seeded_noise(list(range(8)), m.student.noise_shape(m.backbone.latent_shape), m.device)
        m.student.generate(m.denoiser, z, cond, ac, "generator", m.backbone.cfg.alpha_T, trajectory=traj)
        stats = ", ".join(f"std {x.std():.2f} max|x| {x.abs().max():.1f}" for x in traj)
        print(f"untrained {name} chain, x0 after each step (upscaled to 16): {stats}")
    cond = swd.conditioning({"prompt": prompts8})
    uncond = swd.null_conditioning({"prompt": prompts8})
    zt = seeded_noise(list(range(8)), swd.backbone.latent_shape, swd.device)
    xt = ddim_sample(swd.denoiser, zt, cond, uncond, ac, 25, 4.5)
    print(f"teacher 25-step x0 at 16: std {xt.std():.2f} max|x| {xt.abs().max():.1f}")

    evaluate_rows(args, swd)


def evaluate_rows(args, swd) -> None:
    ev = ToyPromptEvaluator(swd.hparams.get("classifier_path", None) or _classifier(), n_samples=args.n)
    ev.setup("cpu")
    prompts = ev.prompts()
    rows = []
    for chain in args.chains:
        m = module_for(f"swd.scales=[{chain}]")
        rows.append((f"untrained student, chain {chain.replace(',', '/')}", m.generate))
    g = args.guidance
    rows += [
        (f"teacher 25-step DDIM g{g} at {s}x{s} (up to 16)", teacher_generate(swd, s, g))
        for s in args.teacher_sizes
    ]
    if args.grid:
        from wadi.images import save_grid

        first = prompts[:: ev.per_prompt][:8]
        images = [gen([p.caption for p in first], [p.seed for p in first]).float().cpu() for _, gen in rows]
        save_grid(torch.cat(images), args.grid, nrow=len(first))
        print(
            f"grid {args.grid}: rows "
            + "; ".join(name for name, _ in rows)
            + "; columns: "
            + "; ".join(p.caption for p in first)
        )
    for name, gen in rows:
        start = time.time()
        m = evaluate_prompts(gen, ev, prompts, batch_size=50)
        print(
            f"{name}: toy FID {m['toy_fid']:.1f}, accuracy {m['prompt_accuracy']:.3f}, "
            f"diversity {m['diversity']:.1f} (n={m['n_samples']}, {time.time() - start:.0f} s)",
            flush=True,
        )


def _classifier() -> str:
    cfg = compose_config([f"experiment={EXPERIMENT}"])
    return str(cfg.eval.classifier_path)


if __name__ == "__main__":
    main()
