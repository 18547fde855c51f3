"""W' for a training forward as one autograd node: `rotated_weight` (the same function as `lorad_weight`).

The node's backward needs only Theta (not float32 copies of W, cos and sin), and on CUDA its elementwise
part is one fused kernel each way (`wadi.adapters.kernels`), so the rotation costs one pass over W instead
of a dozen. It takes one layer or a stack of same-shape layers (`wadi.adapters.prerotate`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from wadi.adapters import kernels
from wadi.adapters.context import fused_rotation
from wadi.adapters.rotation import rotate

DType = torch.dtype
_HALF = (torch.float16, torch.bfloat16)


def theta(lorad_A: Tensor, lorad_B: Tensor, dtype: torch.dtype) -> Tensor:
    """Theta = A @ B (out, in/2), a matmul in `dtype` when that is half precision, else float32.

    Half-precision Theta is what autocast computed before; it errs by ~2^-9 |Theta|, below the rounding
    of the half-precision W' it feeds. Not wrapped: cos and sin are periodic, the kernels wrap anyway.
    """
    mm = dtype if dtype in _HALF else torch.float32
    with torch.autocast(lorad_A.device.type, enabled=False):
        return lorad_A.to(mm) @ lorad_B.to(mm)


def _stacked(weights: tuple[Tensor, ...], lorad_A: Tensor) -> Tensor:
    """The one layer's weight as is, or the (n, out, in) stack of a group's (a transient copy)."""
    return weights[0] if len(weights) == 1 and lorad_A.ndim == 2 else torch.stack(weights)


class RotatedWeight(torch.autograd.Function):
    """W' = rotate(W, A @ B) saving only Theta for backward (W is the frozen weight itself).

    Works on one layer (W: out x in) and on a stack of same-shape layers (n x out x in, A: n x out x r,
    B: n x r x in/2): the kernels are elementwise over contiguous pairs, the matmuls batch. A stack is
    passed as the tuple of its layers' weights and stacked here, so no stacked copy outlives the kernel.
    """

    @staticmethod
    def forward(
        ctx, lorad_A: Tensor, lorad_B: Tensor, dtype: torch.dtype, weights: tuple[Tensor, ...]
    ) -> Tensor:
        weight = _stacked(weights, lorad_A)
        angles = theta(lorad_A, lorad_B, dtype)
        ctx.weights = weights  # frozen parameters: references, not copies
        ctx.save_for_backward(lorad_A, lorad_B, angles)
        return kernels.rotate(weight, angles, dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        lorad_A, lorad_B, angles = ctx.saved_tensors
        weight = _stacked(ctx.weights, lorad_A)
        d_theta = kernels.rotate_grad(weight, angles, grad).to(angles.dtype)  # wrap has derivative 1
        with torch.autocast(grad.device.type, enabled=False):
            d_A = (
                (d_theta @ lorad_B.to(angles.dtype).mT).to(lorad_A.dtype) if ctx.needs_input_grad[0] else None
            )
            d_B = (
                (lorad_A.to(angles.dtype).mT @ d_theta).to(lorad_B.dtype) if ctx.needs_input_grad[1] else None
            )
        return d_A, d_B, None, None


def rotated_weight(
    weight: Tensor, lorad_A: Tensor, lorad_B: Tensor, dtype: DType | None = None, fused: bool | None = None
) -> Tensor:
    """W' in `dtype` (default: the weight's) for a training forward; the same function as `lorad_weight`.

    `fused=False` takes the plain torch formula; None: the pass's choice (`SpeedOptions.fused_rotation`,
    bound by the Denoiser; True outside one). Under torch.compile the formula is traced, so the compiler
    fuses it into its own kernels.
    """
    dtype = dtype or weight.dtype
    # A trainable W (not in WaDi) also takes the formula: the Function has no gradient for W.
    # The pass's choice is read last: a traced graph never guards on it.
    if (
        torch.compiler.is_compiling()
        or weight.requires_grad
        or not (fused_rotation() if fused is None else fused)
    ):
        return rotate(weight, theta(lorad_A, lorad_B, dtype), dtype)
    return RotatedWeight.apply(lorad_A, lorad_B, dtype, (weight,))
