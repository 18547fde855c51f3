"""The training progress bar: `step N/M` and short metric names.

Lightning's RichProgressBar counts batches of an epoch; wadi trains on an endless prompt stream for `max_steps`
steps (max_epochs=-1), so the stock bar read `Epoch 0/-2` and restarted its count on a resume, and the long
metric names (`train/loss_generat…`) wrapped over several lines.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


def short_name(name: str) -> str:
    """`train/loss_generator` -> `loss_gen`, `train/loss_fake_score` -> `loss_fake`, `val/toy_fid` -> `toy_fid`."""
    name = name.rsplit("/", 1)[-1]
    return name.replace("generator", "gen").replace("fake_score", "fake")


class StepProgressBar(RichProgressBar):
    """RichProgressBar over the run's optimizer steps: `step ━━━━ N/M`, metrics with short names, no `v_num`."""

    @property
    def total_train_batches(self) -> int | float:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps is not None and max_steps > 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "step"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._update(self.train_progress_bar_id, trainer.global_step)  # the run's step, also after a resume
        self.refresh()

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return {short_name(k): v for k, v in metrics.items()}
