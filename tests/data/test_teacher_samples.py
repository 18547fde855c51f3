"""The teacher-sample dataset (wadi.data.teacher_samples): round trip, resume, refusals, the training stream."""

from __future__ import annotations

import pytest
import torch

import wadi.data.teacher_samples as ts
from wadi.backbones import load_backbone
from wadi.config import ConfigError

PROMPTS = ["a red circle", "a blue square", "a green star", "a red square", "a blue circle"]


@pytest.fixture(scope="module")
def tiny_teacher(tiny_sd_dir):
    from wadi.testing import tiny_backbone_config

    cfg = tiny_backbone_config(tiny_sd_dir, "unet")
    return cfg, load_backbone(cfg, load_vae=False).eval()


def _build(backbone, out, **kw):
    args = dict(
        steps=2, guidance_scale=2.0, seed=3, shard_size=2, batch_size=2, dtype="float32", progress=False
    )
    return ts.build_teacher_samples(backbone, PROMPTS, out, **(args | kw))


def test_round_trip_and_resume(tiny_teacher, tmp_path, monkeypatch):
    cfg, backbone = tiny_teacher
    out = _build(backbone, tmp_path / "s")
    samples = ts.TeacherSamples(out)
    assert samples.prompts == PROMPTS and len(samples) == 5 and samples.meta["num_shards"] == 3
    got = samples[[4, 0, 2]]
    # each row is the teacher's DDIM sample of its prompt from seed 3 * 10**9 + i, whatever the batching
    direct = torch.cat(
        [ts.teacher_latents(backbone, [PROMPTS[i]], [3 * 10**9 + i], 2, 2.0) for i in (4, 0, 2)]
    )
    assert got.shape == (3, 4, 8, 8) and torch.allclose(got, direct, rtol=1e-4, atol=1e-4)

    before = samples[list(range(5))]
    (out / ts.shard_name(1)).unlink()  # an interrupted build: one shard missing, another half-written
    (out / ts.shard_name(2)).write_bytes(b"partial")
    calls = []
    real = ts.teacher_latents
    monkeypatch.setattr(ts, "teacher_latents", lambda bb, p, *a: calls.append(list(p)) or real(bb, p, *a))
    _build(backbone, out)
    assert calls == [PROMPTS[2:4], PROMPTS[4:]]  # only the missing shards are made again
    assert torch.equal(ts.TeacherSamples(out)[list(range(5))], before)
    calls.clear()
    _build(backbone, out)
    assert calls == []  # a finished dataset: nothing to do

    with pytest.raises(ValueError, match=r"other settings \(differ: \['steps'\]\)"):
        _build(backbone, out, steps=3)


def test_stream_yields_latents_with_cached_embeddings(tiny_teacher, tmp_path):
    cfg, backbone = tiny_teacher
    out = _build(backbone, tmp_path / "s", shard_size=4)
    dm = ts.TeacherSampleDataModule(str(out), batch_size=2, seed=0, backbone=cfg)
    batch = next(iter(dm.train_dataloader()))
    index = batch["index"].tolist()
    assert batch["prompt"] == [PROMPTS[i] for i in index]
    assert torch.equal(batch["latents"], ts.TeacherSamples(out)[index])
    embeds, _ = backbone.text_encoder.encode([PROMPTS[i] for i in index])
    assert torch.allclose(batch["prompt_embeds"].float(), embeds, atol=1e-6)
    assert batch["null_embeds"].shape[0] == 1

    with pytest.raises(ConfigError, match="swd.samples is not set"):
        ts.TeacherSampleDataModule(None, batch_size=2, key="swd.samples")
    with pytest.raises(ConfigError, match="no teacher-sample dataset there"):
        ts.TeacherSampleDataModule(str(tmp_path / "nowhere"), batch_size=2)
    other = dict(cfg, name="another")
    with pytest.raises(ConfigError, match="for backbone 'tiny_unet'.*'another'"):
        ts.TeacherSampleDataModule(str(out), batch_size=2, backbone=other).prompts()
