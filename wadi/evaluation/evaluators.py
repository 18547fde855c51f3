"""The evaluation protocols: what is measured on generated images, independent of how they are generated.

  - `CocoEvaluator`: the GigaGAN / DMD2 protocol (wadi.metrics.protocol): Inception FID, CLIP score,
    precision / recall;
  - `ToyPromptEvaluator`: the toy world's FID / prompt accuracy / diversity (wadi.metrics.toy).
An evaluator has `prompts()`, `setup(device)`, `prepare(images) -> uint8 (N, H, W, 3)`,
`per_sample(prepared, captions) -> {name: (N, ...) tensor}` and `summarize(rows, prompts) -> {metric: float}`.
conf/eval/*.yaml instantiate them (for `python -m wadi.evaluate` and the training callback alike).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from wadi.metrics.clip import CLIP_HF_ID, ClipScorer, clip_score
from wadi.metrics.features import InceptionFeatures
from wadi.metrics.fid import ReferenceStats, feature_statistics, frechet_distance, reference_statistics
from wadi.metrics.prdc import precision_recall
from wadi.metrics.protocol import (
    EvalPrompt,
    list_reference_images,
    load_captions,
    protocol_images,
    tensor_to_uint8,
)


class CocoEvaluator:
    """Zero-shot COCO: `n_samples` captions (one per image), FID / CLIP / precision-recall at 256 px.

    Weights and reference statistics load on `setup` (lazily), so building one from a config is free.
    """

    def __init__(
        self,
        captions: str,
        reference_dir: str,
        inception_path: str,
        clip_path: str | None,
        n_samples: int = 30000,
        resolution: int = 256,
        resize_filter: str = "lanczos",
        batch_size: int = 64,
        stats_cache_dir: str | None = None,
        seed: int = 0,
        n_reference: int | None = None,
        k: int = 3,
        allow_download: bool = False,
        clip_hf_id: str = CLIP_HF_ID,
        num_workers: int = 0,
        name: str = "coco",
    ) -> None:
        self.captions, self.reference_dir = captions, reference_dir
        self.inception_path, self.clip_path = inception_path, clip_path
        self.n_samples, self.resolution, self.resize_filter = n_samples, resolution, resize_filter
        self.batch_size, self.stats_cache_dir, self.seed = batch_size, stats_cache_dir, seed
        self.n_reference, self.k, self.allow_download = n_reference, k, allow_download
        self.clip_hf_id, self.num_workers, self.name = clip_hf_id, num_workers, name
        self.device = torch.device("cpu")
        self.inception: InceptionFeatures | None = None
        self.clip: ClipScorer | None = None
        self.reference: ReferenceStats | None = None
        self._prompts: list[EvalPrompt] | None = None

    def prompts(self) -> list[EvalPrompt]:
        if self._prompts is None:
            self._prompts = load_captions(self.captions, self.n_samples, self.seed)
        return self._prompts

    def describe(self) -> dict:
        """What fixes the numbers (for metrics.json and the resume check)."""
        return {
            "name": self.name,
            "captions": str(self.captions),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "resolution": self.resolution,
            "resize_filter": self.resize_filter,
            "k": self.k,
            "clip_path": str(self.clip_path),
            "inception_sha256": self.inception.sha256 if self.inception else None,
        }

    def setup(
        self, device: str | torch.device = "cpu", progress: Callable[[str], None] | None = None
    ) -> None:
        """Load Inception and CLIP on `device` and the reference statistics (computed once, then cached).

        Collective under torch.distributed (reference features are extracted sharded): call on every rank.
        """
        self.device = torch.device(device)
        if self.inception is None:
            self.inception = InceptionFeatures(
                self.inception_path, self.device, self.batch_size, self.allow_download
            )
        self.inception.to(self.device)
        if self.clip is None and self.clip_path:
            self.clip = ClipScorer(
                self.clip_path, self.device, self.batch_size, self.allow_download, self.clip_hf_id
            )
        if self.clip is not None:
            self.clip.to(self.device)
        if self.reference is None:
            files = list_reference_images(self.reference_dir, self.n_reference)
            self.reference = reference_statistics(
                files,
                self.inception,
                self.resolution,
                self.resize_filter,
                self.stats_cache_dir,
                self.num_workers,
                progress,
            )

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        """Generated (N, 3, H, W) in [0, 1] -> protocol images (N, R, R, 3) uint8."""
        return protocol_images(images, self.resolution, self.resize_filter)

    def per_sample(self, prepared: np.ndarray, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """{'features': (N, 2048) Inception features, 'clip': (N,) cosine} of protocol images."""
        if self.inception is None:
            raise RuntimeError("CocoEvaluator.setup(device) must run before per_sample")
        rows = {"features": torch.from_numpy(self.inception(prepared))}
        if self.clip is not None:
            rows["clip"] = self.clip(torch.from_numpy(prepared).permute(0, 3, 1, 2), captions)
        return rows

    def summarize(self, rows: dict[str, torch.Tensor], prompts: Sequence[EvalPrompt]) -> dict[str, float]:
        """{'fid', 'clip', 'precision', 'recall', 'n_samples'} of all generated images against the reference."""
        ref = self.reference
        fake = rows["features"].numpy()
        out = {"fid": frechet_distance(*feature_statistics(fake), ref.mu, ref.sigma)}
        if "clip" in rows:
            out["clip"] = clip_score(rows["clip"])
        out["precision"], out["recall"] = precision_recall(ref.features, fake, self.k, device=self.device)
        out["n_samples"] = int(fake.shape[0])
        return out


class ToyPromptEvaluator:
    """The toy world's metrics on held-out captions: `n_samples // per_prompt` prompts x `per_prompt` seeds.

    toy FID against `n_real` held-out renders, prompt accuracy of the attribute classifier, diversity among
    the images of one prompt (wadi.metrics.toy.ToyEvaluator). Images are compared as uint8 (what a PNG holds).
    """

    def __init__(
        self,
        classifier_path: str,
        n_samples: int = 1000,
        per_prompt: int = 4,
        n_real: int = 5000,
        batch_size: int = 500,
        seed: int = 0,
        name: str = "toy",
    ) -> None:
        if n_samples % per_prompt:
            raise ValueError(f"eval.n_samples={n_samples} must be a multiple of eval.per_prompt={per_prompt}")
        self.classifier_path, self.n_samples, self.per_prompt = classifier_path, n_samples, per_prompt
        self.n_real, self.batch_size, self.seed, self.name = n_real, batch_size, seed, name
        self.toy = None
        self.device = torch.device("cpu")

    def prompts(self) -> list[EvalPrompt]:
        from wadi.toy.world import toy_prompts

        captions = toy_prompts(self.n_samples // self.per_prompt, self.seed, "heldout")
        rows = [c for c in captions for _ in range(self.per_prompt)]
        return [EvalPrompt(c, self.seed + i) for i, c in enumerate(rows)]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "n_samples": self.n_samples,
            "per_prompt": self.per_prompt,
            "seed": self.seed,
        }

    def setup(self, device: str | torch.device = "cpu", progress=None) -> None:
        from wadi.metrics.toy import ToyEvaluator
        from wadi.toy.classifier import load_classifier

        self.device = torch.device(device)
        if self.toy is None:
            classifier = load_classifier(self.classifier_path, self.device)
            self.toy = ToyEvaluator(classifier, self.n_real, self.device, self.batch_size)

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return tensor_to_uint8(images)

    def per_sample(self, prepared: np.ndarray, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"images": torch.from_numpy(prepared).permute(0, 3, 1, 2).contiguous()}

    def summarize(self, rows: dict[str, torch.Tensor], prompts: Sequence[EvalPrompt]) -> dict[str, float]:
        """{'toy_fid', 'prompt_accuracy', 'diversity', 'n_samples'}; images sharing a caption form a group."""
        images = rows["images"].float() / 127.5 - 1
        captions = [p.caption for p in prompts]
        _, group_ids = np.unique(np.array(captions), return_inverse=True)
        m = self.toy(images, captions, torch.from_numpy(group_ids.reshape(-1)))
        return {
            "toy_fid": m["fid"],
            "prompt_accuracy": m["prompt_accuracy"],
            "diversity": m["diversity"],
            "n_samples": len(captions),
        }
