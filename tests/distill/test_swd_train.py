"""SwD end to end (`method=swd`): teacher samples, two training steps, export and scale-wise sampling, on the tiny
random U-Net and PixArt."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from wadi.backbones import load_backbone
from wadi.config import ConfigError, validate_train_config
from wadi.data.teacher_samples import build_teacher_samples
from wadi.testing import compose_config, tiny_backbone_config

PROMPTS = ["a red circle", "a blue square", "a green star", "a red square"]
PIPELINE = Path(__file__).resolve().parents[2] / "wadi" / "pipelines" / "swd_pipeline.py"


def _cfg(tmp_path: Path, backbone: dict, samples: Path | None, *overrides: str):
    cfg = compose_config(
        [
            "method=swd",
            f"swd.samples={samples}",
            "swd.scales=[4,6,8]",
            "logger=csv",
            "trainer=cpu",
            "batch_size=2",
            "max_steps=2",
            f"run_dir={tmp_path / 'run'}",
            "~callbacks.progress",
            "~callbacks.sample_grid",
            "rank=4",
            "fake_rank=2",
            "~eval",
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.backbone = OmegaConf.create(backbone)
        cfg.dataset.sample_prompts = PROMPTS[:2]
    return cfg


def _samples(backbone: dict, out: Path) -> Path:
    teacher = load_backbone(backbone, load_vae=False).eval()
    return build_teacher_samples(teacher, PROMPTS, out, steps=1, shard_size=2, batch_size=4, progress=False)


def _check_run_and_export(metrics: dict, objects: dict, steps: int, terms=("vsd", "pdm")) -> None:
    """A SwD run: its student and terms, the PDM term logged, and the export sampling the module's images through
    wadi.generation and through the diffusers custom pipeline."""
    from diffusers import DiffusionPipeline

    from wadi.generation import load_generator

    module = objects["module"]
    assert objects["trainer"].global_step == steps
    assert type(module.student).__name__ == "ScaleWiseStudent" and list(module.method.losses) == list(terms)
    assert torch.isfinite(torch.tensor(metrics["train/loss_generator"]))
    assert "train/loss_pdm" in metrics  # the PDM term ran (logged per term when there are several)
    info = json.loads((Path(objects["merged"]) / "wadi_export.json").read_text())
    assert info["student"]["scales"] == [4, 6, 8] and len(info["student"]["timesteps"]) == 3
    seeds = [1, 2]
    ours = module.generate(PROMPTS[:2], seeds)
    exported = load_generator(objects["merged"])(PROMPTS[:2], seeds)
    assert exported.shape == ours.shape == (2, 3, 16, 16)
    assert torch.allclose(exported, ours.cpu(), atol=2e-3)
    pipe = DiffusionPipeline.from_pretrained(
        objects["merged"], custom_pipeline=str(PIPELINE), trust_remote_code=True
    )
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    images = pipe(PROMPTS[:2], generator=gens, output_type="pt").images
    assert torch.allclose(images.float(), exported, atol=2e-3)


@pytest.mark.slow
def test_two_swd_steps_on_a_unet_export_and_sample(tmp_path, tiny_sd_dir):
    from wadi.train import train

    backbone = tiny_backbone_config(tiny_sd_dir, "unet")
    metrics, objects = train(_cfg(tmp_path, backbone, _samples(backbone, tmp_path / "samples")))
    _check_run_and_export(metrics, objects, 2)


@pytest.mark.slow
def test_two_swd_steps_with_the_gan_head_on_a_unet(tmp_path, tiny_sd_dir):
    from wadi.train import train

    backbone = tiny_backbone_config(tiny_sd_dir, "unet")
    samples = _samples(backbone, tmp_path / "samples")
    metrics, objects = train(_cfg(tmp_path, backbone, samples, "swd.gan_weight=5e-3", "vsd.fake_steps=2"))
    _check_run_and_export(metrics, objects, 2, ("vsd", "pdm", "gan"))
    module = objects["module"]
    head = module.term_networks["gan"]
    assert head.width == 64 and head.block == "mid_block"  # the tiny U-Net's mid block (the PDM block)
    for key in (
        "train/loss_gan",
        "train/fake_loss_gan",
        "train/fake_gan_real_logit",
        "train/fake_gan_fake_logit",
    ):
        assert torch.isfinite(torch.tensor(metrics[key])), key
    for block in head.layers:  # LayerNorm starts at weight 1, bias 0: the critic updates moved every one
        norm = block[0]
        assert not torch.equal(norm.weight, torch.ones_like(norm.weight)) and norm.bias.abs().max() > 0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert {f"term_networks.gan.{k}" for k in head.state_dict()} <= set(ckpt["state_dict"])
    assert len(ckpt["optimizer_states"][1]["param_groups"]) == 2  # the fake score's adapter, then the head


@pytest.mark.slow
@pytest.mark.parametrize("gan", [0.0, 5e-3])
def test_swd_on_pixart_resumes_exactly_and_exports(tmp_path, tiny_pixart_dir, gan):
    from wadi.train import train

    backbone = tiny_backbone_config(tiny_pixart_dir, "pixart")
    samples = _samples(backbone, tmp_path / "samples")
    rec = "+callbacks.recorder._target_=wadi.testing.LossRecorder"
    gan_on = (f"swd.gan_weight={gan}",)
    resumed, straight = tmp_path / "resumed.json", tmp_path / "straight.json"
    first = tmp_path / "first.json"
    train(
        _cfg(
            tmp_path / "a",
            backbone,
            samples,
            *gan_on,
            "export=false",
            rec,
            f"+callbacks.recorder.path={first}",
        )
    )
    assert sorted(json.loads(first.read_text()), key=int) == ["1", "2"]  # two steps on PixArt
    resume = ("max_steps=4", "ckpt_path=last", "export=false", rec, f"+callbacks.recorder.path={resumed}")
    _, again = train(_cfg(tmp_path / "a", backbone, samples, *gan_on, *resume))
    metrics, objects = train(
        _cfg(
            tmp_path / "b",
            backbone,
            samples,
            *gan_on,
            "max_steps=4",
            rec,
            f"+callbacks.recorder.path={straight}",
        )
    )
    a, b = json.loads(resumed.read_text()), json.loads(straight.read_text())
    assert sorted(a, key=int) == ["3", "4"]  # scales 3 (the last) and 1 again: round robin by the global step
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-7), step
    heads = [
        o["module"].term_networks.state_dict() for o in (again, objects)
    ]  # the GAN head: resumed == straight
    assert sorted(heads[0]) == sorted(heads[1]) and (len(heads[0]) > 0) == (gan > 0)
    for key in heads[0]:
        assert torch.allclose(heads[0][key], heads[1][key], rtol=1e-5, atol=1e-7), key
    _check_run_and_export(metrics, objects, 4, ("vsd", "pdm", "gan") if gan else ("vsd", "pdm"))


def test_bad_schedules_fail_before_loading(tmp_path, tiny_pixart_dir):
    backbone = tiny_backbone_config(tiny_pixart_dir, "pixart")
    with pytest.raises(ConfigError, match=r"size 5 is not a multiple of PixArt's patch size 2"):
        validate_train_config(_cfg(tmp_path, backbone, tmp_path, "swd.scales=[5,8]"))
    with pytest.raises(ConfigError, match=r"swd.timesteps=\[999, 999\]"):
        validate_train_config(
            _cfg(tmp_path, backbone, tmp_path, "swd.scales=[4,8]", "swd.timesteps=[999,999]")
        )
    with pytest.raises(ConfigError, match=r"swd.gan_layers=0: expected an integer >= 1"):
        validate_train_config(_cfg(tmp_path, backbone, tmp_path, "swd.gan_weight=5e-3", "swd.gan_layers=0"))
    with pytest.raises(ConfigError, match=r"swd.gan_weight=-0.1: expected a finite number >= 0"):
        validate_train_config(_cfg(tmp_path, backbone, tmp_path, "swd.gan_weight=-0.1"))
