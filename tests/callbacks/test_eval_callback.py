"""EvalCallback inside a short Trainer.fit: when it runs, what it logs and writes, and that it measures the
module's current generator on a fixed subset."""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from wadi.callbacks.eval import EvalCallback
from wadi.evaluate import CocoEvaluator, ToyPromptEvaluator, evaluate_prompts
from wadi.metrics.clip import save_tiny_clip
from wadi.metrics.features import save_standin_inception


class DummyModule(L.LightningModule):
    """One parameter `w`; generate() draws seeded images brightened by w, so training changes the images."""

    def __init__(self, size: int = 24):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.size = size
        self.generated: list[int] = []
        self.mode_during_generate: list[bool] = []

    def training_step(self, batch, batch_idx):
        assert self.training  # the callback restores train mode
        return (self.w - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.zeros(16, 1), batch_size=1)

    @torch.no_grad()
    def generate(self, prompts, seeds):
        self.generated.extend(seeds)
        self.mode_during_generate.append(self.training)
        out = [torch.rand(3, self.size, self.size, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return (torch.stack(out) * 0.6 + 0.3 * self.w.detach()).clamp(0, 1)


@pytest.fixture(scope="module")
def coco_evaluator(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    anns = [{"id": i, "image_id": i, "caption": f"a photo of thing {i}"} for i in range(12)]
    (root / "captions.json").write_text(json.dumps({"images": [], "annotations": anns}))
    (root / "val").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(root / "val" / f"{i}.png")
    return CocoEvaluator(
        captions=str(root / "captions.json"),
        reference_dir=str(root / "val"),
        inception_path=str(save_standin_inception(root / "inception.pt", dim=6)),
        clip_path=str(save_tiny_clip(root / "clip")),
        n_samples=12,
        resolution=24,
        batch_size=8,
        stats_cache_dir=str(root / "stats"),
    )


def _fit(module, callback, tmp_path, max_steps):
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module)
    return trainer


def test_coco_metrics_every_n_steps_and_at_the_end(coco_evaluator, tmp_path):
    module = DummyModule()
    cb = EvalCallback(
        coco_evaluator, every_n_steps=2, n_samples=8, batch_size=3, grid_size=4, dirpath=str(tmp_path)
    )
    trainer = _fit(module, cb, tmp_path, max_steps=5)

    assert sorted(cb.history) == [2, 4, 5]  # every 2 steps, then the end
    assert not any(module.mode_during_generate)  # generated in eval mode
    # each evaluation: the first 8 protocol prompts (their seeds 0..7) and a 4-image grid on rank 0
    assert sorted(module.generated) == sorted((list(range(8)) + list(range(4))) * 3)
    for key in ("val/fid", "val/clip", "val/precision", "val/recall"):
        assert key in trainer.callback_metrics
    last = cb.history[5]
    assert trainer.callback_metrics["val/fid"].item() == pytest.approx(last["fid"])
    assert last["n_samples"] == 8
    # the logged numbers are those of the module as it is at the end, on the same fixed subset
    direct = evaluate_prompts(module.generate, coco_evaluator, coco_evaluator.prompts()[:8], batch_size=8)
    assert direct == pytest.approx(last, rel=1e-5)
    assert cb.history[2]["fid"] != pytest.approx(last["fid"])  # training moved w, and with it the images

    for step in (2, 4, 5):
        assert json.loads((tmp_path / "eval" / f"step{step:07d}.json").read_text())["step"] == step
        assert Image.open(tmp_path / "eval" / f"step{step:07d}.png").size[0] >= 2 * 24
    rows = list(csv.DictReader(open(trainer.logger.experiment.metrics_file_path)))
    logged = [float(r["val/fid"]) for r in rows if r.get("val/fid")]
    assert logged == pytest.approx([cb.history[s]["fid"] for s in (2, 4, 5)])


def test_toy_metrics_through_the_same_callback(tmp_path):
    from wadi.toy.classifier import ToyClassifier, save_classifier

    torch.manual_seed(0)
    path = save_classifier(ToyClassifier(width=8, feature_dim=8), tmp_path / "clf")
    evaluator = ToyPromptEvaluator(str(path), n_samples=8, per_prompt=2, n_real=32, batch_size=16)
    module = DummyModule(size=64)
    cb = EvalCallback(
        evaluator, every_n_steps=0, n_samples=None, batch_size=4, grid_size=2, dirpath=str(tmp_path)
    )
    trainer = _fit(module, cb, tmp_path, max_steps=2)

    assert list(cb.history) == [2]  # every_n_steps=0: only at the end
    for key in ("val/toy_fid", "val/prompt_accuracy", "val/diversity"):
        assert key in trainer.callback_metrics
    m = cb.history[2]
    assert m["n_samples"] == 8 and 0.0 <= m["prompt_accuracy"] <= 1.0 and m["diversity"] > 0
    prompts = evaluator.prompts()
    assert prompts[0].caption == prompts[1].caption != prompts[2].caption  # 4 prompts x 2 seeds
