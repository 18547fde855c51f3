"""Toy metrics: the toy world's counterparts of COCO FID and CLIP score.

- toy FID: Frechet distance between Gaussians fitted to ToyClassifier penultimate features of generated
  images and of real held-out renders (Heusel et al. 2017, eq. 6); the same `frechet_distance` and
  `feature_statistics` as COCO FID (wadi.metrics.fid, re-exported here).
- prompt accuracy: fraction of generated images whose predicted slot attributes all match their prompt.
- diversity: mean pairwise feature distance among images of one prompt (mode collapse shows up as ~0).

All take images as (N, 3, 64, 64) floats in [-1, 1], the renderer's and the generators' range.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from wadi.metrics.fid import feature_statistics, frechet_distance
from wadi.toy.classifier import ToyClassifier, scene_correct
from wadi.toy.world import parse_caption, render, sample_scene, sample_seeds, stack_labels


def toy_fid(fake_feats: Tensor, real_feats: Tensor) -> float:
    """Frechet distance between the Gaussians of two (N, D) feature sets."""
    return frechet_distance(*feature_statistics(fake_feats), *feature_statistics(real_feats))


def diversity(features: Tensor, group_ids: Tensor) -> float:
    """Mean pairwise L2 distance among features of the same group (prompt), averaged over groups.

    Groups with a single image have no pairs and are skipped; raises ValueError if no group has two.
    """
    if features.shape[0] != group_ids.shape[0]:
        raise ValueError(f"diversity: {features.shape[0]} features but {group_ids.shape[0]} group ids")
    f = features.detach().to(torch.float64)
    per_group = []
    for g in torch.unique(group_ids):
        members = f[group_ids == g]
        m = members.shape[0]
        if m < 2:
            continue
        dist = torch.cdist(members, members)
        per_group.append(dist.sum() / (m * (m - 1)))  # the zero diagonal is excluded from the count
    if not per_group:
        raise ValueError("diversity needs at least one group with two or more images")
    return float(torch.stack(per_group).mean())


def caption_labels(captions: Sequence[str]) -> dict[str, Tensor]:
    """Per-slot labels (N, 5) that the captions ask for (ValueError naming a caption that does not parse)."""
    return stack_labels([parse_caption(c) for c in captions])


@torch.no_grad()
def prompt_accuracy(classifier: nn.Module, images: Tensor, captions: Sequence[str]) -> float:
    """Fraction of images whose predicted slot attributes (shape or none, colour, size) all match the caption."""
    if images.shape[0] != len(captions):
        raise ValueError(f"prompt_accuracy: {images.shape[0]} images but {len(captions)} captions")
    labels = caption_labels(captions)
    if isinstance(classifier, nn.Module):
        images = images.to(next(classifier.parameters()).device)
    pred = {k: v.cpu() for k, v in classifier.predict(images).items()}
    return float(scene_correct(pred, labels).float().mean())


class ToyFeatureExtractor(nn.Module):
    """ToyClassifier features as a torchmetrics FID feature module.

    Use: FrechetInceptionDistance(feature=ToyFeatureExtractor(clf)) and update() with images in [-1, 1]
    (or uint8 in [0, 255]; torchmetrics passes images to a custom module untouched).
    """

    def __init__(self, classifier: ToyClassifier):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features  # torchmetrics reads this instead of probing

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            images = images.float() / 127.5 - 1
        return self.classifier.features(images)


class ToyEvaluator:
    """The toy metrics with the real held-out feature statistics computed once and cached.

    The real reference is the first `n_real` held-out scenes of stream 0 (sample_seeds(n_real, 0,
    'heldout')), so every run, machine and student is compared against the same images.
    """

    def __init__(
        self,
        classifier: ToyClassifier,
        n_real: int = 5000,
        device: str | torch.device = "cpu",
        batch_size: int = 500,
    ):
        self.classifier = classifier.to(device).eval()
        self.device, self.batch_size, self.n_real = device, batch_size, n_real
        seeds = sample_seeds(n_real, seed=0, split="heldout")
        feats = [
            self.features(render([sample_scene(s) for s in seeds[i : i + batch_size]], device=device))
            for i in range(0, n_real, batch_size)
        ]
        self.real_mu, self.real_sigma = feature_statistics(torch.cat(feats))

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """(N, D) classifier features, computed in batches on the evaluator's device; returned on CPU."""
        return torch.cat(
            [
                self.classifier.features(images[i : i + self.batch_size].to(self.device)).float().cpu()
                for i in range(0, images.shape[0], self.batch_size)
            ]
        )

    @torch.no_grad()
    def __call__(
        self, images: Tensor, captions: Sequence[str], group_ids: Tensor | None = None
    ) -> dict[str, float]:
        """{'fid', 'prompt_accuracy'} and 'diversity' when group_ids (N,) say which images share a prompt.

        FID is biased upwards for small N (use >= 1000 images to compare runs; report N with the number).
        """
        if images.shape[0] != len(captions):
            raise ValueError(f"ToyEvaluator: {images.shape[0]} images but {len(captions)} captions")
        feats = self.features(images)
        pred = {name: [] for name in ("shape", "color", "size")}
        for i in range(0, images.shape[0], self.batch_size):
            for name, v in self.classifier.predict(images[i : i + self.batch_size].to(self.device)).items():
                pred[name].append(v.cpu())
        pred = {k: torch.cat(v) for k, v in pred.items()}
        out = {
            "fid": frechet_distance(*feature_statistics(feats), self.real_mu, self.real_sigma),
            "prompt_accuracy": float(scene_correct(pred, caption_labels(captions)).float().mean()),
        }
        if group_ids is not None:
            out["diversity"] = diversity(feats, group_ids.cpu())
        return out
