"""Toy teacher baselines (issue 3, item 4): toy FID / prompt accuracy / diversity of each shipped teacher.

    python experiments/toy/baselines.py --assets wadi/assets/toy --out experiments/toy/baselines.json

Rows, all under the protocol of conf/eval/toy.yaml (held-out captions, `per_prompt` seeds each, the
shipped classifier as judge, the same ToyPromptEvaluator the training callback uses):
  - real: the renderer drawing each prompt (fresh jitter and background per seed): the ceiling;
  - vae: those real images through the teachers' VAE (encode -> decode): the ceiling of any latent model;
  - <teacher> <steps> g=<scale>: trailing DDIM (eta 0) with CFG from the teacher's scheduler, via
    wadi.sample.load_generator; 1 step is the teacher's x0 prediction at t = T, what a student must beat.
Prints a markdown table; writes all rows as JSON and a sample grid per teacher.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from wadi.evaluate import ToyPromptEvaluator, measure
from wadi.images import save_grid
from wadi.sample import load_generator
from wadi.toy.assets import toy_asset_path
from wadi.toy.world import HELDOUT_SEEDS, ToyScene, parse_caption, render, sample_jitter, sample_scene


def scene_for_caption(text: str, seed: int) -> ToyScene:
    """A real scene that shows `text`: the caption's objects with the world's jitter ranges, drawn from
    `seed`, on the background of held-out scene `seed`."""
    rng = random.Random(f"wadi-toy-real:{seed}")
    objects = tuple(replace(o, **sample_jitter(rng)) for o in parse_caption(text).objects)
    background = sample_scene(HELDOUT_SEEDS[seed % len(HELDOUT_SEEDS)]).background
    return ToyScene(objects, background)


def real_generator(device):
    def generate(captions, seeds):
        images = render([scene_for_caption(c, s) for c, s in zip(captions, seeds)], device=device)
        return (images / 2 + 0.5).clamp(0, 1)

    return generate


def vae_generator(vae_dir: Path, device):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).to(device).eval()
    real = real_generator(device)

    @torch.no_grad()
    def generate(captions, seeds):
        x = real(captions, seeds) * 2 - 1
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        return (rec / 2 + 0.5).clamp(0, 1)

    return generate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", default=None, help="asset root (default: the shipped wadi/assets/toy)")
    p.add_argument("--teachers", nargs="+", default=["toy-sd", "toy-pixart"])
    p.add_argument("--steps", nargs="+", type=int, default=[25, 1])
    p.add_argument("--guidance", nargs="+", type=float, default=[1.0, 1.5, 2.0, 3.0, 4.5])
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--per-prompt", type=int, default=4)
    p.add_argument("--n-real", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="experiments/toy/baselines.json")
    p.add_argument("--grid-dir", default=None, help="where to save one sample grid per teacher")
    args = p.parse_args()

    device = torch.device(args.device)
    evaluator = ToyPromptEvaluator(
        str(toy_asset_path("toy-classifier", args.assets)),
        n_samples=args.n_samples,
        per_prompt=args.per_prompt,
        n_real=args.n_real,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    prompts = evaluator.prompts()
    evaluator.setup(device)
    rows = []

    def run(name: str, generate, **info) -> torch.Tensor:
        start = time.time()
        per_image, prepared = measure(generate, evaluator, prompts, args.batch_size)
        metrics = evaluator.summarize(per_image, prompts)
        row = {"row": name, **info, **metrics, "wall_s": round(time.time() - start, 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        return torch.from_numpy(prepared[:32]).permute(0, 3, 1, 2).float() / 255

    run("real", real_generator(device))
    sd_dir = toy_asset_path(args.teachers[0], args.assets)
    run("vae", vae_generator(sd_dir / "vae", device), vae=str(sd_dir / "vae"))
    for teacher in args.teachers:
        path = toy_asset_path(teacher, args.assets)
        gen = load_generator(path, teacher_steps=25, device=device, batch_size=args.batch_size)
        best = None
        for steps in args.steps:
            for g in args.guidance:
                gen.steps, gen.guidance_scale = steps, g
                grid = run(f"{teacher} {steps} steps g={g}", gen, teacher=teacher, steps=steps, guidance=g)
                acc = rows[-1]["prompt_accuracy"]
                if steps == max(args.steps) and (best is None or acc > best[0]):
                    best = (acc, grid, g)
        if args.grid_dir and best is not None:
            save_grid(
                best[1], Path(args.grid_dir) / f"{teacher}_{max(args.steps)}steps_g{best[2]}.png", nrow=8
            )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "protocol": evaluator.describe() | {"n_real": args.n_real},
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print("| row | toy FID | prompt accuracy | diversity |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['toy_fid']:.3f} | {r['prompt_accuracy']:.3f} | {r['diversity']:.3f} |")


if __name__ == "__main__":
    main()
