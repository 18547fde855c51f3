"""Analysis tools from the papers: weight norm vs direction (WaDi), x0 trajectories and control transfer
(diversity distillation): the math (weights), reading and comparing models (compare), plots, trajectories,
LoRA transfer (transfer)."""

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
    unit_rows,
)

__all__ = [
    "angle_change",
    "block_of",
    "direction_residual",
    "energy_at",
    "energy_curve",
    "layer_change",
    "norm_change",
    "recombine",
    "row_norms",
    "summarize",
    "unit_rows",
]
