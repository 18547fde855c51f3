"""Control transfer on the toy world (issue 7): a LoRA trained on the shipped toy teacher to paint "red" objects
blue, applied unchanged to a one-step WaDi student of that teacher, shifts the student's colours the same way,
as the shipped classifier judges them."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from wadi.analysis.transfer import add_lora, train_lora, unload_lora
from wadi.generation import load_generator
from wadi.testing import compose_config
from wadi.toy.assets import toy_asset_path
from wadi.toy.classifier import load_classifier
from wadi.toy.world import COLORS, POSITIONS, parse_caption, render

PROMPT = "a large red circle at the center"
SHIFTED = "a large blue circle at the center"  # what the LoRA's training images show
SEEDS = list(range(24))


def colour_fraction(images: torch.Tensor, colour: str) -> float:
    """Fraction of images (N, 3, 64, 64) in [0, 1] whose center object the judge reads as `colour`."""
    judge = load_classifier(toy_asset_path("classifier"))
    pred = judge.predict(images.float() * 2 - 1)
    return float((pred["color"][:, POSITIONS.index("center")] == COLORS.index(colour)).float().mean())


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A short WaDi distillation of the shipped toy teacher through the real entry point, merged export."""
    from wadi.train import train

    run_dir = tmp_path_factory.mktemp("toy_student") / "run"
    cfg = compose_config(
        [
            "logger=csv",
            "trainer=cpu",
            "batch_size=8",
            "max_steps=30",
            f"run_dir={run_dir}",
            "callbacks=none",
            "~eval",
        ]
    )
    with open_dict(cfg):
        cfg.dataset.num_prompts = 2000
    train(cfg)
    return run_dir / "export" / "merged"


@pytest.fixture(scope="module")
def blue_lora(tmp_path_factory):
    """LoRA fitted on the teacher: the red-circle caption paired with renders of a blue circle."""
    images = render([parse_caption(SHIFTED)] * 8) / 2 + 0.5
    return train_lora(
        toy_asset_path("toy-sd"),
        [PROMPT],
        tmp_path_factory.mktemp("lora"),
        images=images,
        steps=120,
        rank=8,
        lr=2e-3,
        batch_size=8,
    )


@pytest.mark.slow
def test_teacher_lora_recolours_the_one_step_student(student_dir, blue_lora):
    student = load_generator(student_dir)
    before = student([PROMPT] * len(SEEDS), SEEDS)
    add_lora(student, blue_lora)
    try:
        after = student([PROMPT] * len(SEEDS), SEEDS)
    finally:
        unload_lora(student)
    red_before, blue_before = colour_fraction(before, "red"), colour_fraction(before, "blue")
    red_after, blue_after = colour_fraction(after, "red"), colour_fraction(after, "blue")
    print(f"red {red_before:.3f} -> {red_after:.3f}, blue {blue_before:.3f} -> {blue_after:.3f}")
    assert red_before >= 0.5 and blue_before <= 0.2, (red_before, blue_before)
    assert blue_after >= blue_before + 0.5, (blue_before, blue_after)
    assert red_after <= red_before - 0.5, (red_before, red_after)
    # unloading restores the student exactly (same batch as `before`: CPU GEMMs differ between batch shapes)
    assert torch.equal(student([PROMPT] * len(SEEDS), SEEDS), before)
