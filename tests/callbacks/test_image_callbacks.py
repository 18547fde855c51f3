"""The shared generate-and-save step of the image callbacks, and the sample-grid callback built on it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from wadi.callbacks.images import generate_and_save, step_path
from wadi.callbacks.samples import SampleGridCallback


class FakeModule(torch.nn.Module):
    """generate(prompts, seeds) -> flat grey images; records whether it ran in eval mode without grad."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = []

    def generate(self, prompts, seeds):
        self.calls.append((self.training, torch.is_grad_enabled(), list(prompts), list(seeds)))
        return torch.full((len(prompts), 3, 8, 8), 0.5)


class Logger:
    def __init__(self) -> None:
        self.images = []

    def log_image(self, key, images, step, **kwargs):
        self.images.append((key, images, step, *kwargs.values()))


def trainer(root, step=7, zero=True, logger=None):
    return SimpleNamespace(is_global_zero=zero, global_step=step, default_root_dir=str(root), logger=logger)


def test_generate_and_save_rank0_saves_logs_and_restores_training(tmp_path):
    module, logger = FakeModule().train(), Logger()
    path = step_path(trainer(tmp_path), None, "x")
    assert path == tmp_path / "x" / "step0000007.png"
    out = generate_and_save(
        trainer(tmp_path, logger=logger), module, lambda: module.generate(["a"] * 4, range(4)), path, 2, "k"
    )
    assert out == path and Image.open(path).size == (2 * 10 + 2, 2 * 10 + 2)
    assert module.calls[0][:2] == (False, False) and module.training  # eval + no_grad, then restored
    assert logger.images == [("k", [str(path)], 7)]
    rows = generate_and_save(
        trainer(tmp_path), module, lambda: torch.zeros(2, 3, 3, 8, 8), tmp_path / "r.png"
    )
    assert Image.open(rows).size == (3 * 10 + 2, 2 * 10 + 2)  # (B, S, ...) -> one row of S per entry
    assert (
        generate_and_save(
            trainer(tmp_path, zero=False), module, lambda: torch.zeros(1, 3, 8, 8), tmp_path / "n.png"
        )
        is None
    )
    assert not (tmp_path / "n.png").exists()


def test_generate_and_save_restores_training_when_generation_fails(tmp_path):
    module = FakeModule().train()

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate_and_save(trainer(tmp_path), module, boom, tmp_path / "x.png")
    assert module.training


def test_sample_grid_callback(tmp_path):
    module, logger = FakeModule().train(), Logger()
    cb = SampleGridCallback(["a", "b"], every_n_steps=5, seeds_per_prompt=2, seed=3)
    cb.on_train_batch_end(trainer(tmp_path, step=5, logger=logger), module, None, None, 0)
    assert module.calls[0][2:] == (["a", "a", "b", "b"], [3, 4, 5, 6])
    out = tmp_path / "samples" / "step0000005.png"
    width, height = Image.open(out).size  # one row per prompt (its seeds), its caption on the left
    assert width > 2 * 10 + 2 + 100 and 2 * 10 + 2 <= height < 3 * (10 + 12)
    assert logger.images == [("samples", [str(out)], 5, ["row 1: a | row 2: b"])]
    cb.on_train_batch_end(trainer(tmp_path, step=6), module, None, None, 0)
    assert len(module.calls) == 1
