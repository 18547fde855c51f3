"""Norm vs direction of weight rows between a teacher (a) and a student (b) (WaDi, spec section 5).

Every function here is pure (tensors in, tensors or numbers out) and works per nn.Linear weight
W (out x in), row i being output unit i's weight vector w_i:

- norm change of row i:      |‖b_i‖ - ‖a_i‖| / ‖a_i‖                       (relative, dimensionless)
- direction change of row i: theta_i = angle(a_i, b_i) in radians, in [0, pi]
                             (also reported: 1 - cos theta_i ~= theta_i^2 / 2 for small angles)

Why the angle: split an update b_i - a_i into its part along a_i and its part across it. To first order the
relative size of the part along a_i is the norm change, and the relative size of the part across it is
theta_i. So "norm change" and "angle" are the same kind of number (a relative perturbation) and their ratio
is the paper's direction/norm ratio (~22x). 1 - cos is second order (theta^2 / 2) and not comparable.

The direction residual of a layer is unit_rows(b) - unit_rows(a); its singular-value energy curve tells
how low-rank the rotation is (paper: 93% of the energy in 30% of the rank).

The swap experiment recombines rows: directions of one model with the row norms of the other.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

DEFAULT_FRACTIONS = (0.1, 0.3, 0.5)


def _pair(w_a: Tensor, w_b: Tensor, name: str = "") -> tuple[Tensor, Tensor]:
    if w_a.ndim != 2 or w_a.shape != w_b.shape:
        where = f" for layer {name}" if name else ""
        raise ValueError(
            f"expected two 2-D weights of one shape{where}, got {tuple(w_a.shape)} and {tuple(w_b.shape)}"
        )
    return w_a.detach().to(torch.float64), w_b.detach().to(torch.float64)


def row_norms(w: Tensor) -> Tensor:
    """‖w_i‖ for every row, (out,)."""
    return torch.linalg.vector_norm(w.to(torch.float64), dim=1)


def unit_rows(w: Tensor) -> Tensor:
    """w_i / ‖w_i‖ (float64); an all-zero row stays zero (its direction is undefined)."""
    w = w.to(torch.float64)
    n = row_norms(w)[:, None]
    return torch.where(n > 0, w / n.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(w))


def norm_change(w_a: Tensor, w_b: Tensor) -> Tensor:
    """|‖b_i‖ - ‖a_i‖| / ‖a_i‖ per row (out,); NaN where a_i = 0 (a relative change is undefined there)."""
    w_a, w_b = _pair(w_a, w_b)
    n_a, n_b = row_norms(w_a), row_norms(w_b)
    return torch.where(n_a > 0, (n_b - n_a).abs() / n_a, torch.full_like(n_a, math.nan))


def angle_change(w_a: Tensor, w_b: Tensor) -> Tensor:
    """theta_i = angle(a_i, b_i) in radians per row (out,); NaN where either row is zero.

    2 atan2(‖u_a - u_b‖, ‖u_a + u_b‖) equals arccos(u_a . u_b) but stays accurate at tiny angles, where
    arccos of a cosine rounded to 1 would lose all digits.
    """
    w_a, w_b = _pair(w_a, w_b)
    u_a, u_b = unit_rows(w_a), unit_rows(w_b)
    theta = 2 * torch.atan2(
        torch.linalg.vector_norm(u_a - u_b, dim=1), torch.linalg.vector_norm(u_a + u_b, dim=1)
    )
    defined = (row_norms(w_a) > 0) & (row_norms(w_b) > 0)
    return torch.where(defined, theta, torch.full_like(theta, math.nan))


def direction_residual(w_a: Tensor, w_b: Tensor) -> Tensor:
    """unit_rows(b) - unit_rows(a), (out, in): what the student changed in direction only."""
    w_a, w_b = _pair(w_a, w_b)
    return unit_rows(w_b) - unit_rows(w_a)


# A direction residual below this Frobenius norm per row is float64 rounding, not a rotation.
RESIDUAL_FLOOR = 1e-10
# A relative row-norm change below this many machine epsilons of the student's stored dtype is the rounding of
# writing the weights (a LoRaD merge keeps every norm, and fp32 storage moves it by ~1e-7): reported as 0, so
# the direction/norm ratio reads "norms unchanged" instead of a 3e6x ratio of rounding. Only the student's (b's)
# dtype counts: the teacher is the reference and reading it rounds nothing, while a float16 teacher's eps would
# put the floor at 1.6% and erase every norm change of the paper's size (0.1%) as "rounding".
NORM_FLOOR_EPS = 16


def norm_floor(*dtypes: torch.dtype) -> float:
    """The relative norm change that is rounding for weights stored in `dtypes` (NORM_FLOOR_EPS eps)."""
    return NORM_FLOOR_EPS * max(torch.finfo(d).eps if d.is_floating_point else 0.0 for d in dtypes)


def energy_curve(matrix: Tensor, floor: float = 0.0) -> Tensor:
    """Cumulative singular-value energy sum_{j<=k} s_j^2 / sum_j s_j^2 for k = 1..rank, (rank,).

    rank = min(out, in). A matrix with ‖M‖_F <= floor * sqrt(rows) has no energy worth distributing
    (all-zero, or rounding noise): returns NaNs.
    """
    s = torch.linalg.svdvals(matrix.to(torch.float64))
    energy = s.square()
    total = energy.sum()
    if total <= (floor**2) * matrix.shape[0]:
        return torch.full_like(energy, math.nan)
    return energy.cumsum(0) / total


def energy_at(curve: Tensor, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> dict[float, float]:
    """Energy within the top ceil(f * rank) singular values, for each fraction f of the rank."""
    rank = curve.shape[0]
    out = {}
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"rank fractions must be in (0, 1], got {f}")
        k = max(1, math.ceil(f * rank - 1e-9))
        out[float(f)] = float(curve[k - 1])
    return out


def resample_curve(curve: Tensor, points: int = 100) -> Tensor:
    """The curve at rank fractions 1/points .. 1 (k = ceil(f * rank)), so layers of any rank can be averaged."""
    rank = curve.shape[0]
    f = torch.arange(1, points + 1, dtype=torch.float64) / points
    k = torch.clamp(torch.ceil(f * rank - 1e-9).long(), 1, rank)
    return curve[k - 1]


def recombine(directions_of: Tensor, norms_of: Tensor) -> Tensor:
    """Rows with the directions of `directions_of` and the row norms of `norms_of` (the swap experiment).

    Computed as directions_of_i * (‖norms_of_i‖ / ‖directions_of_i‖); a row whose two norms are equal is
    returned bit for bit, so recombine(a, a) == a exactly. Zero rows of `directions_of` stay zero.
    Returned in the dtype of `directions_of`.
    """
    d, n = _pair(directions_of, norms_of)
    n_d, n_n = row_norms(d), row_norms(n)
    ratio = torch.where(n_d > 0, n_n / n_d.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(n_d))
    same = n_d == n_n
    out = torch.where(same[:, None], d, d * ratio[:, None])
    return out.to(directions_of.dtype)


def block_of(layer_name: str) -> str:
    """The block a layer belongs to: "down_blocks.1", "mid_block", "transformer_blocks.3", "time_embedding"."""
    parts = layer_name.split(".")
    if len(parts) > 1 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0]


def layer_change(
    name: str,
    w_a: Tensor,
    w_b: Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    svd: bool = True,
    curve_points: int = 100,
) -> dict:
    """Everything the analysis reports for one linear layer (row means; NaN rows are left out).

    Keys: name, block, shape, identical, norm_change (a row's change below `norm_floor` of b's stored dtype is
    rounding and counts as 0), angle, one_minus_cos (row means), and with `svd`:
    energy ({fraction: energy}) and curve (resampled energy curve, a list) of the direction residual,
    None for both when the residual is zero (below RESIDUAL_FLOOR per row: only rounding).
    """
    floor = norm_floor(w_b.dtype)  # the student's storage rounding (see NORM_FLOOR_EPS)
    w_a, w_b = _pair(w_a, w_b, name)
    theta = angle_change(w_a, w_b)
    change = norm_change(w_a, w_b)
    change = torch.where(change < floor, torch.zeros_like(change), change)  # rounding: unchanged (NaN stays)
    row = {
        "name": name,
        "block": block_of(name),
        "shape": list(w_a.shape),
        "identical": bool(torch.equal(w_a, w_b)),
        "norm_change": float(change.nanmean()),
        "angle": float(theta.nanmean()),
        "one_minus_cos": float((1 - torch.cos(theta)).nanmean()),
    }
    if svd:
        curve = energy_curve(direction_residual(w_a, w_b), floor=RESIDUAL_FLOOR)
        zero = bool(torch.isnan(curve).any())
        row["energy"] = None if zero else {str(k): v for k, v in energy_at(curve, fractions).items()}
        row["curve"] = None if zero else resample_curve(curve, curve_points).tolist()
    return row


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    t = torch.tensor([v for v in values if not math.isnan(v)], dtype=torch.float64)
    if t.numel() == 0:
        return {"mean": math.nan, "std": math.nan}
    return {"mean": float(t.mean()), "std": float(t.std(correction=0))}


def _ratio(num: float, den: float) -> float | None:
    """num / den; None when undefined (den = 0 or NaN), so the JSON summary stays standard JSON."""
    if den == 0 or math.isnan(den) or math.isnan(num):
        return None
    return num / den


def _group_stats(rows: Sequence[Mapping]) -> dict:
    norm = _mean_std([r["norm_change"] for r in rows])
    angle = _mean_std([r["angle"] for r in rows])
    out = {
        "layers": len(rows),
        "identical_layers": sum(bool(r["identical"]) for r in rows),
        "norm_change": norm,
        "angle": angle,
        "one_minus_cos": _mean_std([r["one_minus_cos"] for r in rows]),
        "direction_norm_ratio": _ratio(angle["mean"], norm["mean"]),
        "direction_norm_std_ratio": _ratio(angle["std"], norm["std"]),
    }
    energies = [r["energy"] for r in rows if r.get("energy")]
    if energies:
        out["energy"] = {k: _mean_std([e[k] for e in energies])["mean"] for k in energies[0]}
    return out


def summarize(rows: Iterable[Mapping]) -> dict:
    """Mean/std over layers (each layer's row mean counts once), per block and overall.

    direction_norm_ratio = mean angle / mean norm change (the paper's ~22x); energy = the layer-averaged
    energy of the direction residual at each rank fraction (layers with a zero residual left out).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no layers to summarize")
    blocks: dict[str, list[Mapping]] = {}
    for r in rows:
        blocks.setdefault(r["block"], []).append(r)
    curves = [torch.tensor(r["curve"]) for r in rows if r.get("curve")]
    return {
        "overall": _group_stats(rows),
        "blocks": {name: _group_stats(group) for name, group in blocks.items()},
        "mean_energy_curve": torch.stack(curves).mean(0).tolist() if curves else None,
    }
