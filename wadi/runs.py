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
- `resolve_ckpt_path`: `last`, `auto` or a path, local or fsspec (s3://, gs://, memory://).
- `logger_kwargs`: a resumed run logs into the same W&B run (its id is kept in `<run_dir>/wandb_run_id`).
- `final_report`: what the end of a run prints: the final metrics and every output path.
- `ConfiguredLearningRates`: a resume trains at the learning rates of this run's config (the ones its
  config.yaml records), not at those stored in the checkpoint's optimizer state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint
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


def resolve_ckpt_path(ckpt_path: str | None, run_dir: str | Path) -> str | None:
    """None (fresh run), "last" (<run_dir>/checkpoints/last.ckpt, which must exist), "auto" (last.ckpt if it
    exists, else a fresh run: what a requeued cluster job wants), or a checkpoint path: local or any fsspec URL
    (s3://bucket/run/last.ckpt, gs://, memory://), as Lightning's checkpoint IO reads them."""
    from fsspec.core import url_to_fs

    if ckpt_path in (None, "", "null"):
        return None
    last = f"{str(run_dir).rstrip('/')}/{CHECKPOINT_DIR}/last.ckpt"
    path = last if ckpt_path in ("auto", "last") else str(ckpt_path)
    fs, inner = url_to_fs(path)
    found = fs.isfile(inner)
    if ckpt_path == "auto":
        return path if found else None
    if not found:
        raise FileNotFoundError(f"ckpt_path={ckpt_path!r}: no checkpoint at {path}")
    return path


def check_resume_compatible(cfg: DictConfig, ckpt_path: str | Path) -> None:
    """The checkpoint's backbone / rank / fake_rank / EMA against this run's config (read, not built)."""
    import torch

    from wadi.callbacks.checkpoint_io import local_path
    from wadi.distill.module import check_checkpoint_compatible

    local = local_path(ckpt_path)
    if local is None:  # s3://, gs://, ...: read through fsspec, as Lightning will
        import fsspec

        with fsspec.open(str(ckpt_path), "rb") as f:
            checkpoint = torch.load(f, map_location="cpu", weights_only=True)
    else:
        try:  # mmap: only the small "wadi" entry is read from disk
            checkpoint = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file (mmap needs one): read it whole
            checkpoint = torch.load(local, map_location="cpu", weights_only=True)
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


class ConfiguredLearningRates(Callback):
    """A resumed run trains at the learning rates it is configured with.

    Lightning restores the optimizer state after `configure_optimizers`, and with it the checkpoint's
    `param_groups[i]["lr"]`: `ckpt_path=last lr=<new>` recorded the new lr in config.yaml but trained at the old
    one. The configured rates are read at fit start (after `configure_optimizers`, before the restore) and set
    again when training starts; each change is printed once.
    """

    def __init__(self) -> None:
        self.configured: list[list[float]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.configured = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]

    def on_train_start(self, trainer, pl_module) -> None:
        for i, (opt, rates) in enumerate(zip(trainer.optimizers, self.configured)):
            for group, lr in zip(opt.param_groups, rates):
                if group["lr"] != lr:
                    if trainer.is_global_zero:
                        print(
                            f"wadi: resume: optimizer {i} lr {group['lr']:g} (checkpoint) -> {lr:g} (this run's config)"
                        )
                    group["lr"] = lr


WANDB_RUN_ID = "wandb_run_id"


def logger_kwargs(logger_cfg: Any, run_dir: str | Path, resuming: bool) -> dict[str, Any]:
    """Extra arguments for the configured logger. W&B: the run id, created with the run and kept in
    `<run_dir>/wandb_run_id`, so that a resume (`ckpt_path=last`) continues the same W&B run (resume="allow")
    instead of starting a new one. An id set in the config (`logger.id=...`) wins. Other loggers: none."""
    if logger_cfg is None or not str(logger_cfg.get("_target_", "")).endswith("WandbLogger"):
        return {}
    if logger_cfg.get("id"):
        return {}
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    path = Path(run_dir) / WANDB_RUN_ID
    if resuming and path.is_file():
        run_id = path.read_text().strip()
    else:
        import secrets

        run_id = secrets.token_hex(4)  # W&B's own ids are 8 lowercase letters / digits too
        if rank_zero_only.rank == 0:  # only rank 0 logs to W&B (the other ranks' ids are never used)
            path.write_text(run_id + "\n")
    return {"id": run_id, "resume": "allow"}


def _latest(folder: Path, pattern: str) -> Path | None:
    found = sorted(folder.glob(pattern)) if folder.is_dir() else []
    return found[-1] if found else None


def _logger_paths(trainer) -> list[tuple[str, str]]:
    """(label, path) of each logger's output: the CSV file, the W&B run folder (and how to sync it)."""
    rows = []
    for logger in getattr(trainer, "loggers", []):
        name = type(logger).__name__
        if name == "CSVLogger":
            csv = Path(logger.log_dir) / "metrics.csv"
            rows.append(
                ("metrics csv", csv if csv.is_file() else logger.log_dir)
            )  # no file before a first log
        elif name == "WandbLogger":
            experiment = getattr(logger, "_experiment", None)
            folder = getattr(experiment, "dir", None)
            if folder:
                run = Path(folder).parent
                offline = "offline-run" in run.name
                rows.append(("wandb", f"{run}" + (f"  (upload: wandb sync {run})" if offline else "")))
        elif getattr(logger, "log_dir", None):
            rows.append((name, str(logger.log_dir)))
    return rows


def final_report(
    trainer,
    run_dir: str | Path,
    metrics: dict[str, float],
    outputs: dict[str, Any],
    eval_name: str | None = None,
    merged_note: str = "stock diffusers, one step",
) -> str:
    """The end-of-run summary: step, final metrics (train/ and val/), every output path that exists, and the
    commands that sample / evaluate the export (`eval_name`: the run's evaluation protocol, if any; `merged_note`:
    how the merged export samples)."""
    run = Path(run_dir)
    lines = [f"wadi: run finished at step {trainer.global_step}. Results in {run}/"]
    for prefix in ("train/", "val/"):
        shown = [
            f"{k.removeprefix(prefix)} {v:.4g}" for k, v in sorted(metrics.items()) if k.startswith(prefix)
        ]
        if shown:
            lines.append(f"  {prefix[:-1] + ' metrics':<14}" + ", ".join(shown))
    last = run / CHECKPOINT_DIR / "last.ckpt"
    rows: list[tuple[str, Any]] = [("config", run / "config.yaml")]
    if last.is_file():
        rows.append(("checkpoint", f"{last}  (resume: rerun with ckpt_path=last)"))
    rows.append(("samples", _latest(run / "samples", "step*.png")))
    rows.append(("eval metrics", _latest(run / "eval", "step*.json")))
    rows.append(("eval grid", _latest(run / "eval", "step*.png")))
    rows.extend(_logger_paths(trainer))
    if (run / "train.log").is_file():
        rows.append(("console log", run / "train.log"))
    if outputs.get("adapters"):
        rows.append(("adapters", outputs["adapters"]))
    if outputs.get("merged"):
        merged = outputs["merged"]
        rows.append(("merged model", f"{merged}  ({merged_note})"))
        rows.append(
            ("sample", f"python -m wadi.sample model={merged} prompts='a large red circle at the left'")
        )
        if eval_name:
            rows.append(("evaluate", f"python -m wadi.evaluate model={merged} eval={eval_name}"))
    lines += [f"  {label:<14}{value}" for label, value in rows if value]
    return "\n".join(lines)
