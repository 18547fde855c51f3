"""An endless, deterministic, resumable stream of prompt batches for distillation."""

from __future__ import annotations

import torch
from torch.utils.data import IterableDataset, get_worker_info


class PromptStream(IterableDataset):
    """Batches of prompts; global batch k for rank r of W holds positions [k*B*W + r*B, k*B*W + (r+1)*B)
    of an endless sequence made of passes over the prompt list, each pass a permutation seeded by
    (seed, pass). Starting at `start_batch` (the number of completed steps) continues a run exactly."""

    def __init__(
        self,
        prompts: list[str],
        batch_size: int,
        seed: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not prompts:
            raise ValueError("PromptStream needs at least one prompt")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.prompts = list(prompts)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.rank = rank
        self.world_size = world_size
        self._perm_cache: tuple[int, torch.Tensor] | None = None

    def permutation(self, pass_index: int) -> torch.Tensor:
        if self._perm_cache is None or self._perm_cache[0] != pass_index:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
            self._perm_cache = (pass_index, torch.randperm(len(self.prompts), generator=g))
        return self._perm_cache[1]

    def batch(self, k: int) -> dict:
        """Global batch k of this rank."""
        n = len(self.prompts)
        first = (k * self.world_size + self.rank) * self.batch_size
        positions = range(first, first + self.batch_size)
        index = torch.tensor([int(self.permutation(p // n)[p % n]) for p in positions])
        return {"prompt": [self.prompts[i] for i in index], "index": index, "pass": first // n}

    def __iter__(self):
        if get_worker_info() is not None and get_worker_info().num_workers > 1:
            raise RuntimeError("PromptStream is cheap and ordered: use DataLoader(num_workers=0 or 1)")
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1
