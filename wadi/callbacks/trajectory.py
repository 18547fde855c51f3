"""x0-trajectory strips of the student during training: the teacher's first k steps, then the student."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import lightning as L
import torch

from wadi.analysis.trajectory import decode_trajectory, sample_trajectory
from wadi.callbacks.images import PeriodicImages, generate_and_save, step_path
from wadi.samplers import seeded_noise


class TrajectoryCallback(PeriodicImages):
    """Every `every_n_steps` (and at the end) save `trajectories/stepNNNNNNN.png`: one row per prompt.

    Each row is a hybrid run: the teacher (the module's adapter-free base, CFG `teacher_guidance`) takes the
    first `teacher_steps` of a `schedule_steps` DDIM schedule, then the one-step "generator"; the row shows
    the decoded predicted x0 after each step (teacher_steps + 1 frames). teacher_steps=0: the student alone.
    Uses the EMA generator when the module keeps one.
    """

    def __init__(
        self,
        every_n_steps: int,
        prompts: Sequence[str],
        teacher_steps: int = 1,
        schedule_steps: int = 25,
        teacher_guidance: float = 0.0,
        seed: int = 0,
        dirpath: str | None = None,
    ) -> None:
        if not 0 <= teacher_steps <= schedule_steps:
            raise ValueError(
                f"teacher_steps must be in [0, schedule_steps={schedule_steps}], got {teacher_steps}"
            )
        self.every_n_steps = every_n_steps
        self.prompts = list(prompts)
        self.teacher_steps = teacher_steps
        self.schedule_steps = schedule_steps
        self.teacher_guidance = teacher_guidance
        self.seed = seed
        self.dirpath = dirpath

    @torch.no_grad()
    def trajectory_images(self, pl_module) -> torch.Tensor:
        """(P, S, 3, H, W) decoded x0 frames for the configured prompts."""
        backbone = pl_module.backbone
        cond = pl_module.conditioning({"prompt": self.prompts})
        uncond = pl_module.null_conditioning()
        seeds = [self.seed + i for i in range(len(self.prompts))]
        z = seeded_noise(seeds, backbone.latent_shape, pl_module.device, cond.embeds.dtype)
        ema = getattr(pl_module, "ema", None)
        with ema.swapped() if ema is not None else nullcontext():
            latents = sample_trajectory(
                pl_module.denoiser,
                z,
                cond,
                uncond,
                backbone.alphas_cumprod,
                adapter="generator",
                hybrid_k=self.teacher_steps,
                schedule_steps=self.schedule_steps,
                teacher_guidance=self.teacher_guidance,
                alpha_T=backbone.cfg.alpha_T,
            )
        return decode_trajectory(backbone, latents)

    def save(self, trainer: L.Trainer, pl_module) -> None:
        if not self.prompts:
            return
        generate_and_save(
            trainer,
            pl_module,
            lambda: self.trajectory_images(pl_module),  # (P, S, 3, H, W): one row per prompt
            step_path(trainer, self.dirpath, "trajectories"),
            log_key="trajectories",
        )
