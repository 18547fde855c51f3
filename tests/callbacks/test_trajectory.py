"""x0 trajectories: frame counts, strip sizes, consistency with the samplers, the CLI and the callback."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from wadi.analysis.trajectory import decode_trajectory, sample_trajectory, save_strips, trajectory_strip
from wadi.callbacks.trajectory import TrajectoryCallback
from wadi.samplers import ddim_sample, hybrid_sample, seeded_noise
from wadi.testing import tiny_backbone_config

PROMPTS = ["a red circle", "a blue square"]


@pytest.fixture(scope="module")
def module(tiny_sd_dir):
    """A tiny WaDi student whose generator adapter is a random nonzero rotation (differs from the teacher)."""
    from wadi.distill.module import WaDiModule

    torch.manual_seed(0)
    m = WaDiModule(tiny_backbone_config(tiny_sd_dir, "unet"), rank=4, fake_rank=2).eval()
    for name, p in m.denoiser.model.named_parameters():
        if name.endswith("lorad.generator.lorad_A"):
            p.data.normal_(0, 0.05)
    return m


@pytest.fixture(scope="module")
def inputs(module):
    cond = module.conditioning({"prompt": PROMPTS})
    uncond = module.null_conditioning()
    z = seeded_noise([0, 1], module.backbone.latent_shape, "cpu")
    return z, cond, uncond


def test_frame_counts_and_last_frame_is_the_sample(module, inputs):
    z, cond, uncond = inputs
    ac = module.alphas_cumprod
    ddim = sample_trajectory(module.denoiser, z, cond, uncond, ac, steps=3, guidance_scale=2.0)
    assert ddim.shape == (3, 2, 4, 8, 8)
    torch.testing.assert_close(ddim[-1], ddim_sample(module.denoiser, z, cond, uncond, ac, 3, 2.0))
    hybrid = sample_trajectory(
        module.denoiser, z, cond, uncond, ac, adapter="generator", hybrid_k=2, schedule_steps=5
    )
    assert hybrid.shape == (3, 2, 4, 8, 8)
    torch.testing.assert_close(hybrid[-1], hybrid_sample(module.denoiser, z, cond, uncond, ac, 2, 5))
    # the teacher's frames do not depend on the student; the student's frame does
    teacher_only = sample_trajectory(
        module.denoiser, z, cond, uncond, ac, steps=None, hybrid_k=2, schedule_steps=5
    )
    torch.testing.assert_close(hybrid[:2], teacher_only[:2])
    assert not torch.allclose(hybrid[2], teacher_only[2])
    student = sample_trajectory(module.denoiser, z, cond, uncond, ac, adapter="generator")
    assert student.shape == (1, 2, 4, 8, 8)


def test_decode_and_strip_sizes(module, inputs, tmp_path):
    z, cond, uncond = inputs
    latents = sample_trajectory(module.denoiser, z, cond, uncond, module.alphas_cumprod, steps=4)
    images = decode_trajectory(module.backbone, latents, batch_size=3)  # batches straddle steps
    assert images.shape == (2, 4, 3, 16, 16)
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images[1, 2], module.backbone.decode(latents[2, 1:2])[0])
    assert trajectory_strip(images[0], pad=2).shape == (16 + 4, 4 * 18 + 2, 3)
    paths = save_strips(images, tmp_path, ["p0", "p1"])
    assert [Image.open(p).size for p in paths] == [(4 * 18 + 2, 20)] * 2
    with pytest.raises(ValueError, match="B names"):
        save_strips(images, tmp_path, ["only one"])


def test_cli_teacher_and_hybrid_student(tiny_sd_dir, module, tmp_path):
    from wadi.analyze import main
    from wadi.export import export_merged

    main(
        [
            "trajectory",
            f"model={tiny_sd_dir}",
            "prompts=[a red circle,a blue square]",
            "steps=3",
            f"out={tmp_path / 't'}",
        ]
    )
    listing = json.loads((tmp_path / "t" / "prompts.json").read_text())
    assert [r["frames"] for r in listing] == [3, 3]
    assert listing[0]["labels"] == ["t=999", "t=666", "t=332"]  # each frame's timestep, written under it
    width, height = Image.open(tmp_path / "t" / "trajectory_01.png").size
    assert width == 3 * 18 + 2 and height > 20

    export = export_merged(module, tmp_path / "student")
    main(
        [
            "trajectory",
            f"model={export}",
            f"teacher={tiny_sd_dir}",
            "prompts=[a red circle]",
            "steps=10",
            "teacher_steps=2",
            f"out={tmp_path / 's'}",
        ]
    )
    assert json.loads((tmp_path / "s" / "prompts.json").read_text())[0]["labels"] == [
        "t=999 teacher",
        "t=899 teacher",
        "t=799 student",
    ]
    assert Image.open(tmp_path / "s" / "trajectory_00.png").size[0] == 3 * 18 + 2


def fake_trainer(root, step=10):
    return SimpleNamespace(is_global_zero=True, global_step=step, default_root_dir=str(root), logger=None)


def test_callback_writes_one_row_per_prompt(module, tmp_path):
    cb = TrajectoryCallback(every_n_steps=10, prompts=PROMPTS, teacher_steps=2, schedule_steps=8)
    assert cb.trajectory_images(module).shape == (2, 3, 3, 16, 16)
    cb.on_train_batch_end(fake_trainer(tmp_path, step=10), module, None, None, 0)
    out = tmp_path / "trajectories" / "step0000010.png"
    assert Image.open(out).size == (3 * 18 + 2, 2 * 18 + 2)
    cb.on_train_batch_end(fake_trainer(tmp_path, step=11), module, None, None, 0)
    assert not (tmp_path / "trajectories" / "step0000011.png").exists()
    assert module.training is False  # restored


def test_callback_with_no_teacher_steps_is_the_one_step_student(module):
    cb = TrajectoryCallback(every_n_steps=1, prompts=PROMPTS, teacher_steps=0, seed=5)
    frames = cb.trajectory_images(module)
    assert frames.shape == (2, 1, 3, 16, 16)
    torch.testing.assert_close(frames[:, 0], module.generate(PROMPTS, [5, 6]))
    with pytest.raises(ValueError, match="teacher_steps"):
        TrajectoryCallback(every_n_steps=1, prompts=PROMPTS, teacher_steps=9, schedule_steps=4)
