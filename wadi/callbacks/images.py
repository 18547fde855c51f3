"""The one generate-and-save step of the image callbacks (sample grids, trajectories, evaluation grids)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch

from wadi.images import save_grid


def step_path(trainer: L.Trainer, dirpath: str | None, folder: str) -> Path:
    """<dirpath or the run dir>/<folder>/stepNNNNNNN.png for the trainer's current step."""
    return Path(dirpath or trainer.default_root_dir) / folder / f"step{trainer.global_step:07d}.png"


def generate_and_save(
    trainer: L.Trainer,
    pl_module: L.LightningModule,
    make_images: Callable[[], torch.Tensor],
    path: Path,
    nrow: int | None = None,
    log_key: str | None = None,
    captions: list[str] | None = None,
) -> Path | None:
    """Run `make_images()` in eval mode without gradients on every rank (under trainer=fsdp the forward
    gathers shards: a collective), then on rank 0 save them as a grid at `path` and, with `log_key`, send
    it to the logger when it can log images. Returns the path on rank 0, None elsewhere.

    `make_images` returns (N, 3, H, W) images in [0, 1], or (B, S, 3, H, W) to save one row of S per entry.
    `captions` (one per image): the grid has one captioned row per prompt, and the logged image its prompts.
    """
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            images = make_images()
    finally:
        pl_module.train(was_training)
    if not trainer.is_global_zero:
        return None
    if images.ndim == 5:
        images, nrow = images.flatten(0, 1), images.shape[1]
    save_grid(images, path, nrow=nrow, captions=captions)
    logger = trainer.logger
    if log_key is not None and logger is not None and hasattr(logger, "log_image"):
        extra = {"caption": [grid_caption(captions)]} if captions else {}  # W&B shows it under the image
        logger.log_image(key=log_key, images=[str(path)], step=trainer.global_step, **extra)
    return path


def grid_caption(captions: list[str] | None) -> str:
    """The caption of a logged grid: its prompts, one per row, in order."""
    if not captions:
        return ""
    rows = list(dict.fromkeys(captions))
    return " | ".join(f"row {i + 1}: {c}" for i, c in enumerate(rows))


class PeriodicImages(L.Callback):
    """Calls `save(trainer, pl_module)` every `every_n_steps` training steps (0: never) and at the end."""

    every_n_steps: int

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self.save(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.save(trainer, pl_module)
