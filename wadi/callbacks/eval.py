"""FID-style evaluation during training: every N steps and at the end, on a fixed prompt subset.

Every rank generates its strided share of the subset with `pl_module.generate(prompts, seeds)` (EMA weights
when the module keeps an EMA), per-image features are gathered in prompt order, and every rank computes the
same metrics a single process would. Logged as `val/<metric>` (COCO: fid, clip, precision, recall; toy:
toy_fid, prompt_accuracy, diversity) and written to `<run dir>/eval/step<N>.json`, with a fixed-prompt
sample grid `<run dir>/eval/step<N>.png` (also sent to the logger when it can log images).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch

from wadi.callbacks.images import generate_and_save, grid_caption, step_path
from wadi.evaluation import evaluate_prompts


class EvalCallback(L.Callback):
    """Evaluate the first `n_samples` of `evaluator.prompts()` (all if None) every `every_n_steps` steps.

    `evaluator`: a wadi.evaluation.CocoEvaluator or ToyPromptEvaluator (conf/eval/*.yaml); its weights and
    reference statistics load at the first evaluation, on the module's device.
    """

    def __init__(
        self,
        evaluator,
        every_n_steps: int = 1000,
        n_samples: int | None = 5000,
        batch_size: int = 16,
        grid_size: int = 16,
        at_train_end: bool = True,
        dirpath: str | None = None,
    ) -> None:
        self.evaluator = evaluator
        self.every_n_steps = every_n_steps
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.grid_size = grid_size
        self.at_train_end = at_train_end
        self.dirpath = dirpath
        self.history: dict[int, dict[str, float]] = {}  # step -> metrics (every rank)
        self._ready = False

    def _prompts(self):
        prompts = self.evaluator.prompts()
        return prompts[: self.n_samples] if self.n_samples else prompts

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Run one evaluation now (on every rank; collective) and log it."""
        step = trainer.global_step
        if not self._ready:
            self.evaluator.setup(pl_module.device)
            self._ready = True
        was_training = pl_module.training
        pl_module.eval()
        try:
            metrics = evaluate_prompts(pl_module.generate, self.evaluator, self._prompts(), self.batch_size)
            grid = self._grid(trainer, pl_module, step)  # every rank (fsdp: collective forward), rank 0 saves
        finally:
            pl_module.train(was_training)
        self.history[step] = metrics
        logged = {f"val/{k}": float(v) for k, v in metrics.items() if k != "n_samples"}
        for k, v in logged.items():
            trainer.callback_metrics[k] = torch.tensor(v)
        if trainer.is_global_zero:
            out = self._dir(trainer)
            (out / f"step{step:07d}.json").write_text(json.dumps({"step": step, **metrics}, indent=2) + "\n")
            for logger in trainer.loggers:
                logger.log_metrics(logged, step=step)
                if hasattr(logger, "log_image"):
                    caption = grid_caption([p.caption for p in self._prompts()[: self.grid_size]])
                    logger.log_image(key="val/samples", images=[str(grid)], step=step, caption=[caption])
        return metrics

    def _dir(self, trainer: L.Trainer) -> Path:
        out = Path(self.dirpath or trainer.default_root_dir) / "eval"
        out.mkdir(parents=True, exist_ok=True)
        return out

    def _grid(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> Path | None:
        """The first `grid_size` evaluation prompts with their seeds: the same images at every step."""
        prompts = self._prompts()[: self.grid_size]
        return generate_and_save(
            trainer,
            pl_module,
            lambda: pl_module.generate([p.caption for p in prompts], [p.seed for p in prompts]).float().cpu(),
            step_path(trainer, self.dirpath, "eval"),  # = self._dir(trainer) / f"step{step:07d}.png"
            captions=[p.caption for p in prompts],
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (
            self.every_n_steps > 0
            and step > 0
            and step % self.every_n_steps == 0
            and step not in self.history
        ):
            self.evaluate(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_train_end and trainer.global_step not in self.history:
            self.evaluate(trainer, pl_module)
