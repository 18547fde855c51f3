"""The export reproduces the student: merged diffusers directory in stock diffusers, adapter file with EMA."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from safetensors.torch import load_file

from wadi.config import CONF_DIR
from wadi.distill.module import WaDiModule
from wadi.export import export_adapters, export_merged, one_step_betas
from wadi.samplers import seeded_noise

PROMPT = "a large red circle at the left and a small blue square at the right"


def toy_backbone(name: str, *overrides: str) -> dict:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"backbone={name}", *overrides])
    return OmegaConf.to_container(cfg.backbone, resolve=True)


def trained_looking(backbone: dict, **kw) -> WaDiModule:
    """A module on a shipped toy teacher whose generator adapter is moved off its zero init."""
    torch.manual_seed(0)
    module = WaDiModule(backbone=backbone, rank=4, fake_rank=2, **kw).eval()
    with torch.no_grad():
        for p in module.generator_parameters():
            p.normal_(std=0.02)
    return module


def test_one_step_betas_end_at_alpha_T_and_keep_the_rest():
    betas = torch.linspace(1e-4, 0.02, 1000)
    for alpha_T in (0.0685565, 0.3):
        new = one_step_betas(betas, alpha_T)
        assert torch.equal(new[:-1], betas[:-1].double())
        assert torch.prod(1 - new).item() == pytest.approx(alpha_T**2, rel=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "overrides"),
    [("toy", ("backbone.alpha_T=0.0685565",)), ("toy_pixart", ())],  # toy_pixart's default sets alpha_T
    ids=["toy-sd-alpha_T", "toy-pixart-default"],
)
def test_merged_export_with_alpha_T_samples_the_student_in_stock_diffusers(tmp_path, name, overrides):
    from diffusers import DiffusionPipeline

    backbone = toy_backbone(name, *overrides)
    assert backbone["alpha_T"] is not None
    module = trained_looking(backbone)
    out = export_merged(module, tmp_path / "merged")
    pipe = DiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    z = seeded_noise([3], module.backbone.latent_shape, "cpu")
    ours = module.generate_latents([PROMPT], [3])
    kw = {"num_inference_steps": 1, "guidance_scale": 1.0, "latents": z, "output_type": "latent"}
    if module.backbone.cfg.kind == "pixart":
        kw |= {
            "max_sequence_length": backbone["text_max_length"],
            "clean_caption": False,
            "use_resolution_binning": False,
        }
    theirs = pipe(PROMPT, **kw).images
    rel = ((ours - theirs).norm() / ours.norm()).item()
    assert rel < 1e-3, f"stock diffusers differs from the student by {rel:.2%}"


def test_adapter_export_with_ema_keeps_live_and_ema_weights_apart(tmp_path):
    """The EMA swap rewrites the live parameters; the file must still hold both (it crashed after training)."""
    module = trained_looking(toy_backbone("toy"), ema_decay=0.5)
    live = [p.detach().clone() for p in module.generator_parameters()]
    with torch.no_grad():
        for p in module.generator_parameters():
            p.add_(1.0)
        module.ema.update()  # shadow = 0.5 (init) + 0.5 (live + 1): differs from the live weights
        for p, v in zip(module.generator_parameters(), live):
            p.copy_(v)
    tensors = load_file(export_adapters(module, tmp_path / "adapters.safetensors"))
    model = module.denoiser.model
    names = list(
        module.adapter.state_dict(model, "generator")
    )  # in parameter order, like `live` and the shadows
    assert len(names) == len(live) and sum(k.startswith("generator_ema/") for k in tensors) == len(live)
    assert all(torch.equal(tensors[f"generator/{k}"], v) for k, v in zip(names, live))
    assert all(torch.equal(tensors[f"generator_ema/{k}"], s) for k, s in zip(names, module.ema.shadows()))
    assert all(torch.equal(p, v) for p, v in zip(module.generator_parameters(), live))  # swapped back


def test_exports_refuse_nonfinite_adapter_weights(tmp_path):
    from wadi.distill.guards import NonFiniteError

    module = trained_looking(toy_backbone("toy"))
    with torch.no_grad():
        module.generator_parameters()[0].fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="non-finite"):
        export_adapters(module, tmp_path / "adapters.safetensors")
    with pytest.raises(NonFiniteError, match="non-finite"):
        export_merged(module, tmp_path / "merged")
    assert not (tmp_path / "adapters.safetensors").exists() and not (tmp_path / "merged").exists()


def test_toy_export_runs_in_stock_diffusers_without_torch_dtype(tmp_path):
    """Stock StableDiffusionPipeline, no torch_dtype: every component in one dtype (the fp16 teacher's text
    encoder and VAE beside the fp32 U-Net raised "mat1 and mat2 must have the same dtype"), through the VAE
    decode, and no scheduler FutureWarning (steps_offset)."""
    import warnings

    from diffusers import StableDiffusionPipeline

    module = trained_looking(toy_backbone("toy"))
    out = export_merged(module, tmp_path / "merged")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        pipe = StableDiffusionPipeline.from_pretrained(out)
        pipe.set_progress_bar_config(disable=True)
        image = pipe(PROMPT, num_inference_steps=1, guidance_scale=1.0, output_type="pt").images
    dtypes = {p.dtype for c in (pipe.unet, pipe.text_encoder, pipe.vae) for p in c.parameters()}
    assert dtypes == {torch.float32}
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_export_files_are_readable_by_others(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        _export_files_are_readable_by_others(tmp_path)
    finally:
        os.umask(old)


def _export_files_are_readable_by_others(tmp_path):
    module = trained_looking(toy_backbone("toy"))
    adapters = export_adapters(module, tmp_path / "export" / "adapters.safetensors")
    merged = export_merged(module, tmp_path / "export" / "merged")
    files = [adapters, *(p for p in merged.rglob("*") if p.is_file())]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    dirs = [merged, *(p for p in merged.rglob("*") if p.is_dir())]
    assert {oct(p.stat().st_mode & 0o777) for p in dirs} == {"0o755"}
