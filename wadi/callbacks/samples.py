"""A fixed-prompt, fixed-seed sample grid every N steps: the quickest way to see a student improve."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L

from wadi.callbacks.images import PeriodicImages, generate_and_save, step_path


class SampleGridCallback(PeriodicImages):
    """Generate `prompts` x `seeds_per_prompt` one-step images every `every_n_steps` and at the end."""

    def __init__(
        self,
        prompts: Sequence[str],
        every_n_steps: int = 100,
        seeds_per_prompt: int = 2,
        dirpath: str | None = None,
        seed: int = 0,
    ) -> None:
        self.prompts = list(prompts)
        self.every_n_steps = every_n_steps
        self.seeds_per_prompt = seeds_per_prompt
        self.dirpath = dirpath
        self.seed = seed

    def save(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.prompts:
            return
        prompts = [p for p in self.prompts for _ in range(self.seeds_per_prompt)]
        seeds = [self.seed + i for i in range(len(prompts))]
        generate_and_save(
            trainer,
            module,
            lambda: module.generate(prompts, seeds),
            step_path(trainer, self.dirpath, "samples"),
            nrow=self.seeds_per_prompt,
            log_key="samples",
            captions=prompts,  # one row per prompt, captioned
        )
