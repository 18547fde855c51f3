"""Run-folder policy (wadi.runs through wadi.train): no mixed runs, refused resumes leave config.yaml alone,
max_steps >= 1, last.ckpt is the final state, checkpoints in <run_dir>/checkpoints with callbacks=none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from wadi.testing import compose_config, tiny_backbone_config
from wadi.train import train


def _cfg(run_dir: Path, backbone_dir: Path | None, *overrides: str, callbacks: str = "default"):
    per_callback = (
        [
            "callbacks.checkpoint.every_n_train_steps=2",
            "callbacks.sample_grid.every_n_steps=100",
            "~callbacks.progress",
        ]
        if callbacks == "default"
        else []
    )
    cfg = compose_config(
        [
            "dataset=toy",
            "dataset.num_prompts=64",
            "logger=csv",
            "trainer=cpu",
            "batch_size=2",
            "max_steps=2",
            "export=false",
            f"run_dir={run_dir}",
            f"callbacks={callbacks}",
            *per_callback,
            "trainer.log_every_n_steps=1",
            "rank=4",
            "fake_rank=2",
            "~eval",
            *overrides,
        ]
    )
    if backbone_dir is not None:
        with open_dict(cfg):
            cfg.backbone = OmegaConf.create(tiny_backbone_config(backbone_dir, "unet", name="tiny_unet"))
            cfg.dataset.sample_prompts = ["a red circle at the left"]
    return cfg


def _step(path: Path) -> int:
    return int(torch.load(path, weights_only=True, map_location="cpu")["global_step"])


@pytest.mark.parametrize("steps", [0, -1])
def test_max_steps_below_one_is_refused_before_anything_loads(tmp_path, steps):
    run = tmp_path / "run"
    cfg = _cfg(run, tmp_path / "no-backbone-here", f"max_steps={steps}")
    with pytest.raises(ValueError, match=rf"max_steps={steps}: .*>= 1"):
        train(cfg)
    assert not run.exists()


@pytest.mark.slow
def test_rerun_into_a_run_with_checkpoints_is_refused(tmp_path, tiny_sd_dir):
    run = tmp_path / "run"
    train(_cfg(run, tiny_sd_dir))
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    with pytest.raises(
        FileExistsError, match=r"already holds checkpoints.*ckpt_path=last.*name=.*output_root="
    ):
        train(_cfg(run, tiny_sd_dir))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before  # no last-v1.ckpt
    train(_cfg(run, tiny_sd_dir, "max_steps=3", "ckpt_path=last"))  # the way to continue it
    assert _step(run / "checkpoints" / "last.ckpt") == 3


@pytest.mark.slow
def test_refused_resume_keeps_the_runs_config_yaml(tmp_path, tiny_sd_dir):
    run = tmp_path / "run"
    train(_cfg(run, tiny_sd_dir))
    config = (run / "config.yaml").read_text()
    assert "rank: 4" in config
    with pytest.raises(ValueError, match=r"rank: checkpoint 4 vs this run 8"):
        train(_cfg(run, tiny_sd_dir, "max_steps=3", "rank=8", "ckpt_path=last"))
    with pytest.raises(ValueError, match=r"ema: checkpoint False vs this run True"):
        train(_cfg(run, tiny_sd_dir, "max_steps=3", "ema_decay=0.9", "ckpt_path=last"))
    assert (run / "config.yaml").read_text() == config


@pytest.mark.slow
def test_last_ckpt_is_the_final_state(tmp_path, tiny_sd_dir):
    run = tmp_path / "run"
    train(_cfg(run, tiny_sd_dir, "max_steps=3"))  # checkpoints every 2 steps: the stock last.ckpt is step 2
    assert _step(run / "checkpoints" / "last.ckpt") == 3
    assert (run / "checkpoints" / "step0000002.ckpt").is_file()
    # resuming from that final state continues the run exactly as one uninterrupted run
    rec = "+callbacks.recorder._target_=wadi.testing.LossRecorder"
    resumed, straight = tmp_path / "resumed.json", tmp_path / "straight.json"
    train(_cfg(run, tiny_sd_dir, "max_steps=5", "ckpt_path=last", rec, f"+callbacks.recorder.path={resumed}"))
    assert _step(run / "checkpoints" / "last.ckpt") == 5
    train(
        _cfg(tmp_path / "straight", tiny_sd_dir, "max_steps=5", rec, f"+callbacks.recorder.path={straight}")
    )
    a, b = json.loads(resumed.read_text()), json.loads(straight.read_text())
    assert sorted(a, key=int) == ["4", "5"]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-7), step


@pytest.mark.slow
def test_callbacks_none_checkpoints_in_the_run_dir_and_resume(tmp_path, tiny_sd_dir):
    run = tmp_path / "run"
    train(_cfg(run, tiny_sd_dir, callbacks="none"))
    assert _step(run / "checkpoints" / "last.ckpt") == 2
    assert not list((run / "csv").glob("version_*/checkpoints"))
    train(_cfg(run, tiny_sd_dir, "max_steps=3", "ckpt_path=last", callbacks="none"))
    assert _step(run / "checkpoints" / "last.ckpt") == 3
