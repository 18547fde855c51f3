"""The training path of W' (one autograd node, fused Triton kernels) against LoRaD's formula.

On CPU: the node against the plain formula and its gradients, and the kernels in Triton's interpreter.
On a GPU (`-m gpu`): the fused rotation against float64 on a full-size layer, and the grouped (stacked)
path against the per-layer one; this was `experiments/bench/bench_step.py --check`.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from wadi.adapters.function import RotatedWeight, rotated_weight
from wadi.adapters.rotation import lorad_weight, rotate_pairs, wrap_angle


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotated_weight_matches_plain_formula_and_its_gradients(dtype):
    torch.manual_seed(0)
    W = torch.randn(6, 10).to(dtype)
    A = (torch.randn(6, 3) * 2).requires_grad_()  # large angles exercise the wrap
    B = torch.randn(3, 5).requires_grad_()
    G = torch.randn(6, 10)
    got = rotated_weight(W, A, B, dtype)
    (got.float() * G).sum().backward()
    grads = A.grad.clone(), B.grad.clone()
    A.grad = B.grad = None
    want = rotated_weight(W, A, B, dtype, fused=False)
    (want.float() * G).sum().backward()
    assert got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert torch.allclose(got.float(), want.float(), atol=tol)
    assert torch.allclose(grads[0], A.grad, rtol=tol, atol=tol) and torch.allclose(
        grads[1], B.grad, rtol=tol, atol=tol
    )
    if dtype == torch.float32:  # and the exact function of spec section 2
        assert torch.allclose(got, lorad_weight(W, A, B), atol=1e-6)


KERNEL_CHECK = """
import torch
from wadi.adapters import kernels as K
from wadi.adapters.rotation import rotate_pairs, wrap_angle
torch.manual_seed(0)
for dt in (torch.float32, torch.bfloat16):
    W, theta, g = torch.randn(6, 10).to(dt), torch.randn(6, 5) * 4, torch.randn(6, 10).to(dt)
    out, d = torch.empty(6, 10, dtype=dt), torch.empty(6, 5)
    K.rotate_fwd_kernel[(4,)](W, theta, out, 30, BLOCK=8)
    K.rotate_bwd_kernel[(4,)](W, theta, g, d, 30, BLOCK=8)
    want = rotate_pairs(W.float(), wrap_angle(theta)).to(dt)
    tol = 1e-5 if dt == torch.float32 else 2e-2
    assert torch.allclose(out.float(), want.float(), atol=tol), (out - want).abs().max()
    assert torch.allclose(d, K.rotate_grad(W, theta, g), atol=1e-4), (d - K.rotate_grad(W, theta, g)).abs().max()
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


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x.double() - y.double()).norm() / y.double().norm())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_rotation_against_float64_on_a_full_size_layer():
    """bf16 W' and its gradients on 1280 x 5120 at rank 256, fused and plain, against float64 (spec 2).

    On an H100 (experiments/bench/results/2026-11-24b): W' 1.6e-3 relative (bf16 rounding), dA and dB
    2.9e-3, the fused and the torch path alike.
    """
    device = torch.device("cuda")
    torch.manual_seed(0)
    out_f, in_f, r = 1280, 5120, 256
    W = torch.randn(out_f, in_f, device=device).bfloat16()
    A = (torch.randn(out_f, r, device=device) * 0.05).requires_grad_()
    B = torch.nn.init.xavier_uniform_(torch.empty(r, in_f // 2, device=device)).requires_grad_()
    G = torch.randn(out_f, in_f, device=device).bfloat16()
    A64, B64 = A.detach().double().requires_grad_(), B.detach().double().requires_grad_()
    ref_w = rotate_pairs(W.double(), wrap_angle(A64 @ B64))
    (ref_w * G.double()).sum().backward()
    for fused in (True, False):
        A.grad = B.grad = None
        Wr = rotated_weight(W, A, B, torch.bfloat16, fused=fused)
        (Wr.float() * G.float()).sum().backward()
        assert torch.isfinite(Wr).all()
        errors = (_rel(Wr.detach(), ref_w.detach()), _rel(A.grad, A64.grad), _rel(B.grad, B64.grad))
        assert max(errors) < 1e-2, (fused, errors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_grouped_rotation_equals_per_layer_on_gpu():
    """A stack of same-shape layers in one launch gives the per-layer W' and gradients (0.0 in the bench)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    out_f, in_f, r = 1280, 5120, 256
    Ws = [torch.randn(out_f, in_f, device=device).bfloat16() for _ in range(3)]
    As = [(torch.randn(out_f, r, device=device) * 0.05).requires_grad_() for _ in range(3)]
    Bs = [torch.randn(r, in_f // 2, device=device).mul(0.02).requires_grad_() for _ in range(3)]
    Gs = [torch.randn(out_f, in_f, device=device).bfloat16() for _ in range(3)]
    per_layer = [rotated_weight(w, a, b, torch.bfloat16) for w, a, b in zip(Ws, As, Bs)]
    sum((w.float() * g.float()).sum() for w, g in zip(per_layer, Gs)).backward()
    ref_grads = [p.grad.clone() for p in As + Bs]
    for p in As + Bs:
        p.grad = None
    stacked = RotatedWeight.apply(torch.stack(As), torch.stack(Bs), torch.bfloat16, tuple(Ws)).unbind(0)
    sum((w.float() * g.float()).sum() for w, g in zip(stacked, Gs)).backward()
    assert max(_rel(w.detach(), p.detach()) for w, p in zip(stacked, per_layer)) < 1e-6
    assert max(_rel(p.grad, g) for p, g in zip(As + Bs, ref_grads)) < 1e-5
