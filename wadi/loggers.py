"""Experiment loggers as wadi configures them (conf/logger/)."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger, without the `anonymous=None` it always hands to `wandb.init`: current wandb warns
    "The anonymous setting has no effect" whenever that key is present."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
