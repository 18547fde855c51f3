"""End to end through `wadi.train.train` with per-role adapter kinds: checkpoints record them, resume checks them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from safetensors import safe_open

from wadi.testing import compose_config, tiny_backbone_config
from wadi.train import train


def tiny_run(tmp_path: Path, model_dir: Path, *overrides: str):
    cfg = compose_config(
        [
            "dataset=toy",
            "dataset.num_prompts=16",
            "logger=csv",
            "trainer=cpu",
            "batch_size=2",
            f"run_dir={tmp_path / 'run'}",
            "callbacks.sample_grid.every_n_steps=100000",
            "~callbacks.progress",
            "rank=4",
            "fake_rank=2",
            "~eval",
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.backbone = OmegaConf.create(tiny_backbone_config(model_dir, "unet", name="tiny_unet"))
        cfg.dataset.sample_prompts = ["a red circle", "a blue square"]
    return cfg


@pytest.mark.slow
def test_lora_generator_dora_fake_score_trains_exports_and_resume_checks_kinds(tmp_path, tiny_sd_dir):
    _, objects = train(
        tiny_run(tmp_path, tiny_sd_dir, "max_steps=2", "generator.adapter=lora", "fake_score.adapter=dora")
    )
    run = Path(objects["run_dir"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["wadi"]["adapters"] == {"generator": "lora", "fake_score": "dora"}
    keys = set(ckpt["state_dict"])
    assert keys and all(".lora_A." in k or ".lora_B." in k or ".lora_magnitude_vector." in k for k in keys)
    assert any(".lora_magnitude_vector.fake_score." in k for k in keys)  # DoRA's magnitude: the fake score's
    assert not any(".lora_magnitude_vector.generator." in k for k in keys)
    with safe_open(str(objects["adapters"]), "pt") as f:
        assert f.metadata()["generator_adapter"] == "lora"
    assert (Path(objects["merged"]) / "unet" / "config.json").is_file()
    with pytest.raises(ValueError, match=r"generator.adapter: checkpoint 'lora' vs this run 'full'"):
        train(
            tiny_run(
                tmp_path,
                tiny_sd_dir,
                "max_steps=3",
                "export=false",
                "ckpt_path=last",
                "generator.adapter=full",
                "fake_score.adapter=dora",
            )
        )
