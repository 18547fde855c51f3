"""Non-finite guards: NaN or inf never reaches an optimizer step, a checkpoint, an export or a sample.

Pure helpers; `WaDiModule` decides per step (`nonfinite=stop|skip`), `on_save_checkpoint`, `wadi.export` and
`load_module_from_checkpoint` refuse non-finite weights with `check_finite`. Hand-written because Lightning's
own guard (`detect_anomaly`) is a debugging tool (slow, per-op) and its checkpointing has no content check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

NONFINITE_CHOICES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf (loss, gradient or weights), or non-finite weights were about to be saved."""


def nonfinite_count(x: Tensor) -> Tensor:
    """How many entries of `x` are NaN or +-inf (a 0-dim tensor: no host sync)."""
    return (~torch.isfinite(x)).sum()


def first_nonfinite(state: Mapping[str, Tensor]) -> tuple[str, int, int] | None:
    """(name, non-finite entries, total entries) of the first tensor holding NaN or inf, else None.

    The counts are gathered on the tensors' device and read back once (one host sync, not one per tensor)."""
    named = [(k, v) for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()]
    if not named:
        return None
    counts = torch.stack([nonfinite_count(v.detach()).cpu() for _, v in named]).tolist()
    for (name, value), bad in zip(named, counts):
        if bad:
            return name, bad, value.numel()
    return None


def check_finite(state: Mapping[str, Tensor], what: str) -> None:
    """Raise NonFiniteError naming `what` and the first non-finite tensor of `state`."""
    found = first_nonfinite(state)
    if found is not None:
        name, bad, total = found
        raise NonFiniteError(
            f"{what}: refused, tensor {name!r} holds {bad} of {total} non-finite values (NaN/inf). Nothing was "
            "written; the last finite checkpoint is kept."
        )


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """True if every tensor is finite: one fused norm over the lot (NaN/inf propagate) and one host sync."""
    tensors = [t.detach() for t in tensors]
    return not tensors or bool(torch.isfinite(torch.stack(torch._foreach_norm(tensors)).sum()))


class StepGuard:
    """The non-finite guard of one training step's optimizer steps, with one host sync per step where it can.

    `step` runs one optimizer step behind the guard. An optimizer with a fused kernel that takes `found_inf`
    (fused Adam / AdamW: the GradScaler mechanism, `_step_supports_amp_scaling`; wadi's default on GPU) gets
    the decision on the device: a non-finite gradient norm sets `found_inf` and the kernel leaves the weights,
    the moments and the step count untouched, so nothing waits for the host. `finish` then reads every
    flag of the step, and the weights' finiteness, in one host sync: `nonfinite=stop` raises (after a non-finite
    gradient every later step of the same training step is skipped too, so the weights are those the
    immediate check left), `skip` counts. Any other optimizer is checked before its step, one sync each, as
    before. `finish` says which roles stepped (the EMA follows the generator only when it did).
    """

    def __init__(self, mode: str) -> None:
        if mode not in NONFINITE_CHOICES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_CHOICES}, got {mode!r}")
        self.mode = mode
        self.skipped = 0  # optimizer steps skipped so far (the module checkpoints it)
        self._reset()

    def _reset(self) -> None:
        self._deferred: list[tuple[str, Tensor, Tensor, Tensor]] = []  # (role, loss, norm, bad) per step
        self._stepped: dict[str, bool] = {}  # role -> stepped, for steps decided at once
        self._params: dict[str, list[Tensor]] = {}  # role -> parameters, for the weights check
        self._bad: Tensor | None = None  # stop: any non-finite gradient so far in this training step

    def step(self, optimizer, loss: Tensor, norm: Tensor, params: list[Tensor], role: str, step: int) -> None:
        """Step `optimizer` unless the gradient norm `norm` (after clipping's all-reduce) is non-finite."""
        self._params[role] = params
        inner = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        bad = _nonfinite(norm.detach())
        if getattr(inner, "_step_supports_amp_scaling", False):
            if self.mode == "stop" and self._bad is not None:
                bad = bad | self._bad
            self._bad = bad if self.mode == "stop" else None
            inner.found_inf = bad.to(torch.float32)
            try:
                optimizer.step()
            finally:
                del inner.found_inf
            self._deferred.append((role, loss.detach(), norm.detach(), bad))
            return
        if bool(bad):  # one host sync per optimizer step
            optimizer.zero_grad(set_to_none=True)
            self._count_or_raise(role, loss, norm, step)
            self._stepped[role] = False
            return
        optimizer.step()
        self._stepped[role] = True

    def finish(self, step: int) -> dict[str, bool]:
        """After the step's last optimizer step: one host sync for every deferred flag and the weights' check;
        raises NonFiniteError (stop) or counts skipped steps (skip). Returns role -> whether its last step ran."""
        deferred, params, stepped = self._deferred, self._params, dict(self._stepped)
        self._reset()
        with torch.no_grad():
            weights = [torch.stack(torch._foreach_norm(ps)).sum() for ps in params.values() if ps]
            flags = [bad.reshape(1) for *_, bad in deferred]
            flags += [_nonfinite(w).reshape(1) for w in weights]
            values = _read_flags(flags)
        for (role, loss, norm, _), bad in zip(deferred, values):
            stepped[role] = not bad
            if bad:
                self._count_or_raise(role, loss, norm, step)
        for role, bad, w in zip([r for r, ps in params.items() if ps], values[len(deferred) :], weights):
            if bad:
                raise NonFiniteError(
                    f"step {step}: the {role} adapter weights became non-finite in an optimizer step with a "
                    f"finite gradient (weight norm {float(w):.4g}): the learning rate or optimizer settings "
                    "overflow. Nothing non-finite is saved; resume from the last checkpoint with a smaller lr."
                )
        return stepped

    def _count_or_raise(self, role: str, loss: Tensor, norm: Tensor, step: int) -> None:
        self.skipped += 1
        if self.mode == "stop":
            raise NonFiniteError(
                f"step {step}: the {role} loss is {float(loss.detach()):.4g} and its gradient "
                f"norm {float(norm):.4g}; nonfinite=stop ended the run before the optimizer step, so the "
                "weights and every checkpoint are finite (resume from the last one with ckpt_path=last). "
                "Lower lr / guidance_scale, or pass nonfinite=skip to skip such steps and count them "
                "(train/nonfinite_skipped)."
            )


def _nonfinite(x: Tensor) -> Tensor:
    """x is NaN or +-inf, as a boolean tensor: x * 0 is 0 for every finite x and NaN otherwise (two kernels;
    torch.isfinite decomposes into four, and its negation adds one)."""
    return (x * 0).ne(0)


def _read_flags(flags: list[Tensor]) -> list[bool]:
    """The values of 1-element boolean tensors, read in one host sync (one `.item()` of their bit mask)."""
    if not flags:
        return []
    stacked = torch.cat(flags).to(torch.int64)
    bits = torch.arange(len(flags), device=stacked.device)
    mask = int((stacked << bits).sum())
    return [bool(mask >> i & 1) for i in range(len(flags))]
