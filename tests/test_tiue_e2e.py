"""method=tiue end to end: two training steps on a tiny U-Net, the export, wadi.sample's loaders, the diffusers
custom pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from wadi.testing import compose_config, tiny_backbone_config
from wadi.train import train

PROMPTS = ["a small red circle at the left", "a large blue square at the top", "a small green circle"]


@pytest.mark.slow
def test_tiue_trains_exports_and_reloads(tmp_path, tiny_sd_dir):
    from diffusers import DiffusionPipeline

    from wadi.generation import load_generator
    from wadi.pipelines.tiue_pipeline import TiUEPipeline
    from wadi.samplers import seeded_noise

    cfg = compose_config(
        [
            "method=tiue",
            "tiue.k=3",
            "dataset=toy",
            "dataset.num_prompts=64",
            "logger=csv",
            "trainer=cpu",
            "batch_size=2",
            "max_steps=2",
            "ema_decay=0.9",
            f"run_dir={tmp_path / 'run'}",
            "callbacks.checkpoint.every_n_train_steps=2",
            "callbacks.sample_grid.every_n_steps=100",
            "~callbacks.progress",
            "trainer.log_every_n_steps=1",
            "rank=4",
            "fake_rank=2",
            "lr=1e-2",
            "~eval",
        ]
    )
    with open_dict(cfg):
        cfg.backbone = OmegaConf.create(tiny_backbone_config(tiny_sd_dir, "unet", name="tiny_unet"))
    _, objects = train(cfg)
    module = objects["module"]
    assert objects["trainer"].global_step == 2
    assert module.student.timesteps_for(1000) == [667, 334, 1]  # DDIMScheduler.set_timesteps(3), leading
    metrics = (Path(objects["run_dir"]) / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss_kl" in metrics and "train/loss_vsd" in metrics

    merged = Path(objects["merged"])
    info = json.loads((merged / "wadi_export.json").read_text())
    assert info["method"] == "tiue" and info["student"] == {
        "method": "tiue",
        "kind": "tiue",
        "k": 3,
        "timesteps": [667, 334, 1],
    }
    assert (merged / "tiue_pipeline.py").is_file()

    ours = module.generate_latents(PROMPTS, [1, 2, 3])  # the EMA weights, as the export
    gen = load_generator(merged)
    assert type(gen.sampler).__name__ == "StudentSampler"
    frames: list[torch.Tensor] = []
    from_export = gen.latents(PROMPTS, [1, 2, 3], trajectory=frames)
    assert len(frames) == 3 and torch.equal(frames[-1], from_export)  # each step's x0, the last is z_0
    assert torch.allclose(ours, from_export, atol=1e-4), (ours - from_export).abs().max()
    one = gen.latents(PROMPTS[2:], [3])  # batch-size independent: a batch of 3 and of 1
    assert torch.allclose(from_export[2:], one, atol=1e-5)
    from_ckpt = load_generator(Path(objects["run_dir"]) / "checkpoints" / "last.ckpt").latents(
        PROMPTS, [1, 2, 3]
    )
    assert torch.allclose(ours, from_ckpt, atol=1e-5)

    # diffusers: the shipped custom pipeline, by import and by custom_pipeline=<file>
    z = seeded_noise([1, 2, 3], module.backbone.latent_shape, "cpu")
    pipe = TiUEPipeline.from_pretrained(merged)
    assert pipe.config.tiue_timesteps == [667, 334, 1]
    theirs = pipe(PROMPTS, latents=z, output_type="latent").images
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    custom = DiffusionPipeline.from_pretrained(
        merged, custom_pipeline=str(merged / "tiue_pipeline.py"), trust_remote_code=True
    )
    assert type(custom).__name__ == "TiUEPipeline"
    images = custom(PROMPTS[:1], latents=z[:1], output_type="pt").images
    assert images.shape == (1, 3, 16, 16) and 0 <= images.min() and images.max() <= 1
