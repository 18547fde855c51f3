"""LoRaD: Low-rank Rotation of weight Direction (WaDi, spec section 2).

For W (out x in), the input columns are split into adjacent pairs (2k, 2k+1). Theta = A @ B gives one
angle per (output row, column pair), wrapped into [-pi, pi), and each pair is rotated in its plane:

    W'[:, 2k]   = W[:, 2k] cos(Theta[:, k]) - W[:, 2k+1] sin(Theta[:, k])
    W'[:, 2k+1] = W[:, 2k] sin(Theta[:, k]) + W[:, 2k+1] cos(Theta[:, k])

Rotations preserve every row's L2 norm, so the adapter changes directions, never norms. A starts at
zero, so a fresh adapter is the identity. The forward does one matmul with W' (no frozen output is
computed and discarded), and `merge()` writes W' into the weight for zero-overhead inference.

Training speed: the forward builds W' through `rotated_weight`, one autograd node whose backward needs only
Theta (not fp32 copies of W, cos and sin), and whose elementwise part is one fused Triton kernel on CUDA
(forward and backward), so the rotation costs one pass over W instead of a dozen. Per layer, that node's
Python and launches still cost ~0.1 ms of host time, enough to leave the GPU waiting; so a denoiser pass
builds every layer's W' up front (`prerotate`), one batched Theta matmul and one kernel per group of
same-shape layers, and each layer picks its W' up (experiments/bench: 1.29x SD1.5, 2.0x PixArt step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.adapters.context import active_adapter, prerotated, use_prerotated

try:  # the fused kernels are an optional speed-up; without Triton the same math runs as torch ops
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None


def wrap_angle(theta: Tensor) -> Tensor:
    """Map angles into [-pi, pi): ((theta + pi) mod 2pi) - pi."""
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def rotate_pairs(weight: Tensor, theta: Tensor) -> Tensor:
    """Rotate adjacent column pairs of `weight` (out, in) by `theta` (out, in/2)."""
    w = weight.unflatten(-1, (-1, 2))  # (out, in/2, 2)
    w_even, w_odd = w.unbind(-1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotated = torch.stack((w_even * cos - w_odd * sin, w_even * sin + w_odd * cos), dim=-1)
    return rotated.flatten(-2)  # (out, in)


def rotate_unwrapped(weight: Tensor, theta: Tensor, dtype: torch.dtype) -> Tensor:
    """W' in `dtype` from W and unwrapped Theta (out, in/2), the arithmetic in float32 (the torch formula)."""
    return rotate_pairs(weight.float(), wrap_angle(theta.float())).to(dtype)


def lorad_weight(weight: Tensor, lorad_A: Tensor, lorad_B: Tensor) -> Tensor:
    """W' for angles Theta = wrap(A @ B); computed in float32, returned in the weight's dtype."""
    return rotate_unwrapped(weight, lorad_A.float() @ lorad_B.float(), weight.dtype)


# ----------------------------------------------------------------- the fused rotation (training forward)
# Set to False to build W' with the plain torch formula of `lorad_weight` (benchmarks, debugging).
FUSED_ROTATION = True

_HALF = (torch.float16, torch.bfloat16)


def _theta(lorad_A: Tensor, lorad_B: Tensor, dtype: torch.dtype) -> Tensor:
    """Theta = A @ B (out, in/2), a matmul in `dtype` when that is half precision, else float32.

    Half-precision Theta is what autocast computed before; it errs by ~2^-9 |Theta|, below the rounding
    of the half-precision W' it feeds. Not wrapped: cos and sin are periodic, the kernels wrap anyway.
    """
    mm = dtype if dtype in _HALF else torch.float32
    with torch.autocast(lorad_A.device.type, enabled=False):
        return lorad_A.to(mm) @ lorad_B.to(mm)


if triton is not None:

    @triton.jit
    def _rotate_fwd_kernel(w_ptr, theta_ptr, out_ptr, n_pairs, BLOCK: tl.constexpr):
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
    def _rotate_bwd_kernel(w_ptr, theta_ptr, grad_ptr, d_theta_ptr, n_pairs, BLOCK: tl.constexpr):
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


_BLOCK = 1024


def _use_triton(*tensors: Tensor) -> bool:
    return triton is not None and all(t.is_cuda and t.is_contiguous() for t in tensors)


def _rotate(weight: Tensor, theta: Tensor, dtype: torch.dtype) -> Tensor:
    """W' in `dtype` from W and unwrapped Theta; the arithmetic in float32."""
    if _use_triton(weight, theta):
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
        n_pairs = theta.numel()
        _rotate_fwd_kernel[(triton.cdiv(n_pairs, _BLOCK),)](weight, theta, out, n_pairs, BLOCK=_BLOCK)
        return out
    return rotate_unwrapped(weight, theta, dtype)


def _rotate_grad(weight: Tensor, theta: Tensor, grad: Tensor) -> Tensor:
    """dL/dTheta (out, in/2) in float32 from dL/dW' (out, in)."""
    grad = grad.contiguous()
    if _use_triton(weight, theta, grad):
        d_theta = torch.empty(theta.shape, dtype=torch.float32, device=theta.device)
        n_pairs = theta.numel()
        _rotate_bwd_kernel[(triton.cdiv(n_pairs, _BLOCK),)](
            weight, theta, grad, d_theta, n_pairs, BLOCK=_BLOCK
        )
        return d_theta
    rotated = rotate_pairs(weight.float(), wrap_angle(theta.float())).unflatten(-1, (-1, 2))
    g = grad.float().unflatten(-1, (-1, 2))
    return g[..., 1] * rotated[..., 0] - g[..., 0] * rotated[..., 1]


def _stacked(weights: tuple[Tensor, ...], lorad_A: Tensor) -> Tensor:
    """The one layer's weight as is, or the (n, out, in) stack of a group's (a transient copy)."""
    return weights[0] if len(weights) == 1 and lorad_A.ndim == 2 else torch.stack(weights)


class _RotatedWeight(torch.autograd.Function):
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
        theta = _theta(lorad_A, lorad_B, dtype)
        ctx.weights = weights  # frozen parameters: references, not copies
        ctx.save_for_backward(lorad_A, lorad_B, theta)
        return _rotate(weight, theta, dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        lorad_A, lorad_B, theta = ctx.saved_tensors
        weights = ctx.weights
        weight = _stacked(weights, lorad_A)
        d_theta = _rotate_grad(weight, theta, grad).to(theta.dtype)  # wrap has derivative 1
        with torch.autocast(grad.device.type, enabled=False):
            d_A = (
                (d_theta @ lorad_B.to(theta.dtype).mT).to(lorad_A.dtype) if ctx.needs_input_grad[0] else None
            )
            d_B = (
                (lorad_A.to(theta.dtype).mT @ d_theta).to(lorad_B.dtype) if ctx.needs_input_grad[1] else None
            )
        return d_A, d_B, None, None


def rotated_weight(
    weight: Tensor, lorad_A: Tensor, lorad_B: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """W' in `dtype` (default: the weight's) for a training forward; the same function as `lorad_weight`.

    Under torch.compile the plain formula is traced instead, so the compiler fuses it into its own kernels.
    """
    dtype = dtype or weight.dtype
    # A trainable W (not in WaDi) also takes the formula: the Function has no gradient for W.
    if torch.compiler.is_compiling() or not FUSED_ROTATION or weight.requires_grad:
        return rotate_unwrapped(weight, _theta(lorad_A, lorad_B, dtype), dtype)
    return _RotatedWeight.apply(lorad_A, lorad_B, dtype, (weight,))


def rotation_groups(layers: list[LoRaDLinear], name: str) -> list[list[LoRaDLinear]]:
    """Adapter `name`'s layers grouped by (out, in, rank, weight dtype, device): each group rotates as one stack."""
    groups: dict[tuple, list[LoRaDLinear]] = {}
    for layer in layers:
        if name in layer.lorad and layer.merged_adapter != name:
            w = layer.base_weight
            key = (w.shape, layer.lorad[name].rank, w.dtype, w.device)
            groups.setdefault(key, []).append(layer)
    return list(groups.values())


def prerotate(groups: list[list[LoRaDLinear]], name: str, dtype: torch.dtype | None) -> dict[int, Tensor]:
    """W' of every layer in `groups`, one batched Theta matmul and one rotation launch per group.

    The eager step is bound by the host issuing kernels (experiments/bench): per layer, the rotation's
    Python and launches cost ~0.1 ms in forward and ~0.14 ms in backward, over ~500 layer-passes a step.
    """
    weights: dict[int, Tensor] = {}
    for group in groups:
        adapters = [layer.lorad[name] for layer in group]
        A = torch.stack([a.lorad_A for a in adapters])
        B = torch.stack([a.lorad_B for a in adapters])
        base = tuple(layer.base_weight for layer in group)
        rotated = _RotatedWeight.apply(A, B, dtype or base[0].dtype, base).unbind(0)
        weights.update((id(layer), w) for layer, w in zip(group, rotated))
    return weights


def rotation_scope(groups: list[list[LoRaDLinear]] | None, name: str | None, dtype: torch.dtype | None):
    """Context for one forward pass under adapter `name`: every layer's W' precomputed in batched launches.

    A no-op (each layer rotates its own weight) without groups, for the teacher, with the plain torch
    formula, or while torch.compile traces (it fuses the formula itself). `dtype`: W''s dtype (the
    matmul's); None: each group's weight dtype.
    """
    if not groups or name is None or not FUSED_ROTATION or torch.compiler.is_compiling():
        return use_prerotated(None)
    return use_prerotated(prerotate(groups, name, dtype))


class LoRaDAdapter(nn.Module):
    """The trainable factors of one adapter on one layer: A (out x r), B (r x in/2)."""

    def __init__(self, out_features: int, in_features: int, rank: int, device=None) -> None:
        super().__init__()
        self.lorad_A = nn.Parameter(torch.zeros(out_features, rank, device=device))
        self.lorad_B = nn.Parameter(torch.empty(rank, in_features // 2, device=device))
        if self.lorad_B.device.type != "meta":
            nn.init.xavier_uniform_(self.lorad_B)

    @property
    def rank(self) -> int:
        return self.lorad_A.shape[1]


class LoRaDLinear(nn.Linear):
    """A frozen nn.Linear carrying several named LoRaD adapters; `active_adapter()` picks one per forward.

    Subclassing nn.Linear keeps the base `weight`/`bias` keys of the state dict unchanged, so a merged
    model saves as the plain diffusers model.
    """

    lorad: nn.ModuleDict

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> LoRaDLinear:
        """Wrap an existing nn.Linear, sharing (not copying) its weight and bias."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight = linear.weight
        new.bias = linear.bias
        new.weight.requires_grad_(False)
        if new.bias is not None:
            new.bias.requires_grad_(False)
        return new

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lorad = nn.ModuleDict()
        self.merged_adapter: str | None = None
        self._original_weight: Tensor | None = None
        self.layer_name = ""

    def add_adapter(self, name: str, rank: int) -> None:
        """Attach adapter `name` of rank `rank` (identity at init)."""
        where = self.layer_name or "LoRaDLinear"
        if rank < 1:
            raise ValueError(f"LoRaD rank must be >= 1, got {rank} for adapter {name!r} on layer {where}")
        if self.in_features % 2:
            raise ValueError(
                f"LoRaD needs an even input width: layer {where} has in_features={self.in_features}. "
                "Skip it by adding its name to the adapter's `skip` list."
            )
        if name in self.lorad:
            raise ValueError(f"layer {where} already has an adapter named {name!r}")
        device = self.weight.device
        self.lorad[name] = LoRaDAdapter(self.out_features, self.in_features, rank, device=device)

    @property
    def base_weight(self) -> Tensor:
        """The frozen teacher weight, also while an adapter is merged into `weight`."""
        return self._original_weight if self._original_weight is not None else self.weight

    def adapted_weight(self, name: str) -> Tensor:
        adapter = self.lorad[name]
        return lorad_weight(self.base_weight, adapter.lorad_A, adapter.lorad_B)

    def forward(self, x: Tensor) -> Tensor:
        name = active_adapter()
        # The matmul's dtype: autocast's when it is on (it casts the operands itself), else the input's.
        autocast = torch.is_autocast_enabled(x.device.type)
        dtype = torch.get_autocast_dtype(x.device.type) if autocast else x.dtype
        pre = prerotated(self) if name is not None else None
        if name is not None and name == self.merged_adapter:
            weight = self.weight
        elif pre is not None and pre.dtype == dtype:
            weight = pre
        elif name is not None and name in self.lorad:
            adapter = self.lorad[name]
            weight = rotated_weight(self.base_weight, adapter.lorad_A, adapter.lorad_B, dtype)
        else:
            weight = self.base_weight
        if weight.dtype != dtype and not autocast:
            weight = weight.to(dtype)
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def merge(self, name: str, safe_merge: bool = True) -> None:
        """Write W' of adapter `name` into `weight`; idempotent. The original is kept for `unmerge`."""
        if self.merged_adapter == name:
            return
        if self.merged_adapter is not None:
            raise RuntimeError(
                f"layer {self.layer_name}: adapter {self.merged_adapter!r} is merged; unmerge before merging {name!r}"
            )
        if name not in self.lorad:
            return  # this layer is not a target of that adapter
        merged = self.adapted_weight(name)
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(f"layer {self.layer_name}: merging adapter {name!r} gives non-finite weights")
        self._original_weight = self.weight.detach().clone()
        self.weight.copy_(merged)
        self.merged_adapter = name

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original weight bit for bit; idempotent."""
        if self.merged_adapter is None:
            return
        self.weight.copy_(self._original_weight)
        self._original_weight = None
        self.merged_adapter = None

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{k}:r{v.rank}" for k, v in self.lorad.items())
        return f"{super().extra_repr()}, lorad=[{adapters}]"
