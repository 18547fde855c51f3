"""Step time and peak GPU memory, logged as perf/* and summarised at the end of training."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch


class StepStats(L.Callback):
    """Wall time per training step (after `warmup` steps) and peak CUDA memory; optional JSON summary."""

    def __init__(self, warmup: int = 2, path: str | None = None) -> None:
        self.warmup = warmup
        self.path = path
        self.times: list[float] = []
        self._t0 = 0.0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        dt = time.perf_counter() - self._t0
        if trainer.global_step > self.warmup:
            self.times.append(dt)
        pl_module.log("perf/step_time_s", dt, on_step=True)

    def summary(self, trainer) -> dict:
        batch = trainer.datamodule.batch_size if trainer.datamodule is not None else None
        median = statistics.median(self.times) if self.times else float("nan")
        out = {
            "steps_timed": len(self.times),
            "median_step_s": median,
            "img_per_s": (batch / median) if batch and self.times else None,
            "batch_per_gpu": batch,
        }
        if torch.cuda.is_available():
            out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            out["device"] = torch.cuda.get_device_name()
        return out

    def on_train_end(self, trainer, pl_module) -> None:
        summary = self.summary(trainer)
        if trainer.is_global_zero:
            print("wadi perf:", json.dumps(summary))
            if self.path:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                Path(self.path).write_text(json.dumps(summary, indent=2))
