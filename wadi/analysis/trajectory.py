"""x0 trajectories (diversity distillation, spec section 6): the predicted clean image at every step.

A sampler's intermediate x0 predictions show where the composition is decided: a multi-step teacher fixes
the layout in its first step or two, which is why handing the one-step student a latent after k = 1
teacher steps restores diversity. One horizontal strip per prompt, left to right = sampling steps, each frame
labelled with the timestep it was predicted at (and teacher / student for the hybrid).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.backbones.denoiser import Denoiser
from wadi.images import labelled_strip, make_grid
from wadi.samplers import build_sampler


@torch.no_grad()
def sample_trajectory(
    denoiser: Denoiser,
    z: Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    alphas_cumprod: Tensor,
    **flags,
) -> Tensor:
    """Predicted x0 latents of every step, (S, B, C, h, w), of the sampler `build_sampler(**flags)` makes.

    steps=N: N-step DDIM with CFG `guidance_scale` under `adapter` (a teacher: adapter=None, the default here).
    hybrid_k=k > 0: the teacher's first k steps of a `schedule_steps` schedule (the adapter-free base of
    `denoiser`, or `teacher_denoiser`), then the one-step student under `adapter`: S = k + 1.
    Neither: the one-step student alone (S = 1), with the backbone's `alpha_T`.
    """
    sampler = build_sampler(**{"adapter": None, **flags})
    return run_trajectory(sampler, denoiser, z, cond, uncond, alphas_cumprod)


def run_trajectory(sampler, denoiser, z, cond, uncond, alphas_cumprod) -> Tensor:
    """(S, B, C, h, w) float32: the predicted x0 of every step of `sampler` (a wadi.samplers sampler)."""
    trajectory: list[Tensor] = []
    sampler(denoiser, z, cond, uncond, alphas_cumprod, trajectory=trajectory)
    return torch.stack([x.float() for x in trajectory])


@torch.no_grad()
def generator_trajectory(gen, prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
    """The x0 trajectory of a `wadi.generation.Generator` run with its own sampler, (S, B, C, h, w)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
    trajectory: list[Tensor] = []
    gen.latents(prompts, seeds, trajectory=trajectory)
    return torch.stack([x.float() for x in trajectory])


@torch.no_grad()
def decode_trajectory(backbone, trajectory: Tensor, batch_size: int = 16) -> Tensor:
    """(S, B, C, h, w) latents -> (B, S, 3, H, W) images in [0, 1] through `backbone.decode`."""
    steps, batch = trajectory.shape[:2]
    flat = trajectory.flatten(0, 1)  # (S*B, C, h, w), step-major
    images = torch.cat(
        [backbone.decode(flat[i : i + batch_size]).cpu() for i in range(0, len(flat), batch_size)]
    )
    return images.unflatten(0, (steps, batch)).transpose(0, 1)  # (B, S, 3, H, W)


def frame_labels(sampler, alphas_cumprod: Tensor) -> list[str]:
    """The timestep (and, for the hybrid and the student, the network) each trajectory frame was predicted at:
    one label per step of `sampler` (a wadi.samplers sampler), e.g. ["t=999\nteacher", "t=959\nstudent"]."""
    from wadi.diffusion import ddim_timesteps, generator_schedule
    from wadi.samplers import DDIM, Hybrid

    n = alphas_cumprod.shape[0]
    if isinstance(sampler, DDIM):
        return [f"t={t}" for t in ddim_timesteps(n, sampler.steps)]
    if isinstance(sampler, Hybrid) and sampler.teacher_steps > 0:
        ts = ddim_timesteps(n, sampler.schedule_steps)
        k = sampler.teacher_steps
        return [f"t={t}\nteacher" for t in ts[:k]] + ([f"t={ts[k]}\nstudent"] if k < len(ts) else [])
    return [f"t={generator_schedule(alphas_cumprod, sampler.alpha_T)[0]}\nstudent"]  # one step at T


def trajectory_strip(frames: Tensor, pad: int = 2, labels: Sequence[str] | None = None) -> np.ndarray:
    """One prompt's frames (S, 3, H, W) side by side: uint8 (H + 2 pad, S (W + pad) + pad, 3); with `labels`
    (one per frame, e.g. its timestep) written under the frames (`wadi.images.labelled_strip`)."""
    if labels is not None:
        return labelled_strip(frames, list(labels), pad=pad)
    return make_grid(frames, nrow=frames.shape[0], pad=pad)


def save_strips(
    images: Tensor,
    directory: str | Path,
    names: Sequence[str],
    pad: int = 2,
    labels: Sequence[str] | None = None,
) -> list[Path]:
    """One PNG strip per prompt from (B, S, 3, H, W) images; `labels`: one per frame (S), under each frame."""
    if images.ndim != 5 or len(names) != images.shape[0]:
        raise ValueError(
            f"expected (B, S, 3, H, W) images and B names, got {tuple(images.shape)}, {len(names)}"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for frames, name in zip(images, names):
        paths.append(directory / f"{name}.png")
        Image.fromarray(trajectory_strip(frames, pad, labels)).save(paths[-1])
    return paths


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
    """One strip per prompt (seed = seed + prompt index) of the decoded x0 predictions; returns the PNG paths.

    A teacher dir (no wadi_export.json) runs `steps`-step DDIM with CFG `guidance_scale`; a student (export or
    .ckpt) runs the hybrid sampler: the teacher's first `teacher_steps` of a `steps`-step schedule (CFG
    `teacher_guidance`), then the student. Writes <out>/trajectory_NN.png and <out>/prompts.json.
    """
    from wadi.export import EXPORT_INFO
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
    labels = frame_labels(gen.sampler, gen.backbone.alphas_cumprod)  # each frame's timestep, under it
    paths = save_strips(images, out, names, labels=labels)
    frames = images.shape[1]
    (Path(str(out)) / "prompts.json").write_text(
        json.dumps(
            [
                {
                    "file": p.name,
                    "prompt": q,
                    "seed": s,
                    "frames": frames,
                    "labels": [x.replace("\n", " ") for x in labels],
                }
                for p, q, s in zip(paths, prompts, seeds)
            ],
            indent=2,
        )
    )
    return paths
