"""A small attribute classifier for the toy world: the judge behind toy FID and prompt accuracy.

Why a dedicated classifier: Inception/CLIP know nothing about 64x64 toy scenes and cannot be downloaded
here. A CNN trained on the procedural renderer reads every position slot's shape (or "none"), colour and
size, so "does this image show its prompt" becomes a per-slot comparison, and its penultimate features
give a Frechet distance that sees exactly the attributes the toy world varies.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.toy.world import (
    COLORS,
    NO_LABEL,
    NONE_SHAPE,
    POSITIONS,
    SHAPES,
    SIZES,
    render,
    sample_scene,
    sample_seeds,
    stack_labels,
)

log = logging.getLogger(__name__)

HEADS = ("shape", "color", "size")
CONFIG_NAME = "classifier.json"
WEIGHTS_NAME = "classifier.safetensors"


def head_classes() -> dict[str, int]:
    return {"shape": len(SHAPES) + 1, "color": len(COLORS), "size": len(SIZES)}


def _block(cin: int, cout: int, stride: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.GroupNorm(8, cout),  # batch-independent: a generated image's features never depend on its batch
        nn.SiLU(),
    )


class ToyClassifier(nn.Module):
    """CNN over (N, 3, 64, 64) images in [-1, 1] with one linear head per attribute and POSITIONS slot.

    The trunk keeps a 4x4 map and flattens it, so the feature vector knows *where* things are (a global
    pool would forget which slot an object sits in). ~0.64M parameters, 1.3 MB in fp16.
    """

    def __init__(self, width: int = 32, feature_dim: int = 256, resolution: int = 64):
        super().__init__()
        if resolution != 64:
            raise ValueError(f"ToyClassifier is built for 64x64 toy images, got resolution={resolution}")
        self.config = {"width": width, "feature_dim": feature_dim, "resolution": resolution}
        w = width
        self.trunk = nn.Sequential(
            _block(3, w, 2, kernel=5),  # 32: overlapping 5x5 stem keeps the corners of 10-pixel stars
            _block(w, w, 1),
            _block(w, 2 * w, 2),  # 16
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),  # 8
            _block(4 * w, 4 * w, 1),
            _block(4 * w, 2 * w, 2),  # 4
        )
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, feature_dim), nn.SiLU())
        self.classes = head_classes()
        self.heads = nn.ModuleDict(
            {name: nn.Linear(feature_dim, len(POSITIONS) * c) for name, c in self.classes.items()}
        )
        self.num_features = feature_dim

    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (N, feature_dim), for toy FID and diversity."""
        if images.ndim != 4 or images.shape[1:] != (3, 64, 64):
            raise ValueError(
                f"ToyClassifier expects images (N, 3, 64, 64) in [-1, 1], got {tuple(images.shape)}"
            )
        param = next(self.parameters())
        return self.project(self.trunk(images.to(device=param.device, dtype=param.dtype)))

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per head: 'shape' (N, 5 slots, len(SHAPES)+1), 'color' (N, 5, C), 'size' (N, 5, 2)."""
        h = self.features(images)
        return {name: head(h).view(h.shape[0], len(POSITIONS), -1) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> dict[str, Tensor]:
        """Per-slot labels (N, 5) in scene_labels' layout: colour/size are NO_LABEL where shape is none."""
        outs = [self(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
        pred = {name: torch.cat([o[name] for o in outs]).argmax(-1) for name in HEADS}
        empty = pred["shape"] == NONE_SHAPE
        for name in ("color", "size"):
            pred[name] = pred[name].masked_fill(empty, NO_LABEL)
        return pred


def classifier_loss(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """Sum of per-head cross-entropies; colour/size count only in occupied slots (NO_LABEL is ignored)."""
    return sum(
        F.cross_entropy(logits[name].flatten(0, 1), labels[name].flatten(), ignore_index=NO_LABEL)
        for name in HEADS
    )


def scene_correct(pred: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """(N,) bool: every slot's shape-or-none, and colour and size where occupied, match."""
    ok = pred["shape"] == labels["shape"]
    for name in ("color", "size"):
        ok &= (pred[name] == labels[name]) | (labels[name] == NO_LABEL)
    return ok.all(dim=1)


def _rendered_batch(seeds: list[int], device) -> tuple[Tensor, dict[str, Tensor]]:
    scenes = [sample_scene(s) for s in seeds]
    labels = {k: v.to(device) for k, v in stack_labels(scenes).items()}
    return render(scenes, device=device), labels


@torch.no_grad()
def evaluate_classifier(model: ToyClassifier, n: int = 2000, device="cpu", batch_size: int = 500) -> dict:
    """Held-out accuracy on n real rendered scenes: scene-level (all slots right) and per head/slot."""
    model.eval()
    correct, hits = 0, dict.fromkeys(HEADS, 0)
    slots = dict.fromkeys(HEADS, 0)
    seeds = sample_seeds(n, seed=0, split="heldout")
    for i in range(0, n, batch_size):
        images, labels = _rendered_batch(seeds[i : i + batch_size], device)
        pred = model.predict(images)
        correct += int(scene_correct(pred, labels).sum())
        for name in HEADS:
            valid = labels[name] != NO_LABEL
            hits[name] += int(((pred[name] == labels[name]) & valid).sum())
            slots[name] += int(valid.sum())
    return {"scene_accuracy": correct / n, **{f"{k}_accuracy": hits[k] / max(1, slots[k]) for k in HEADS}}


def train_classifier(
    steps: int,
    batch_size: int,
    device: str | torch.device = "cpu",
    seed: int = 0,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    noise_std: float = 0.08,
    eval_size: int = 2000,
    log_every: int = 100,
    pool_images: Tensor | None = None,
    pool_labels: dict[str, Tensor] | None = None,
    max_minutes: float | None = None,
) -> ToyClassifier:
    """Train a ToyClassifier on rendered training scenes; returns it in eval mode with its held-out
    accuracies in `model.heldout_metrics`.

    Without a pool every batch is freshly rendered (never the same image twice, but one Python scene sampler
    per image caps a GPU at a few hundred steps a second); with `pool_images` (N, 3, 64, 64) uint8 on
    `device` and their `pool_labels`, batches are drawn from the pre-rendered pool, which keeps a GPU busy.
    Each image gets Gaussian pixel noise of a random std in [0, noise_std]: generated images are never as
    clean as the renderer's, and the judge must not fall apart on them. One-cycle LR with AdamW; with
    `max_minutes` the schedule runs on wall-clock progress so a time-capped run still ends annealed.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    model = ToyClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    seed_stream = random.Random(f"wadi-toy-classifier:{seed}")
    gen = torch.Generator(device=device).manual_seed(seed)
    if (pool_images is None) != (pool_labels is None):
        raise ValueError("train_classifier: pass both pool_images and pool_labels, or neither")
    max_seconds = 60.0 * max_minutes if max_minutes else None
    start = time.time()
    model.train()
    step = 0
    for step in range(steps):
        progress = step / max(steps, 1)
        if max_seconds:
            progress = max(progress, (time.time() - start) / max_seconds)
            if progress >= 1:
                break
        for group in opt.param_groups:
            group["lr"] = lr * one_cycle(progress)
        if pool_images is not None:
            idx = torch.randint(pool_images.shape[0], (batch_size,), device=device, generator=gen)
            images = pool_images[idx].float() / 127.5 - 1
            labels = {k: v[idx] for k, v in pool_labels.items()}
        else:
            seeds = [seed_stream.randrange(2**31) for _ in range(batch_size)]
            images, labels = _rendered_batch(seeds, device)
        sigma = noise_std * torch.rand(batch_size, 1, 1, 1, device=device)
        images = images + sigma * torch.randn_like(images)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = classifier_loss(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.info("toy classifier step %d/%d loss %.4f", step + 1, steps, loss.item())
    model.trained_steps = step + 1
    metrics = evaluate_classifier(model, n=eval_size, device=device)
    log.info("toy classifier held-out: %s", json.dumps(metrics))
    model.heldout_metrics = metrics
    return model.eval()


def one_cycle(progress: float, warmup: float = 0.15, final: float = 1e-3) -> float:
    """LR factor: linear warmup to 1 over the first `warmup` of the run, then cosine down to `final`."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return max(progress / warmup, 0.04)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))


def save_classifier(model: ToyClassifier, path: str | Path) -> Path:
    """Write `path`/classifier.safetensors (fp16) and `path`/classifier.json (architecture + metrics)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / WEIGHTS_NAME))
    meta = {"config": model.config, "heldout_metrics": getattr(model, "heldout_metrics", None)}
    (path / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> ToyClassifier:
    """Load a classifier saved by save_classifier (weights back in fp32), in eval mode.

    Raises FileNotFoundError / ValueError naming the file when it is missing, corrupt or mismatched.
    """
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"toy classifier file missing: {f}")
    try:
        meta = json.loads(cfg_file.read_text())
        model = ToyClassifier(**meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"corrupt toy classifier config {cfg_file}: {err}") from None
    try:
        state = load_file(str(weights_file))
    except Exception as err:  # safetensors raises its own error types for truncated/garbled files
        raise ValueError(f"corrupt toy classifier weights {weights_file}: {err}") from None
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(f"toy classifier weights {weights_file} do not match {cfg_file}: {err}") from None
    if any(not torch.isfinite(v).all() for v in state.values()):
        raise ValueError(f"toy classifier weights {weights_file} contain non-finite values")
    model.heldout_metrics = meta.get("heldout_metrics")
    return model.to(device).eval()


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "ToyClassifier",
    "classifier_loss",
    "evaluate_classifier",
    "load_classifier",
    "save_classifier",
    "scene_correct",
    "train_classifier",
    "num_parameters",
]
