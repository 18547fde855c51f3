"""Weight-direction analysis on constructed weight pairs with known rotations and norm changes."""

from __future__ import annotations

import json
import math

import pytest
import torch

from wadi.adapters.lorad import LoRaDLinear
from wadi.analysis.weights import (
    angle_change,
    block_of,
    direction_residual,
    energy_at,
    energy_curve,
    layer_change,
    norm_change,
    recombine,
    row_norms,
    summarize,
)


def rotate_rows(w: torch.Tensor, theta: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Rotate each row w_i by theta_i inside the plane of w_i and a random unit vector orthogonal to it."""
    g = torch.Generator().manual_seed(seed)
    w = w.double()
    u = w / w.norm(dim=1, keepdim=True)
    v = torch.randn(w.shape, generator=g, dtype=torch.float64)
    v = v - (v * u).sum(1, keepdim=True) * u
    v = v / v.norm(dim=1, keepdim=True)
    return w.norm(dim=1, keepdim=True) * (torch.cos(theta)[:, None] * u + torch.sin(theta)[:, None] * v)


@pytest.fixture
def w_a() -> torch.Tensor:
    return torch.randn(24, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def test_known_rotation_gives_its_angle_and_no_norm_change(w_a):
    theta = torch.linspace(1e-4, 3.0, w_a.shape[0], dtype=torch.float64)
    w_b = rotate_rows(w_a, theta)
    torch.testing.assert_close(angle_change(w_a, w_b), theta, rtol=1e-9, atol=1e-12)
    assert norm_change(w_a, w_b).abs().max() < 1e-12


def test_tiny_angle_is_accurate(w_a):
    """arccos(cos) would return 0 here in float64; the atan2 form keeps the digits."""
    theta = torch.full((w_a.shape[0],), 1e-9, dtype=torch.float64)
    torch.testing.assert_close(angle_change(w_a, rotate_rows(w_a, theta)), theta, rtol=1e-5, atol=0)


def test_known_scaling_gives_its_norm_change_and_no_angle(w_a):
    w_b = 1.05 * w_a
    torch.testing.assert_close(norm_change(w_a, w_b), torch.full((24,), 0.05, dtype=torch.float64))
    assert angle_change(w_a, w_b).abs().max() < 1e-7
    shrink = norm_change(w_a, 0.9 * w_a)
    torch.testing.assert_close(shrink, torch.full((24,), 0.1, dtype=torch.float64))  # |.|: absolute change


def test_rotation_and_scaling_together_and_the_ratio(w_a):
    w_b = 1.001 * rotate_rows(w_a, torch.full((24,), 0.02, dtype=torch.float64))
    row = layer_change("down_blocks.0.attentions.0.proj_in", w_a, w_b)
    assert row["norm_change"] == pytest.approx(0.001, rel=1e-9)
    assert row["angle"] == pytest.approx(0.02, rel=1e-9)
    assert row["one_minus_cos"] == pytest.approx(1 - math.cos(0.02), rel=1e-9)
    assert row["block"] == "down_blocks.0" and row["identical"] is False
    summary = summarize([row])
    assert summary["overall"]["direction_norm_ratio"] == pytest.approx(20.0, rel=1e-6)


def test_float16_teacher_keeps_a_small_norm_change():
    """The toy teachers ship float16: a 0.2% row-norm change of a float32 student is a change, not rounding."""
    torch.manual_seed(0)
    w_a = torch.randn(16, 32).to(torch.float16)
    scale = 1 + 0.002 * torch.linspace(-1, 1, 16).sign().unsqueeze(1)  # every row's norm moves by 0.2%
    row = layer_change("down_blocks.0.a", w_a, w_a.float() * scale, svd=False)
    assert row["norm_change"] == pytest.approx(0.002, rel=1e-3)
    # the LoRaD case still reads 0: the same fp16 weights written in float32 are unchanged
    assert layer_change("down_blocks.0.a", w_a, w_a.float(), svd=False)["norm_change"] == 0


def test_lorad_merged_layer_changes_direction_never_norm():
    torch.manual_seed(0)
    layer = LoRaDLinear(32, 16)
    layer.add_adapter("generator", rank=4)
    with torch.no_grad():
        layer.lorad["generator"].lorad_A.normal_(0, 0.3)  # nonzero A: a real rotation
    w_a = layer.weight.detach().clone()
    layer.merge("generator")
    w_b = layer.weight.detach().clone()
    assert norm_change(w_a, w_b).max() < 1e-6  # float32 rounding only
    theta = angle_change(w_a, w_b)
    assert theta.min() > 1e-3
    # Direct formula: rotating column pair k of row i by Theta_ik gives cos(angle_i) =
    # sum_k |pair_ik|^2 cos(Theta_ik) / |a_i|^2.
    ad = layer.lorad["generator"]
    big_theta = torch.remainder(ad.lorad_A @ ad.lorad_B + math.pi, 2 * math.pi) - math.pi
    pair_sq = w_a.double().unflatten(1, (-1, 2)).square().sum(-1)
    cos = (pair_sq * torch.cos(big_theta.double())).sum(1) / row_norms(w_a).square()
    torch.testing.assert_close(theta, torch.arccos(cos), rtol=1e-4, atol=1e-5)


def test_energy_curve_of_known_singular_values():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(10, 10, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(20, 10, generator=g, dtype=torch.float64))
    s = torch.tensor([4.0, 3, 2, 1, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    curve = energy_curve(u @ torch.diag(s) @ v.T)
    total = 30.0
    torch.testing.assert_close(curve[:4], torch.tensor([16, 25, 29, 30], dtype=torch.float64) / total)
    at = energy_at(curve, (0.1, 0.3, 0.5))  # k = 1, 3, 5 of rank 10
    assert at[0.1] == pytest.approx(16 / 30) and at[0.3] == pytest.approx(29 / 30) and at[0.5] == 1.0
    assert torch.isnan(energy_curve(torch.zeros(3, 4))).all()


def test_scaling_never_enters_the_direction_residual(w_a):
    assert direction_residual(w_a, 3.0 * w_a).abs().max() < 1e-12
    row = layer_change("mid_block.x", w_a, 3.0 * w_a)
    assert row["energy"] is None and row["curve"] is None


def test_recombine_limits_are_exact(w_a):
    w_a32 = w_a.float()
    w_b32 = (1.03 * rotate_rows(w_a, torch.full((24,), 0.1, dtype=torch.float64))).float()
    assert torch.equal(recombine(w_a32, w_a32), w_a32)
    assert torch.equal(recombine(w_b32, w_b32), w_b32)
    teacher_norms = recombine(w_b32, w_a32)  # student's directions, teacher's norms
    torch.testing.assert_close(row_norms(teacher_norms), row_norms(w_a32), rtol=1e-6, atol=0)
    assert angle_change(teacher_norms, w_b32).max() < 1e-3
    teacher_dirs = recombine(w_a32, w_b32)  # teacher's directions, student's norms
    torch.testing.assert_close(row_norms(teacher_dirs), row_norms(w_b32), rtol=1e-6, atol=0)
    assert angle_change(teacher_dirs, w_a32).max() < 1e-3
    assert teacher_norms.dtype == torch.float32


def test_shape_mismatch_names_the_layer():
    with pytest.raises(ValueError, match="up_blocks.1.x"):
        layer_change("up_blocks.1.x", torch.zeros(3, 4), torch.zeros(4, 3))


def test_block_names():
    assert block_of("down_blocks.2.attentions.1.transformer_blocks.0.attn1.to_q") == "down_blocks.2"
    assert block_of("mid_block.attentions.0.proj_in") == "mid_block"
    assert block_of("transformer_blocks.13.ff.net.2") == "transformer_blocks.13"
    assert block_of("caption_projection.linear_1") == "caption_projection"
    assert block_of("proj_out") == "proj_out"


def test_summary_per_block_and_json_safe(w_a):
    rows = [
        layer_change("down_blocks.0.a", w_a, 1.01 * w_a),
        layer_change("down_blocks.0.b", w_a, 1.03 * w_a),
        layer_change("up_blocks.1.a", w_a, w_a.clone()),
    ]
    summary = summarize(rows)
    down = summary["blocks"]["down_blocks.0"]
    assert down["layers"] == 2
    assert down["norm_change"]["mean"] == pytest.approx(0.02)
    assert down["norm_change"]["std"] == pytest.approx(0.01)
    up = summary["blocks"]["up_blocks.1"]
    assert up["identical_layers"] == 1 and up["direction_norm_ratio"] is None  # 0 / 0 is not a number
    json.dumps(summary, allow_nan=True)


# ----------------------------------------------------------------------------- on tiny diffusers dirs
@pytest.fixture(scope="module")
def lorad_student(tiny_sd_dir, tmp_path_factory):
    """A merged WaDi export of the tiny teacher with a random nonzero LoRaD rotation: zero norm change."""
    from wadi.distill.module import WaDiModule
    from wadi.export import export_merged
    from wadi.testing import tiny_backbone_config

    torch.manual_seed(0)
    module = WaDiModule(tiny_backbone_config(tiny_sd_dir, "unet"), rank=4, fake_rank=2)
    for name, p in module.denoiser.model.named_parameters():
        if name.endswith("lorad.generator.lorad_A"):
            p.data.normal_(0, 0.05)
    return export_merged(module, tmp_path_factory.mktemp("lorad_student") / "export")


def test_weights_cli_on_a_lorad_student(tiny_sd_dir, lorad_student, tmp_path, capsys):
    from safetensors.torch import load_file

    from wadi.analysis.compare import DenoiserWeights
    from wadi.analyze import main

    out = tmp_path / "analysis"
    main(["weights", f"a={tiny_sd_dir}", f"b={lorad_student}", f"out={out}"])
    assert "norms unchanged (to float precision)" in capsys.readouterr().out
    result = json.loads((out / "summary.json").read_text())
    overall = result["summary"]["overall"]
    rows = {r["name"]: r for r in result["layers"]}
    # every nn.Linear of the U-Net; the generator's targets rotate, the time embedding is untouched
    assert len(rows) == len(DenoiserWeights(tiny_sd_dir).linear_names)
    assert rows["time_embedding.linear_1"]["identical"] is True
    assert rows["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"]["angle"] > 1e-3
    assert overall["norm_change"]["mean"] == 0  # LoRaD: direction only; fp32 rounding of the norms reads as 0
    assert overall["angle"]["mean"] > 1e-3
    assert overall["direction_norm_ratio"] is None  # not a 3e6x ratio of rounding
    assert set(result["summary"]["blocks"]) >= {"down_blocks.0", "mid_block", "up_blocks.1", "time_embedding"}
    assert 0 < overall["energy"]["0.1"] <= overall["energy"]["0.3"] <= overall["energy"]["0.5"] <= 1
    assert (out / "blocks.png").stat().st_size > 0 and (out / "svd_energy.png").stat().st_size > 0

    # swaps: full copies of b; only linear weights differ, each matching its recombination
    a_w, b_w = DenoiserWeights(tiny_sd_dir), DenoiserWeights(lorad_student)
    norms = DenoiserWeights(out / "swap_teacher_norms")
    dirs = DenoiserWeights(out / "swap_teacher_directions")
    assert (out / "swap_teacher_norms" / "wadi_export.json").is_file()  # still a one-step student export
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert torch.equal(norms[layer], recombine(b_w[layer], a_w[layer]))
    # LoRaD kept every norm, so the teacher's directions with the student's norms is the teacher (to rounding)
    torch.testing.assert_close(dirs[layer], a_w[layer], rtol=1e-5, atol=1e-6)
    b_state = load_file(str(b_w.files[0]))
    swapped = load_file(str(dirs.files[0]))
    linear_keys = {f"{n}.weight" for n in b_w.linear_names}
    assert all(torch.equal(swapped[k], v) for k, v in b_state.items() if k not in linear_keys)
    assert not torch.equal(swapped[f"{layer}.weight"], b_state[f"{layer}.weight"])


def test_weights_of_a_model_against_itself(tiny_sd_dir, tmp_path):
    from wadi.analysis.compare import analyze_weights

    result = analyze_weights(tiny_sd_dir, tiny_sd_dir, tmp_path, blocks=["mid_block"], svd=False, plots=False)
    overall = result["summary"]["overall"]
    assert overall["identical_layers"] == overall["layers"] > 0
    assert all(r["block"] == "mid_block" for r in result["layers"])
    for name in ("swap_teacher_norms", "swap_teacher_directions"):  # the limiting case: exact copies
        a = DenoiserWeightsFiles(tiny_sd_dir)
        b = DenoiserWeightsFiles(tmp_path / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def DenoiserWeightsFiles(root):
    from safetensors.torch import load_file

    from wadi.analysis.compare import weight_files

    out = {}
    for f in weight_files(root / "unet"):
        out.update(load_file(str(f)))
    return out


def test_weights_needs_a_teacher_for_a_dir(tiny_sd_dir, tmp_path):
    from wadi.analysis.compare import analyze_weights

    with pytest.raises(ValueError, match="teacher `a` is required"):
        analyze_weights(None, tiny_sd_dir, tmp_path)
    with pytest.raises(FileNotFoundError, match="student not found"):
        analyze_weights(tiny_sd_dir, tmp_path / "nope", tmp_path)


def test_weights_of_a_checkpoint_default_to_its_teacher(tiny_sd_dir, tmp_path):
    """b = a wadi .ckpt: exported (generator merged) first; a defaults to the teacher it was trained from."""
    from wadi.analysis.compare import analyze_weights
    from wadi.distill.module import WaDiModule
    from wadi.testing import tiny_backbone_config

    cfg = tiny_backbone_config(tiny_sd_dir, "unet")
    torch.manual_seed(1)
    module = WaDiModule(cfg, rank=4, fake_rank=2)
    module.run_config = {
        "module": {"_target_": "wadi.distill.module.WaDiModule", "backbone": cfg, "rank": 4, "fake_rank": 2}
    }
    for name, p in module.denoiser.model.named_parameters():
        if name.endswith("lorad.generator.lorad_A"):
            p.data.normal_(0, 0.05)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "last.ckpt")

    result = analyze_weights(
        None, tmp_path / "last.ckpt", tmp_path / "out", swap=False, svd=False, plots=False
    )
    assert result["a"] == str(tiny_sd_dir) and (tmp_path / "out" / "student" / "wadi_export.json").is_file()
    overall = result["summary"]["overall"]
    assert overall["norm_change"]["mean"] < 1e-6 and overall["angle"]["mean"] > 1e-3
