"""`python -m wadi.toy.pretrain` (wadi.toy.training): its LR schedule, and every stage end to end on tiny models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wadi.toy.classifier import one_cycle
from wadi.toy.training import lr_factor

REPO = Path(__file__).resolve().parents[2]


def test_schedules():
    assert lr_factor(0, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(10, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(50, 10, 1.0) == pytest.approx(0.1)
    assert one_cycle(0.15) == pytest.approx(1.0)
    assert one_cycle(1.0) == pytest.approx(1e-3)
    assert 0 < one_cycle(0.5) < 1


@pytest.mark.slow
def test_every_stage_on_tiny_models_then_resume(tmp_path):
    """The four stages write the asset layout with checksums; the teachers load through wadi's backbone code;
    `resume=true` continues a saved teacher and records the step total."""
    out = tmp_path / "assets"
    small = [
        "arch=tiny",
        "trainer.max_steps=2",
        "data.pool_size=64",
        "vae.batch_size=4",
        "vae.scale_samples=32",
        "classifier.batch_size=4",
        "classifier.eval_size=8",
        "sd.batch_size=4",
        "pixart.batch_size=4",
    ]
    cmd = [sys.executable, "-m", "wadi.toy.pretrain", f"out_dir={out}", *small]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    from wadi.backbones.loading import BackboneConfig, check_layout
    from wadi.toy.assets import verify_asset

    for name in ("toy-sd", "toy-pixart", "toy-classifier"):
        verify_asset(name, out)
    check_layout(out / "toy-sd", "unet")
    check_layout(out / "toy-pixart", "pixart")
    assert BackboneConfig  # the loading module imports without the shipped assets
    report = json.loads((out / "toy-sd" / "pretrain.json").read_text())
    assert report["sd"]["steps"] == 2 and report["vae"]["scaling_factor"] > 0

    resumed = tmp_path / "resumed"
    cmd = [
        sys.executable,
        "-m",
        "wadi.toy.pretrain",
        "stages=[sd]",
        f"init_dir={out}",
        f"out_dir={resumed}",
        "sd.resume=true",
        *small,
    ]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=300)
    info = json.loads((resumed / "toy-sd" / "pretrain.json").read_text())["sd"]
    assert info["resumed_after_steps"] == 2 and info["total_steps"] == 4


def test_unknown_stage_and_missing_vae_are_clear(tmp_path):
    from omegaconf import OmegaConf

    from wadi.toy.training import load_vae, pretrain

    cfg = OmegaConf.create({"stages": ["unet"], "out_dir": str(tmp_path), "device": "cpu"})
    with pytest.raises(ValueError, match=r"unknown pretraining stage.*'unet'"):
        pretrain(cfg)
    with pytest.raises(FileNotFoundError, match=r"toy-sd/vae.*vae stage"):
        load_vae(tmp_path, "cpu")
