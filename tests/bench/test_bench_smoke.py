"""The benchmarks end to end on tiny models (CPU). The fused rotation they measure: tests/adapters."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def load_bench():
    import experiments.bench.bench_step as bench

    return bench


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


@pytest.mark.slow
def test_scaling_bench_runs_two_processes_and_reports_efficiency(tmp_path):
    """The weak-scaling runner end to end with 2 CPU processes (gloo): one row per point, efficiency vs 1."""
    cmd = [sys.executable, "-m", "experiments.bench.bench_scaling", "--arch", "tiny_sd", "--device", "cpu"]
    cmd += ["--devices", "1", "2"]
    cmd += ["--strategies", "ddp", "--batch", "2", "--warmup", "1", "--steps", "2", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "scaling.jsonl").read_text().splitlines()]
    assert [(r["strategy"], r["devices"]) for r in rows] == [("ddp", 1), ("ddp", 2)], out.stderr[-2000:]
    assert rows[1]["img_per_s"] == pytest.approx(2 * 2 / (rows[1]["step_ms"] / 1e3))  # global: 2 ranks x 2
    assert "| tiny_sd | ddp | False | 2 |" in out.stdout
