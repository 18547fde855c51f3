"""SwD's scale-wise student (wadi.distill.swd): the resizing and re-noising math, the chain, the training input,
the schedule's validation."""

from __future__ import annotations

import math

import pytest
import torch

from wadi.config import ConfigError
from wadi.diffusion import add_noise
from wadi.distill.swd import (
    ScaleWiseStudent,
    default_scales,
    default_timesteps,
    downscale,
    student_from_info,
    training_input,
    upscale,
    upscale_and_renoise,
)

AC = torch.linspace(0.9999, 0.005, 1000)  # a decreasing abar schedule


def _cubic(x: float, a: float = -0.75) -> float:
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _bicubic_direct(img: torch.Tensor, out: int) -> torch.Tensor:
    """Keys' cubic convolution (a = -0.75, half-pixel centres, clamped borders), separable, written out."""
    n = img.shape[-1]

    def weights(i: int) -> list[tuple[int, float]]:
        src = (i + 0.5) * n / out - 0.5
        base = math.floor(src)
        return [(min(max(base + k, 0), n - 1), _cubic(src - (base + k))) for k in (-1, 0, 1, 2)]

    res = torch.zeros(out, out, dtype=torch.float64)
    for i in range(out):
        for j in range(out):
            res[i, j] = sum(wy * wx * float(img[y, x]) for y, wy in weights(i) for x, wx in weights(j))
    return res


def test_upscale_is_bicubic_and_renoise_is_the_forward_process():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    up = upscale(x0, 6)
    assert torch.allclose(up[0, 0], _bicubic_direct(x0[0, 0], 6), atol=1e-10)
    noise = torch.randn(1, 1, 6, 6, generator=g, dtype=torch.float64)
    t = 600
    abar = float(AC[t])
    direct = math.sqrt(abar) * _bicubic_direct(x0[0, 0], 6) + math.sqrt(1 - abar) * noise[0, 0]
    got = upscale_and_renoise(x0, 6, noise, AC.double(), t)
    assert torch.allclose(got[0, 0], direct, atol=1e-6)
    assert upscale(x0, 4) is x0 and downscale(x0, 4) is x0  # the same size: no resampling at all


def test_training_input_downscales_then_upscales_then_noises():
    g = torch.Generator().manual_seed(1)
    real = torch.randn(2, 4, 8, 8, generator=g)
    noise = torch.randn(2, 4, 6, 6, generator=g)
    prev = torch.nn.functional.avg_pool2d(real, 2)  # area 8 -> 4 is 2x2 averaging
    t = torch.full((2,), 300, dtype=torch.long)
    direct = add_noise(torch.nn.functional.interpolate(prev, size=(6, 6), mode="bicubic"), noise, AC, t)
    assert torch.allclose(training_input(real, 4, 6, noise, AC, 300), direct, atol=1e-6)


class _Linear(torch.nn.Module):
    """A stand-in denoiser: eps = 0.5 x + t/1000 (records the sizes and timesteps it sees)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, int]] = []

    def forward(self, x, t, cond, adapter=None):
        self.calls.append((x.shape[-1], int(t[0])))
        return 0.5 * x + t.float().view(-1, 1, 1, 1) / 1000


def _x0(x, eps, t):
    abar = AC[t]
    return (x - (1 - abar).sqrt() * eps) / abar.sqrt()


def test_one_scale_at_full_size_is_a_few_step_student():
    student = ScaleWiseStudent([8, 8, 8], [999, 600, 300], latent_size=8)
    z = torch.randn(2, *student.noise_shape((4, 8, 8)), generator=torch.Generator().manual_seed(2))
    den = _Linear()
    got = student.generate(den, z, None, AC, "generator", None)
    # the few-step student written out: predict x0, re-noise it with fresh noise at the next t, predict again
    x, x0 = z[:, 0], None
    for k, t in enumerate([999, 600, 300]):
        if k:
            x = math.sqrt(float(AC[t])) * x0 + math.sqrt(1 - float(AC[t])) * z[:, k]
        x0 = _x0(x, 0.5 * x + t / 1000, t)
    assert torch.allclose(got, x0, atol=1e-5)
    assert den.calls == [(8, 999), (8, 600), (8, 300)]


def test_the_chain_grows_the_sample_and_uses_alpha_T_at_T():
    student = ScaleWiseStudent([4, 6, 8], [999, 500, 250], latent_size=8)
    z = torch.randn(1, 3, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    den = _Linear()
    trajectory = []
    out = student.generate(den, z, None, AC, "generator", 0.2, trajectory=trajectory)
    assert den.calls == [(4, 999), (6, 500), (8, 250)] and out.shape == (1, 4, 8, 8)
    assert [tuple(x.shape[-2:]) for x in trajectory] == [(8, 8)] * 3
    x = z[:, 0, :, :4, :4]
    first = (x - math.sqrt(1 - 0.04) * (0.5 * x + 0.999)) / 0.2  # alpha_T = 0.2 overrides abar_T at t = T
    x = upscale_and_renoise(first, 6, z[:, 1, :, :6, :6], AC, 500)
    x0 = _x0(x, 0.5 * x + 0.5, 500)
    x = upscale_and_renoise(x0, 8, z[:, 2], AC, 250)
    assert torch.allclose(out, _x0(x, 0.5 * x + 0.25, 250), atol=1e-5)


def test_training_runs_one_scale_per_step_round_robin():
    student = ScaleWiseStudent([4, 6, 8], [999, 500, 250], latent_size=8)
    z = torch.randn(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    real = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    for step, (size, t) in zip(range(4), [(4, 999), (6, 500), (8, 250), (4, 999)], strict=True):
        den = _Linear()
        x0 = student.generate(den, z, None, AC, "generator", None, batch={"latents": real}, step=step)
        assert den.calls == [(size, t)] and x0.shape == (2, 4, size, size)
    den = _Linear()
    x0 = student.generate(den, z, None, AC, "generator", None, batch={"latents": real}, step=2)
    x = training_input(real, 6, 8, z[:, 2], AC, 250)
    assert torch.allclose(x0, _x0(x, 0.5 * x + 0.25, 250), atol=1e-5)
    with pytest.raises(ValueError, match="real latents"):
        student.generate(_Linear(), z, None, AC, "generator", None, batch={}, step=1)


def test_defaults_follow_the_official_ratios_and_sigmas():
    assert default_scales(16) == [8, 10, 12, 16]
    assert default_scales(64) == [32, 40, 48, 64]
    assert default_scales(32, multiple=2) == [16, 20, 24, 32]
    from diffusers import DDPMScheduler

    ac = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod
    ts = default_timesteps(ac)
    assert ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:], strict=False))
    for t, sigma in zip(ts[1:], (0.896, 0.737, 0.602), strict=True):  # SNR matched within one step
        snr = float(ac[t] / (1 - ac[t]))
        assert abs(math.log(snr) - 2 * math.log((1 - sigma) / sigma)) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scales": [8, 6, 16]}, r"swd.scales=\[8, 6, 16\].*6 follows 8"),
        ({"scales": [8, 12]}, r"last size 12 must be the backbone's latent size 16"),
        ({"scales": [8, 16], "timesteps": [500, 700]}, r"swd.timesteps=\[500, 700\].*strictly decreasing"),
        ({"scales": [8, 16], "timesteps": [999]}, r"one timestep per scale"),
        (
            {"scales": [7, 16], "backbone": {"kind": "pixart", "name": "p"}},
            r"size 7 is not a multiple of PixArt's patch",
        ),
        (
            {
                "scales": [1, 16],
                "backbone": {"kind": "unet", "name": "u", "arch_config": "conf/arch/sd15_unet.json"},
            },
            r"size 1 is not at least 8",
        ),
    ],
)
def test_bad_schedules_are_refused_naming_the_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ScaleWiseStudent(latent_size=16, **kwargs)


def test_export_info_round_trips():
    student = ScaleWiseStudent(None, None, latent_size=16)
    info = student.export_info(AC)
    again = student_from_info(info)
    assert (again.scales, again.timesteps) == (student.scales, student.resolved_timesteps(AC))


class _RecordingScores:
    """A denoiser stand-in for VSD's two score passes: eps = 0, records the timesteps."""

    def __init__(self):
        self.ts: list[int] = []

    def cfg(self, x_t, t, cond, uncond, scale, adapter):
        self.ts += t.tolist()
        return torch.zeros_like(x_t)


def test_dmd_noise_is_capped_at_the_trained_scales_timestep():
    from wadi.distill.swd import ScaleWiseDMD

    student = ScaleWiseStudent([4, 6, 8], [999, 500, 250], latent_size=8)
    ctx = type("Ctx", (), {})()
    ctx.student, ctx.alphas_cumprod, ctx.device = student, AC, torch.device("cpu")
    ctx.randn = lambda shape, rng: torch.randn(shape, generator=rng)
    ctx.embed_dtype = lambda: torch.float32
    ctx.fake_score_adapter = "fake_score"
    x0 = torch.randn(64, 4, 6, 6)
    for cap, step, bound in ((True, 1, 500), (True, 2, 250), (True, 3, 980), (False, 2, 980)):
        ctx.denoiser = _RecordingScores()
        term = ScaleWiseDMD({"gradient": "dmd"}, cap=cap)
        term.generator_loss(ctx, x0, None, None, torch.Generator().manual_seed(0), batch={}, step=step)
        assert max(ctx.denoiser.ts) <= bound and min(ctx.denoiser.ts) >= 20
        assert max(ctx.denoiser.ts) > bound - 100  # drawn up to the cap, not below it
