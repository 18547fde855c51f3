"""Run-folder policy for `wadi.train`: what a run folder may hold, when a rerun may reuse it, and where its
checkpoints go.

- `check_training_config`: refuse `max_steps < 1` before anything loads (0 would export the untrained teacher,
  -1 would run forever).
- `prepare_run_dir`: a rerun without `ckpt_path` into a folder that already holds checkpoints is refused (it
  would mix two runs: `last-v1.ckpt`, one `eval/` for both); a resume whose checkpoint does not match this run
  (backbone, rank, fake_rank, EMA) is refused before `config.yaml` is written, so the run's config stays the
  one its checkpoints were made with.
- `RunCheckpoint`: Lightning's ModelCheckpoint that also writes the final state as `last.ckpt` when training
  ends (the stock one only does when nothing was saved yet, so a 150-step run checkpointing every 100 steps
  ended with last.ckpt at step 100).
- `with_run_checkpoint`: with no checkpoint callback configured (`callbacks=none`), checkpoints still go to
  `<run_dir>/checkpoints/` (where `ckpt_path=last` looks) instead of the logger's `csv/version_0/checkpoints/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

CHECKPOINT_DIR = "checkpoints"


def check_training_config(cfg: DictConfig) -> None:
    """Refuse settings that cannot make a run, before anything is loaded."""
    for key, value in (("max_steps", cfg.get("max_steps")), ("trainer.max_steps", _trainer_max_steps(cfg))):
        if value is not None and int(value) < 1:
            raise ValueError(
                f"{key}={value}: a run needs max_steps >= 1 (0 would export the untrained teacher, -1 would "
                "train forever); set max_steps=N"
            )


def _trainer_max_steps(cfg: DictConfig) -> Any:
    trainer = cfg.get("trainer")
    return trainer.get("max_steps") if trainer is not None else None


def existing_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    return sorted(folder.glob("*.ckpt")) if folder.is_dir() else []


def prepare_run_dir(cfg: DictConfig, run_dir: str | Path, ckpt_path: str | None) -> None:
    """Checks to pass before the run folder is written to (its config.yaml first).

    ckpt_path is the resolved checkpoint (None: a fresh run).
    """
    if ckpt_path is None:
        found = existing_checkpoints(run_dir)
        if found:
            names = ", ".join(p.name for p in found[:3]) + (", ..." if len(found) > 3 else "")
            raise FileExistsError(
                f"run folder {run_dir} already holds checkpoints ({names}) from an earlier run; a fresh run "
                "there would mix the two. Pass ckpt_path=last to resume it, or start a new run in another "
                "folder: name=<new name> or output_root=<other folder>"
                + (" (or run_dir=<other folder>)" if cfg.get("run_dir") else "")
                + "."
            )
        return
    check_resume_compatible(cfg, ckpt_path)


def check_resume_compatible(cfg: DictConfig, ckpt_path: str | Path) -> None:
    """The checkpoint's backbone / rank / fake_rank / EMA against this run's config (read, not built)."""
    import torch

    from wadi.distill.module import check_checkpoint_compatible

    try:  # mmap: only the small "wadi" entry is read from disk
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file (mmap needs one): read it whole
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    try:
        check_checkpoint_compatible(
            checkpoint,
            str(cfg.backbone.name),
            int(cfg.rank),
            int(cfg.fake_rank),
            bool(cfg.get("ema_decay")),
        )
    except ValueError as err:
        raise ValueError(f"resume from {ckpt_path} refused: {err}") from None


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose `last.ckpt` is the state training ended with (with save_last)."""

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.save_last or trainer.fast_dev_run or trainer.sanity_checking:
            return
        if self._last_global_step_saved == trainer.global_step and self._last_checkpoint_saved:
            return  # the last step was just saved (every_n_train_steps divides max_steps)
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def with_run_checkpoint(callbacks: list, run_dir: str | Path, cfg: DictConfig) -> list:
    """`callbacks` plus a RunCheckpoint into <run_dir>/checkpoints when none is configured and the trainer
    checkpoints (Lightning's default one would write under the logger's folder)."""
    if any(isinstance(c, ModelCheckpoint) for c in callbacks):
        return callbacks
    trainer = cfg.get("trainer")
    if trainer is not None and trainer.get("enable_checkpointing") is False:
        return callbacks
    return [*callbacks, RunCheckpoint(dirpath=str(Path(run_dir) / CHECKPOINT_DIR), save_last=True)]
