"""Control transfer on tiny random models: a LoRA trained on the teacher moves the student the same way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from wadi.analysis.transfer import (
    add_lora,
    apply_lora,
    lora_layer_names,
    read_lora,
    set_lora_scale,
    train_lora,
    unload_lora,
)
from wadi.backbones import Conditioning
from wadi.generation import load_generator
from wadi.samplers import seeded_noise
from wadi.testing import tiny_backbone_config

PROMPTS = ["a red circle", "a blue square"]
SEEDS = [0, 1]


def shifted_latents(n: int = 4) -> torch.Tensor:
    """Clean latents with channel 0 at +1.5 and the rest at 0: the 'attribute' the LoRA learns."""
    x0 = torch.zeros(n, 4, 8, 8)
    x0[:, 0] = 1.5
    return x0


@pytest.fixture(scope="module")
def student_dir(tiny_sd_dir, tmp_path_factory):
    """A merged WaDi export: the tiny teacher with a random (nonzero) LoRaD rotation merged in."""
    from wadi.distill.module import WaDiModule
    from wadi.export import export_merged

    torch.manual_seed(0)
    module = WaDiModule(tiny_backbone_config(tiny_sd_dir, "unet"), rank=4, fake_rank=2)
    for name, p in module.denoiser.model.named_parameters():
        if name.endswith("lorad.generator.lorad_A"):
            p.data.normal_(0, 0.05)
    return export_merged(module, tmp_path_factory.mktemp("student") / "export")


@pytest.fixture(scope="module")
def teacher_gen(tiny_sd_dir):
    return load_generator(tiny_sd_dir, teacher_steps=4)


@pytest.fixture(scope="module")
def student_gen(student_dir):
    return load_generator(student_dir)


@pytest.fixture(scope="module")
def teacher_lora(tiny_sd_dir, tmp_path_factory):
    return train_lora(
        tiny_sd_dir,
        ["a red circle"],
        tmp_path_factory.mktemp("lora_t"),
        latents=shifted_latents(),
        steps=60,
        lr=1e-2,
    )


@pytest.fixture(scope="module")
def student_lora(student_dir, tmp_path_factory):
    return train_lora(
        student_dir,
        ["a red circle"],
        tmp_path_factory.mktemp("lora_s"),
        latents=shifted_latents(),
        steps=60,
        lr=1e-2,
    )


@torch.no_grad()
def eps_at(gen, t: int = 500) -> torch.Tensor:
    """The denoiser's eps for fixed noise, prompts and timestep (what a LoRA changes directly)."""
    bb = gen.backbone
    embeds, _ = bb.text_encoder.encode(PROMPTS)
    z = seeded_noise(SEEDS, bb.latent_shape, "cpu")
    return bb.denoiser(z, torch.full((len(SEEDS),), t), Conditioning(embeds), gen.adapter)


def with_lora(gen, lora, fn, scale: float = 1.0):
    add_lora(gen, lora, scale=scale)
    try:
        return fn(gen)
    finally:
        unload_lora(gen)


@pytest.mark.parametrize("trained_on", ["teacher", "student"])
def test_lora_moves_teacher_and_student_the_same_way(trained_on, teacher_gen, student_gen, request):
    lora = request.getfixturevalue(f"{trained_on}_lora")
    deltas = {}
    for name, gen in (("teacher", teacher_gen), ("student", student_gen)):
        deltas[name] = (with_lora(gen, lora, eps_at) - eps_at(gen)).flatten()
        assert deltas[name].norm() > 0.1 * eps_at(gen).norm()  # a real change, not noise
    assert F.cosine_similarity(deltas["teacher"], deltas["student"], dim=0) > 0.9


def test_teacher_lora_shifts_the_one_step_student_toward_the_target(teacher_lora, student_dir):
    gen = load_generator(student_dir)
    before = gen.latents(PROMPTS, SEEDS)
    after = apply_lora(gen, teacher_lora).latents(PROMPTS, SEEDS)
    target = shifted_latents(len(SEEDS))
    # The move points toward the target, and it is the LoRA's channel that moves: up, in every sample.
    assert F.cosine_similarity((after - before).flatten(), (target - before).flatten(), dim=0) > 0.3
    shift = after[:, 0].mean((1, 2)) - before[:, 0].mean((1, 2))
    assert (shift > 1.0).all()
    assert (after[:, 1:].mean() - before[:, 1:].mean()).abs() < 0.5 * shift.mean()
    unload_lora(gen)
    assert torch.equal(gen.latents(PROMPTS, SEEDS), before)


def test_apply_lora_from_a_path(student_dir, teacher_lora):
    gen = apply_lora(student_dir, teacher_lora)
    # to_q, to_k, to_v, to_out.0 of attn1 and attn2 in 4 transformer blocks (down 1, mid 1, up 2)
    assert len(lora_layer_names(gen)) == 32
    images = gen(PROMPTS, SEEDS)
    assert images.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="load options"):
        apply_lora(gen, teacher_lora, teacher_steps=4)


def test_zero_init_lora_changes_nothing(tiny_sd_dir, student_gen, tmp_path):
    zero = train_lora(tiny_sd_dir, ["a red circle"], tmp_path, latents=shifted_latents(), steps=0)
    state, config = read_lora(zero, "unet")
    assert all(v.abs().max() == 0 for k, v in state.items() if ".lora_B." in k)
    base = eps_at(student_gen)
    assert torch.equal(with_lora(student_gen, zero, eps_at), base)


def test_scale_and_unload_restore_exactly(student_gen, teacher_lora):
    from peft.tuners.lora import LoraLayer

    base = eps_at(student_gen)
    add_lora(student_gen, teacher_lora)
    try:
        full = eps_at(student_gen)
        set_lora_scale(student_gen, 0.0, "lora")
        assert torch.equal(eps_at(student_gen), base)
        set_lora_scale(student_gen, 0.5, "lora")
        half = eps_at(student_gen)
        assert 0 < (half - base).norm() < (full - base).norm()
    finally:
        unload_lora(student_gen)
    assert torch.equal(eps_at(student_gen), base)
    model = student_gen.backbone.denoiser.model
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert not hasattr(model, "peft_config") or not model.peft_config


def test_file_is_diffusers_format(teacher_lora, tiny_sd_dir, tmp_path):
    """Stock diffusers loads our file; the older diffusers and kohya layouts load into the same LoRA."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya

    peft_state = load_file(str(teacher_lora))
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in peft_state)
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir / "unet").eval()
    x, t, c = torch.randn(2, 4, 8, 8), torch.full((2,), 400), torch.randn(2, 16, 32)

    def run():
        with torch.no_grad():
            return unet(x, t, encoder_hidden_states=c).sample

    base = run()
    add_lora(unet, teacher_lora)
    ours = run()
    unload_lora(unet)
    assert not torch.allclose(ours, base)
    unet.load_lora_adapter(teacher_lora.parent, prefix="unet", weight_name=teacher_lora.name)
    torch.testing.assert_close(run(), ours)
    unet.unload_lora()
    for name, convert in (("old", convert_state_dict_to_diffusers), ("kohya", convert_state_dict_to_kohya)):
        path = tmp_path / f"{name}.safetensors"
        save_file(convert(dict(peft_state)), str(path))
        add_lora(unet, path)
        torch.testing.assert_close(run(), ours)
        unload_lora(unet)
    assert torch.equal(run(), base)


def test_pixart_lora(tiny_pixart_dir, tmp_path):
    lora = train_lora(
        tiny_pixart_dir, ["a red circle"], tmp_path, latents=shifted_latents(2), steps=3, lr=1e-2
    )
    assert all(k.startswith("transformer.") for k in load_file(str(lora)))
    gen = load_generator(tiny_pixart_dir, teacher_steps=2)
    base = eps_at(gen)
    changed = with_lora(gen, lora, eps_at)
    assert not torch.allclose(changed, base)
    assert torch.equal(eps_at(gen), base)


def test_wrong_base_or_missing_file(teacher_lora, tiny_pixart_dir, tmp_path):
    gen = load_generator(tiny_pixart_dir, teacher_steps=2)
    with pytest.raises(ValueError, match="unet"):
        add_lora(gen, teacher_lora)
    assert not lora_layer_names(gen)
    with pytest.raises(FileNotFoundError, match="pytorch_lora_weights"):
        add_lora(gen, tmp_path)


def test_two_loras_add_up_and_unload_one_at_a_time(student_gen, teacher_lora, student_lora):
    base = eps_at(student_gen)
    add_lora(student_gen, teacher_lora, adapter_name="first")
    only_first = eps_at(student_gen)
    add_lora(student_gen, student_lora, adapter_name="second")
    try:
        both = eps_at(student_gen)
        assert not torch.allclose(both, only_first)  # the second LoRA is active too, not just injected
        unload_lora(student_gen, "second")
        assert torch.equal(eps_at(student_gen), only_first)
    finally:
        unload_lora(student_gen)
    assert torch.equal(eps_at(student_gen), base)
