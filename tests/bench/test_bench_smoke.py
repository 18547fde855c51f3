"""The step benchmark end to end on tiny models (CPU), and the fused LoRaD rotation it measures."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import wadi.adapters.lorad as lorad

BENCH = Path(__file__).resolve().parents[2] / "experiments" / "bench" / "bench_step.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_step"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bench_runs_wadi_and_reference_on_tiny_models(tmp_path, capsys):
    bench = load_bench()
    argv = ["--plan", "tiny_pixart:ref,wadi+fadam", "--batch", "2", "--warmup", "1", "--steps", "2"]
    rows = bench.main([*argv, "--device", "cpu", "--out", str(tmp_path)])
    assert [r["variant"] for r in rows] == ["ref", "wadi+fadam"], rows
    for r in rows:
        assert "error" not in r, r
        assert r["img_per_s"] > 0 and r["trainable"] > 0
        assert torch.isfinite(torch.tensor([r["loss_generator"], r["loss_fake_score"]])).all()
    assert rows[0]["trainable"] == rows[1]["trainable"]  # both sides adapt the same layers at the same ranks
    assert rows[1]["flops_per_step"] > 0  # counted once, on wadi's step
    assert (tmp_path / "results.jsonl").read_text().count("\n") == 2
    assert "| tiny_pixart | wadi+fadam |" in capsys.readouterr().out


def test_gpu_idle_charges_each_gap_to_the_host_op_that_ends_it():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    bench = load_bench()

    def event(name, start, end, device=DeviceType.CPU, parent=None):
        evt = SimpleNamespace(name=name, device_type=device, cpu_parent=parent, cpu_children=[])
        evt.time_range = SimpleNamespace(start=start, end=end)
        if parent is not None:
            parent.cpu_children.append(evt)
        return evt

    step = event("step", 0, 1000)  # host ops; kernels k1..k4 on the GPU, times in microseconds
    launch_a, launch_b = event("launch_a", 100, 200, parent=step), event("launch_b", 500, 600, parent=step)
    optimizer = event("optimizer", 1000, 1100)
    kernels = [
        event("k1", 150, 300, DeviceType.CUDA),
        event("k2", 550, 700, DeviceType.CUDA),  # 250 us after k1: launch_b was issuing it
        event("k3", 705, 900, DeviceType.CUDA),  # 5 us gap: under the 20 us threshold
        event("k4", 1050, 1080, DeviceType.CUDA),  # 150 us: the optimizer's launch
        event("## Call CompiledFxGraph x ##", 0, 2000, DeviceType.CUDA),  # a range, not a kernel
    ]
    prof = SimpleNamespace(events=lambda: [step, launch_a, launch_b, optimizer, *kernels])
    idle = bench.gpu_idle(prof)
    assert idle["gpu_gaps"] == 2
    assert idle["gpu_idle_ms"] == pytest.approx(0.4)
    assert idle["gpu_span_ms"] == pytest.approx(0.93)
    assert idle["idle_by_outer_host_op_ms"] == [("step", 0.25), ("optimizer", 0.15)]
    assert idle["idle_by_inner_host_op_ms"] == [("launch_b", 0.25), ("optimizer", 0.15)]


def test_variant_spec_rejects_unknown_options():
    bench = load_bench()
    assert bench.Variant.parse("wadi+ckpt+fadam").name == "wadi+ckpt+fadam"
    assert bench.Variant.parse("wadi+gradcompile+cudagraphs+layoutopt").has("cudagraphs")
    with pytest.raises(ValueError, match="unknown options"):
        bench.Variant.parse("wadi+turbo")
    with pytest.raises(ValueError, match="must start"):
        bench.Variant.parse("fast")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotated_weight_matches_plain_formula_and_its_gradients(dtype):
    torch.manual_seed(0)
    W = torch.randn(6, 10).to(dtype)
    A = (torch.randn(6, 3) * 2).requires_grad_()  # large angles exercise the wrap
    B = torch.randn(3, 5).requires_grad_()
    G = torch.randn(6, 10)
    got = lorad.rotated_weight(W, A, B, dtype)
    (got.float() * G).sum().backward()
    grads = A.grad.clone(), B.grad.clone()
    A.grad = B.grad = None
    lorad.FUSED_ROTATION = False
    try:
        want = lorad.rotated_weight(W, A, B, dtype)
    finally:
        lorad.FUSED_ROTATION = True
    (want.float() * G).sum().backward()
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), want.float(), atol=tol)
    assert torch.allclose(grads[0], A.grad, rtol=tol, atol=tol) and torch.allclose(
        grads[1], B.grad, rtol=tol, atol=tol
    )
    if dtype == torch.float32:  # and the exact function of spec section 2
        assert torch.allclose(got, lorad.lorad_weight(W, A, B), atol=1e-6)


KERNEL_CHECK = """
import torch, wadi.adapters.lorad as L
torch.manual_seed(0)
for dt in (torch.float32, torch.bfloat16):
    W, theta, g = torch.randn(6, 10).to(dt), torch.randn(6, 5) * 4, torch.randn(6, 10).to(dt)
    out, d = torch.empty(6, 10, dtype=dt), torch.empty(6, 5)
    L._rotate_fwd_kernel[(4,)](W, theta, out, 30, BLOCK=8)
    L._rotate_bwd_kernel[(4,)](W, theta, g, d, 30, BLOCK=8)
    want = L.rotate_pairs(W.float(), L.wrap_angle(theta)).to(dt)
    tol = 1e-5 if dt == torch.float32 else 2e-2
    assert torch.allclose(out.float(), want.float(), atol=tol), (out - want).abs().max()
    assert torch.allclose(d, L._rotate_grad(W, theta, g), atol=1e-4), (d - L._rotate_grad(W, theta, g)).abs().max()
print("ok")
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_in_interpreter_mode():
    """The CUDA kernels' arithmetic and indexing (tail masking too), run by Triton's CPU interpreter."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", KERNEL_CHECK], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


@pytest.mark.slow
def test_scaling_bench_runs_two_processes_and_reports_efficiency(tmp_path):
    """The weak-scaling runner end to end with 2 CPU processes (gloo): one row per point, efficiency vs 1."""
    script = BENCH.parent / "bench_scaling.py"
    cmd = [sys.executable, str(script), "--arch", "tiny_sd", "--device", "cpu", "--devices", "1", "2"]
    cmd += ["--strategies", "ddp", "--batch", "2", "--warmup", "1", "--steps", "2", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=BENCH.parents[2])
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "scaling.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["devices"]) for r in rows] == [("ddp", 1), ("ddp", 2)], out.stderr[-2000:]
    assert rows[1]["img_per_s"] == pytest.approx(2 * 2 / (rows[1]["step_ms"] / 1e3))  # global: 2 ranks x 2
    assert "| tiny_sd | ddp | False | 2 |" in out.stdout
