"""The prompt DataModule: where distillation prompts come from, streamed resumably (no images needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
from torch.utils.data import DataLoader


class PromptDataModule(L.LightningDataModule):
    """Prompts from the toy world (`source: toy`) or a prompt file (JourneyDB JSONL, COCO JSON, text).

    `grammar: toy` (set by the toy backbones' recipe defaults) refuses a prompt file that is mostly not toy
    captions: the toy teachers know no other words.

    The stream restarts at the number of completed steps, so `ckpt_path=last` continues with exactly the
    batches an uninterrupted run would have seen.
    """

    def __init__(
        self,
        source: str,
        batch_size: int,
        format: str = "auto",
        seed: int = 0,
        max_samples: int | None = None,
        num_prompts: int = 100_000,
        cache_dir: str | None = None,
        sample_prompts: Sequence[str] = (),
        backbone: Mapping[str, Any] | None = None,
        grammar: str | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.batch_size = int(batch_size)
        self.format = format
        self.seed = seed
        self.max_samples = max_samples
        self.num_prompts = num_prompts
        self.cache_dir = cache_dir
        self.sample_prompts = list(sample_prompts)
        self.backbone = dict(backbone) if backbone is not None else None
        self.grammar = (
            grammar  # a prompt file's prompts must follow it (wadi.data.prompts.GRAMMARS), e.g. toy
        )
        self._prompts: list[str] | None = None
        self._cache = None

    def prompts(self) -> list[str]:
        if self._prompts is None:
            if self.source == "toy":
                from wadi.toy.world import toy_prompts

                self._prompts = toy_prompts(self.num_prompts, seed=self.seed, split="train")
            else:
                from wadi.data.prompts import load_prompts

                self._prompts = load_prompts(
                    self.source,
                    format=self.format,
                    seed=self.seed,
                    max_samples=self.max_samples,
                    grammar=self.grammar,
                )
        return self._prompts

    def embedding_cache(self):
        """The text-embedding cache of these prompts (`python -m wadi.cache_prompts`), or None without cache_dir."""
        if self.cache_dir is None:
            return None
        if self._cache is None:
            from wadi.data.cache import EmbeddingCache, backbone_encoder_hash

            if self.backbone is None:
                raise ValueError(
                    "dataset.cache_dir is set but the dataset has no backbone config to key the cache"
                )
            self._cache = EmbeddingCache.open(
                self.cache_dir, backbone_encoder_hash(self.backbone), self.prompts()
            )
        return self._cache

    def text_encoder(self):
        """The embedding cache as a text encoder (`wadi.data.cache.CachedTextEncoder`) for the module, or None
        without cache_dir (the module then loads the backbone's own)."""
        cache = self.embedding_cache()
        if cache is None:
            return None
        from wadi.data.cache import CachedTextEncoder

        return CachedTextEncoder(cache)

    def train_dataloader(self) -> DataLoader:
        from wadi.data.prompts import PromptStream

        trainer = self.trainer
        start = trainer.global_step if trainer is not None else 0
        rank = trainer.global_rank if trainer is not None else 0
        world = trainer.world_size if trainer is not None else 1
        stream = PromptStream(
            self.prompts(),
            self.batch_size,
            seed=self.seed,
            start_batch=start,
            rank=rank,
            world_size=world,
            cache=self.embedding_cache(),
        )
        return DataLoader(stream, batch_size=None, num_workers=0)
