"""End to end through `wadi.train.train`: the composed config on tiny random diffusers directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from wadi.config import CONF_DIR
from wadi.testing import compose_config, tiny_backbone_config
from wadi.train import train

PROMPTS = [
    f"a {s} {c} {o} at the {p}"
    for s in ("small", "large")
    for c in ("red", "blue", "green")
    for o in ("circle", "square")
    for p in ("left", "top")
]


def compose_cfg(tmp_path: Path, backbone_dir: Path, kind: str = "unet", overrides: tuple[str, ...] = ()):
    cfg = compose_config(
        [
            "dataset=toy",
            "dataset.num_prompts=64",
            "logger=csv",
            "trainer=cpu",
            "batch_size=2",
            "max_steps=4",
            f"run_dir={tmp_path / 'run'}",
            "callbacks.checkpoint.every_n_train_steps=2",
            "callbacks.sample_grid.every_n_steps=2",
            "~callbacks.progress",
            "trainer.log_every_n_steps=1",
            "rank=4",
            "fake_rank=2",
            "~eval",  # the toy metrics judge 64 px toy images, not these tiny random ones
            *overrides,
        ]
    )
    with open_dict(cfg):
        cfg.backbone = OmegaConf.create(tiny_backbone_config(backbone_dir, kind, name=f"tiny_{kind}"))
        cfg.dataset.sample_prompts = PROMPTS[:2]
    return cfg


@pytest.mark.slow
def test_train_exports_and_stock_diffusers_matches(tmp_path, tiny_sd_dir):
    from diffusers import StableDiffusionPipeline

    cfg = compose_cfg(tmp_path, tiny_sd_dir)
    metrics, objects = train(cfg)
    run = Path(objects["run_dir"])
    assert objects["trainer"].global_step == 4  # one global step per distillation step
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert sorted(p.name for p in (run / "samples").glob("*.png"))
    assert objects["adapters"].stat().st_size > 0
    module = objects["module"]
    # the merged export, loaded by stock diffusers, samples in one step what the adapter model samples
    pipe = StableDiffusionPipeline.from_pretrained(objects["merged"], safety_checker=None)
    from wadi.samplers import seeded_noise

    z = seeded_noise([5], module.backbone.latent_shape, "cpu")
    ours = module.generate_latents(PROMPTS[:1], [5])
    theirs = pipe(
        PROMPTS[:1], num_inference_steps=1, guidance_scale=1.0, latents=z, output_type="latent"
    ).images
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()
    # and wadi.sample's loaders agree: merged export and checkpoint
    from wadi.sample import load_generator

    from_export = load_generator(objects["merged"])(PROMPTS[:2], [1, 2])
    from_ckpt = load_generator(run / "checkpoints" / "last.ckpt")(PROMPTS[:2], [1, 2])
    assert torch.allclose(from_export, from_ckpt, atol=1e-4)
    assert torch.allclose(from_ckpt, module.generate(PROMPTS[:2], [1, 2]), atol=1e-5)


@pytest.mark.slow
def test_interrupted_and_resumed_run_reproduces_losses(tmp_path, tiny_pixart_dir):
    record = "+callbacks.recorder._target_=wadi.testing.LossRecorder"
    full = compose_cfg(
        tmp_path / "a",
        tiny_pixart_dir,
        "pixart",
        (
            "max_steps=6",
            "export=false",
            record,
            f"+callbacks.recorder.path={tmp_path / 'a.json'}",
            "ema_decay=0.9",
        ),
    )
    train(full)
    part = compose_cfg(
        tmp_path / "b",
        tiny_pixart_dir,
        "pixart",
        (
            "max_steps=3",
            "export=false",
            "callbacks.checkpoint.every_n_train_steps=1",
            record,
            f"+callbacks.recorder.path={tmp_path / 'b.json'}",
            "ema_decay=0.9",
        ),
    )
    train(part)
    resumed = compose_cfg(
        tmp_path / "b",
        tiny_pixart_dir,
        "pixart",
        (
            "max_steps=6",
            "export=false",
            "ckpt_path=last",
            record,
            f"+callbacks.recorder.path={tmp_path / 'b.json'}",
            "ema_decay=0.9",
        ),
    )
    _, objects = train(resumed)
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert sorted(a, key=int) == sorted(b, key=int) == [str(i) for i in range(1, 7)]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-7), step
    ckpt = torch.load(Path(objects["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(ckpt["optimizer_states"]) == 2 and ckpt["wadi"]["config"]["rank"] == 4
    assert any(k.startswith("ema.") for k in ckpt["state_dict"])
    assert not any(
        ".lorad." not in k and not k.startswith("ema.") for k in ckpt["state_dict"]
    )  # no frozen base


@pytest.mark.slow
def test_checkpoint_from_other_rank_is_refused(tmp_path, tiny_sd_dir):
    train(compose_cfg(tmp_path, tiny_sd_dir, overrides=("max_steps=2", "export=false")))
    with pytest.raises(ValueError, match=r"rank: checkpoint 4 vs this run 8"):
        train(
            compose_cfg(
                tmp_path, tiny_sd_dir, overrides=("max_steps=3", "export=false", "rank=8", "ckpt_path=last")
            )
        )


def test_missing_weights_name_the_path(tmp_path):
    cfg = compose_cfg(tmp_path, tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"weights not found at .*nowhere.*unet/"):
        train(cfg)


def test_wrong_layout_names_expected_subfolders(tmp_path, tiny_pixart_dir):
    cfg = compose_cfg(tmp_path, tiny_pixart_dir, "unet")
    with pytest.raises(FileNotFoundError, match=r"expects subfolders unet/.*missing unet/.*transformer/"):
        train(cfg)


def test_unknown_backbone_lists_known_ones():
    from hydra.errors import MissingConfigException

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        with pytest.raises(MissingConfigException) as err:
            compose("config", overrides=["backbone=sdxl"])
    assert "sd15" in str(err.value) and "pixart" in str(err.value)


def test_rank_below_one_rejected(tmp_path, tiny_sd_dir):
    with pytest.raises(ValueError, match=r"rank=0: expected an integer >= 1"):
        train(compose_cfg(tmp_path, tiny_sd_dir, overrides=("rank=0",)))


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_experiment_composes(experiment):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={experiment}"])
    OmegaConf.to_container(cfg.module, resolve=True)  # interpolations resolve
    assert cfg.rank >= 1


@pytest.mark.parametrize(
    "backbone,expected",
    [
        ("sd15", (83_795_968, 9_378_816)),
        ("sd21", (94_429_184, 9_509_888)),
        ("pixart", (81_219_584, 20_127_744)),
    ],
)
def test_dry_run_counts_equal_paper(backbone, expected):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"backbone={backbone}", "dry_run=true"])
    metrics, _ = train(cfg)
    assert (metrics["parameters"]["generator"], metrics["parameters"]["fake_score"]) == expected


@pytest.mark.slow
def test_cli_dry_run_multirun(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "wadi.train",
            "-m",
            "backbone=pixart",
            "rank=64,128",
            "dry_run=true",
            f"output_root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=CONF_DIR.parent,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "40,609,792" in out.stdout and "81,219,584" in out.stdout


@pytest.mark.slow
def test_sample_cli_writes_pngs_and_grid(tmp_path, tiny_sd_dir):
    _, objects = train(compose_cfg(tmp_path, tiny_sd_dir, overrides=("max_steps=1",)))
    out = tmp_path / "samples_cli"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "wadi.sample",
            f"model={objects['merged']}",
            "prompts=[a red circle,a blue star]",
            "per_prompt=2",
            f"out={out}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=CONF_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list(out.glob("0*_seed*.png"))) == 4 and (out / "grid.png").is_file()
    assert len(json.loads((out / "prompts.json").read_text())) == 4


@pytest.mark.slow
@pytest.mark.parametrize("fixture,kind", [("tiny_sd21_dir", "unet"), ("tiny_pixart_dir", "pixart")])
def test_two_training_steps_on_sd21_and_pixart_layouts(tmp_path, fixture, kind, request):
    """Issue 4: SD2.1's layout (linear projections, 1024-d cross-attention) and PixArt's, end to end."""
    directory = request.getfixturevalue(fixture)
    cfg = compose_cfg(tmp_path, directory, kind, ("max_steps=2",))
    _, objects = train(cfg)
    module = objects["module"]
    assert objects["trainer"].global_step == 2
    if kind == "unet":
        assert module.denoiser.model.config.cross_attention_dim == 1024
        assert any(n.endswith("proj_in") for n in module.generator_layers)  # linear projections are adapted
        assert not any(n.endswith("proj_in") for n in module.fake_score_layers)
    assert (Path(objects["merged"]) / ("transformer" if kind == "pixart" else "unet")).is_dir()


def test_tokenizer_max_length_mismatch_is_an_error(tmp_path, tiny_sd_dir):
    cfg = compose_cfg(tmp_path, tiny_sd_dir)
    cfg.backbone.text_max_length = 77
    with pytest.raises(ValueError, match=r"model_max_length=16.*text_max_length=77"):
        train(cfg)


@pytest.mark.slow
def test_nan_gradient_stops_and_keeps_the_last_finite_checkpoint(tmp_path, tiny_sd_dir, monkeypatch):
    from wadi.distill.guards import NonFiniteError, first_nonfinite
    from wadi.distill.vsd import VSDConfig

    real = VSDConfig.gradient_fn
    calls = {"n": 0}

    def poisoned(self):
        fn = real(self)

        def g(*args):
            calls["n"] += 1
            out = fn(*args)
            return out * float("nan") if calls["n"] >= 3 else out

        return g

    monkeypatch.setattr(VSDConfig, "gradient_fn", poisoned)
    cfg = compose_cfg(tmp_path, tiny_sd_dir)
    with pytest.raises(NonFiniteError, match="step 2: the generator loss is nan"):
        train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 and first_nonfinite(ckpt["state_dict"]) is None
    assert not (tmp_path / "run" / "export").exists()
