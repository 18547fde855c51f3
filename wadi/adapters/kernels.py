"""Fused Triton kernels for the LoRaD rotation (CUDA), with the same math as torch ops elsewhere.

`rotate` builds W' from W and an unwrapped Theta in one pass over W; `rotate_grad` gives dL/dTheta from
dL/dW' in one more. Both are elementwise over contiguous column pairs, so they serve one layer (out x in)
and a stack of same-shape layers (n x out x in) alike. Without Triton, or off CUDA, they run the formula
of `wadi.adapters.rotation`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wadi.adapters.rotation import rotate as rotate_formula
from wadi.adapters.rotation import rotate_pairs, wrap_angle

try:  # the fused kernels are an optional speed-up; without Triton the same math runs as torch ops
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


if triton is not None:

    @triton.jit
    def rotate_fwd_kernel(w_ptr, theta_ptr, out_ptr, n_pairs, BLOCK: tl.constexpr):
        p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = p < n_pairs
        th = tl.load(theta_ptr + p, mask=mask, other=0.0).to(tl.float32)
        w_even = tl.load(w_ptr + 2 * p, mask=mask, other=0.0).to(tl.float32)
        w_odd = tl.load(w_ptr + 2 * p + 1, mask=mask, other=0.0).to(tl.float32)
        th = th - 6.283185307179586 * tl.floor((th + 3.141592653589793) / 6.283185307179586)  # wrap
        c, s = tl.cos(th), tl.sin(th)
        tl.store(out_ptr + 2 * p, (w_even * c - w_odd * s).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + 2 * p + 1, (w_even * s + w_odd * c).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def rotate_bwd_kernel(w_ptr, theta_ptr, grad_ptr, d_theta_ptr, n_pairs, BLOCK: tl.constexpr):
        p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = p < n_pairs
        th = tl.load(theta_ptr + p, mask=mask, other=0.0).to(tl.float32)
        w_even = tl.load(w_ptr + 2 * p, mask=mask, other=0.0).to(tl.float32)
        w_odd = tl.load(w_ptr + 2 * p + 1, mask=mask, other=0.0).to(tl.float32)
        g_even = tl.load(grad_ptr + 2 * p, mask=mask, other=0.0).to(tl.float32)
        g_odd = tl.load(grad_ptr + 2 * p + 1, mask=mask, other=0.0).to(tl.float32)
        th = th - 6.283185307179586 * tl.floor((th + 3.141592653589793) / 6.283185307179586)
        c, s = tl.cos(th), tl.sin(th)
        # dW'_even/dTheta = -W'_odd, dW'_odd/dTheta = W'_even
        d_theta = g_odd * (w_even * c - w_odd * s) - g_even * (w_even * s + w_odd * c)
        tl.store(d_theta_ptr + p, d_theta, mask=mask)


BLOCK = 1024


def _use_triton(*tensors: Tensor) -> bool:
    return triton is not None and all(t.is_cuda and t.is_contiguous() for t in tensors)


def rotate(weight: Tensor, theta: Tensor, dtype: torch.dtype) -> Tensor:
    """W' in `dtype` from W and unwrapped Theta; the arithmetic in float32."""
    if _use_triton(weight, theta):
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
        n_pairs = theta.numel()
        rotate_fwd_kernel[(triton.cdiv(n_pairs, BLOCK),)](weight, theta, out, n_pairs, BLOCK=BLOCK)
        return out
    return rotate_formula(weight, theta, dtype)


def rotate_grad(weight: Tensor, theta: Tensor, grad: Tensor) -> Tensor:
    """dL/dTheta (out, in/2) in float32 from dL/dW' (out, in)."""
    grad = grad.contiguous()
    if _use_triton(weight, theta, grad):
        d_theta = torch.empty(theta.shape, dtype=torch.float32, device=theta.device)
        n_pairs = theta.numel()
        rotate_bwd_kernel[(triton.cdiv(n_pairs, BLOCK),)](weight, theta, grad, d_theta, n_pairs, BLOCK=BLOCK)
        return d_theta
    rotated = rotate_pairs(weight.float(), wrap_angle(theta.float())).unflatten(-1, (-1, 2))
    g = grad.float().unflatten(-1, (-1, 2))
    return g[..., 1] * rotated[..., 0] - g[..., 0] * rotated[..., 1]
