"""Training from a text-embedding cache (issue 4, item 5): the text encoder is never loaded, and the losses equal
those of the same run that encodes prompts on the fly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from wadi.config import CONF_DIR
from wadi.testing import LossRecorder, tiny_backbone_config

PROMPTS = ["a red circle at the left", "a small blue square", "the big star", "a cat", "a dog photo"]


def compose_cfg(
    tmp_path: Path, backbone_dir: Path, run: str, cache_dir: Path | None, losses: Path | None = None
):
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(PROMPTS) + "\n")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "dataset=text",
                f"dataset.source={source}",
                "dataset.grammar=null",  # free text on a tiny T5 (the toy recipe asks for toy captions)
                "logger=csv",
                "trainer=cpu",
                "batch_size=2",
                "max_steps=3",
                f"run_dir={tmp_path / run}",
                "callbacks.checkpoint.every_n_train_steps=3",
                "callbacks.sample_grid.every_n_steps=3",
                "~callbacks.progress",
                "rank=4",
                "fake_rank=2",
                "export=false",
                "~eval",
                f"cache_dir={cache_dir}" if cache_dir else "cache_dir=null",
            ],
        )
    with open_dict(cfg):
        cfg.backbone = OmegaConf.create(tiny_backbone_config(backbone_dir, "pixart"))
        cfg.dataset.sample_prompts = PROMPTS[:2]
        cfg.cache_shard_size = 2
        if losses is not None:
            cfg.callbacks.losses = {"_target_": "wadi.testing.LossRecorder", "path": str(losses)}
    return cfg


@pytest.mark.slow
def test_training_from_the_cache_never_loads_the_text_encoder(tmp_path, tiny_pixart_dir, monkeypatch):
    import wadi.backbones.loading as loading
    from wadi.cache_prompts import cache_prompts
    from wadi.train import train

    cache_dir = tmp_path / "cache"
    cache_prompts(compose_cfg(tmp_path, tiny_pixart_dir, "cache_run", cache_dir))

    train(compose_cfg(tmp_path, tiny_pixart_dir, "plain", None, losses=tmp_path / "plain.json"))

    def refuse(*args, **kwargs):
        raise AssertionError("the text encoder was loaded although a cache was given")

    monkeypatch.setattr(loading, "load_text_encoder", refuse)
    train(compose_cfg(tmp_path, tiny_pixart_dir, "cached", cache_dir, losses=tmp_path / "cached.json"))

    a = json.loads((tmp_path / "plain.json").read_text())
    b = json.loads((tmp_path / "cached.json").read_text())
    assert sorted(a) == sorted(b) == ["1", "2", "3"]
    for step in a:  # (generator loss, fake-score loss) per step
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-6), (step, a[step], b[step])
    assert (tmp_path / "cached" / "samples").is_dir()  # the sample grid read its prompts from the cache
    assert LossRecorder  # the recorder is the one the resume tests use
