"""Issue 17, runs: a resume with a new lr trains at it; ckpt_path may be an fsspec URL (memory:// here)."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from wadi.runs import check_resume_compatible, resolve_ckpt_path
from wadi.testing import compose_config, tiny_backbone_config
from wadi.train import train


def _cfg(run_dir: Path, backbone_dir: Path, *overrides: str):
    cfg = compose_config(
        [
            "logger=csv",
            "trainer=cpu",
            "eval=null",
            "callbacks=none",
            "dataset.num_prompts=64",
            "trainer.log_every_n_steps=1",
            "batch_size=2",
            "max_steps=1",
            "export=false",
            f"run_dir={run_dir}",
            "rank=4",
            "fake_rank=2",
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.backbone = OmegaConf.create(tiny_backbone_config(backbone_dir, "unet", name="tiny_unet"))
    return cfg


def _lrs(path: str) -> list[float]:
    with fsspec.open(path, "rb") as f:
        states = torch.load(f, weights_only=True, map_location="cpu")["optimizer_states"]
    return [s["param_groups"][0]["lr"] for s in states]


def test_resolve_ckpt_path_reads_fsspec_urls(tmp_path):
    url = "memory://wadi-trust/run/checkpoints/last.ckpt"
    with pytest.raises(FileNotFoundError, match="no checkpoint at memory://wadi-trust/run"):
        resolve_ckpt_path(url, tmp_path)
    assert resolve_ckpt_path("auto", "memory://wadi-trust/run") is None
    with fsspec.open(url, "wb") as f:
        f.write(b"x")
    assert resolve_ckpt_path(url, tmp_path) == url
    assert resolve_ckpt_path("last", "memory://wadi-trust/run") == url
    assert resolve_ckpt_path(None, tmp_path) is None


def test_resume_from_memory_url_trains_at_the_new_lr(tmp_path, tiny_sd_dir, capsys):
    """Resuming with a new lr / fake_lr used to record them in config.yaml but train at the checkpoint's."""
    first = tmp_path / "first"
    train(_cfg(first, tiny_sd_dir, "lr=1e-3", "fake_lr=1e-2"))
    assert _lrs(str(first / "checkpoints" / "last.ckpt")) == [1e-3, 1e-2]
    hparams = OmegaConf.load(first / "csv" / "version_0" / "hparams.yaml")  # the logger got the whole config
    assert hparams.max_steps == 1 and hparams.dataset.num_prompts == 64 and hparams.run_dir == str(first)

    url = "memory://wadi-trust/remote/last.ckpt"  # the run's checkpoint on a remote-style filesystem
    with fsspec.open(url, "wb") as f:
        f.write((first / "checkpoints" / "last.ckpt").read_bytes())
    second = tmp_path / "second"
    cfg = _cfg(second, tiny_sd_dir, "lr=5e-3", "fake_lr=2e-2", "max_steps=2", f"ckpt_path={url}")
    check_resume_compatible(cfg, url)  # read through fsspec, not as a local path
    _, objects = train(cfg)
    assert objects["trainer"].global_step == 2  # continued from step 1
    assert [o.param_groups[0]["lr"] for o in objects["trainer"].optimizers] == [5e-3, 2e-2]
    assert _lrs(str(second / "checkpoints" / "last.ckpt")) == [5e-3, 2e-2]
    printed = capsys.readouterr().out
    assert "lr 0.001 (checkpoint) -> 0.005" in printed
    report = printed[printed.index("wadi: run finished at step 2") :]  # the end of a run: metrics and paths
    assert "train metrics" in report and "loss_generator" in report
    for path in (second / "checkpoints" / "last.ckpt", second / "csv" / "version_0" / "metrics.csv"):
        assert str(path) in report and path.is_file()
