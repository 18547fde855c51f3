"""A console a person can read: each Lightning line once, no advertising tips, no third-party deprecations.

- Lightning's `lightning` logger has its own console handler, and its records also reach the root logger, where
  Hydra's handlers (console + <run_dir>/train.log) print them again: with root handlers present, Lightning's own
  handler goes, so every line is printed once and still lands in train.log.
- Lightning's litlogger / litmodels "Tip" lines and the TPU / HPU availability lines are dropped.
- torch's `LeafSpec` FutureWarning, raised by Lightning's own pytree helper, is silenced (nothing a user can do).
- transformers' / diffusers' per-component "Loading weights" bars are turned off.
"""

from __future__ import annotations

import logging
import warnings

NOISE = ("💡 Tip:", "TPU available:", "HPU available:")
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in NOISE)


def quiet_console() -> None:
    """Apply the rules above (idempotent); call once the logging is configured (inside the Hydra app)."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in logger.filters):
            logger.addFilter(DropNoise())
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import diffusers

        diffusers.utils.logging.disable_progress_bar()
    except ImportError:
        pass
