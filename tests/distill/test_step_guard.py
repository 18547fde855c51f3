"""StepGuard (wadi.distill.guards): one host sync per training step with a fused optimizer, same weights as before.

CPU has fused AdamW with `found_inf`, so the device-side skip (the GPU default) is tested here.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from wadi.distill.guards import NonFiniteError, StepGuard, _nonfinite


class SyncCounter(TorchDispatchMode):
    """Counts `_local_scalar_dense` (`.item()`, `bool(t)`, `.tolist()`): a host sync on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


def test_nonfinite_flag_equals_not_isfinite():
    values = [0.0, -0.0, 1e-45, 5.0, -3.4e38, 3.4e38, float("inf"), float("-inf"), float("nan")]
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        x = torch.tensor(values, dtype=torch.float64).to(dtype)
        assert torch.equal(_nonfinite(x), ~torch.isfinite(x))


def _params(seed: int) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(5, 3, generator=g)),
        torch.nn.Parameter(torch.randn(7, generator=g)),
    ]


def _run(params, opt, guard: StepGuard | None, grads: list[list[torch.Tensor]], role="generator", step=0):
    """Optimizer steps on given gradients (clipped at 1), guarded by `guard` or the plain sequence."""
    for gs in grads:
        opt.zero_grad(set_to_none=True)
        for p, g in zip(params, gs):
            p.grad = g.clone()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        if guard is None:
            opt.step()
        else:
            guard.step(opt, norm * 2, norm, params, role, step)


def _grads(seed: int, n: int, bad_at: int | None = None) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = [[torch.randn(5, 3, generator=g), torch.randn(7, generator=g)] for _ in range(n)]
    if bad_at is not None:
        out[bad_at][1][2] = float("nan")
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_finite_steps_equal_the_unguarded_optimizer_bit_for_bit(fused):
    grads = _grads(1, 3)
    ref, ours = _params(0), _params(0)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, fused=fused)
    opt = torch.optim.AdamW(ours, lr=0.1, fused=fused)
    _run(ref, ref_opt, None, grads)
    guard = StepGuard("stop")
    _run(ours, opt, guard, grads)
    assert guard.finish(0) == {"generator": True} and guard.skipped == 0
    for a, b in zip(ref, ours):
        assert torch.equal(a, b)
    for a, b in zip(ref, ours):
        assert torch.equal(ref_opt.state[a]["exp_avg_sq"], opt.state[b]["exp_avg_sq"])
        assert torch.equal(ref_opt.state[a]["step"], opt.state[b]["step"])


def test_fused_optimizer_one_host_sync_per_training_step():
    params = _params(0)
    fake = _params(3)
    opt, opt_f = torch.optim.AdamW(params, lr=0.1, fused=True), torch.optim.AdamW(fake, lr=0.1, fused=True)
    guard = StepGuard("stop")
    with SyncCounter() as counter:
        _run(params, opt, guard, _grads(1, 1))
        _run(fake, opt_f, guard, _grads(2, 2), role="fake_score")
        guard.finish(0)
    assert counter.syncs == 1
    plain = StepGuard("stop")  # a non-fused optimizer: checked before each of its steps
    opt_plain = torch.optim.SGD(params, lr=0.1)  # its own steps sync nothing
    with SyncCounter() as counter:
        _run(params, opt_plain, plain, _grads(1, 2))
        plain.finish(0)
    assert counter.syncs == 3


@pytest.mark.parametrize("fused", [True, False])
def test_skip_leaves_weights_moments_and_step_count_as_if_the_step_never_came(fused):
    grads = _grads(1, 3, bad_at=1)
    ref, ours = _params(0), _params(0)
    ref_opt = torch.optim.AdamW(ref, lr=0.1, fused=fused)
    _run(ref, ref_opt, None, [grads[0], grads[2]])  # the bad step left out
    opt = torch.optim.AdamW(ours, lr=0.1, fused=fused)
    guard = StepGuard("skip")
    for i, gs in enumerate(grads):
        _run(ours, opt, guard, [gs], step=i)
        assert guard.finish(i) == {"generator": i != 1}
    assert guard.skipped == 1
    for a, b in zip(ref, ours):
        assert torch.equal(a, b)
        assert torch.equal(ref_opt.state[a]["exp_avg"], opt.state[b]["exp_avg"])
        assert torch.equal(ref_opt.state[a]["step"], opt.state[b]["step"])


def test_stop_raises_naming_the_role_and_skips_every_later_step_of_the_training_step():
    gen, fake = _params(0), _params(3)
    opt_g, opt_f = torch.optim.AdamW(gen, lr=0.1, fused=True), torch.optim.AdamW(fake, lr=0.1, fused=True)
    _run(gen, opt_g, None, _grads(5, 1))  # optimizer state exists
    _run(fake, opt_f, None, _grads(6, 1))
    before = copy.deepcopy((gen, fake, opt_f.state_dict()))
    guard = StepGuard("stop")
    _run(gen, opt_g, guard, _grads(1, 1, bad_at=0), step=7)
    _run(fake, opt_f, guard, _grads(2, 2), role="fake_score", step=7)  # finite, but after a bad one
    with pytest.raises(NonFiniteError, match="step 7: the generator loss is nan and its gradient norm nan"):
        guard.finish(7)
    for a, b in zip(gen + fake, before[0] + before[1]):
        assert torch.equal(a, b)
    assert torch.equal(opt_f.state_dict()["state"][0]["step"], before[2]["state"][0]["step"])


def test_non_finite_weights_after_a_finite_step_are_refused_at_finish():
    params = [torch.nn.Parameter(torch.full((5, 3), 3e38)), torch.nn.Parameter(torch.full((7,), 3e38))]
    opt = torch.optim.SGD(params, lr=3e38)  # a finite gradient, a step past float32's largest value
    guard = StepGuard("skip")
    _run(params, opt, guard, [[-torch.ones(5, 3), -torch.ones(7)]], step=3)
    with pytest.raises(NonFiniteError, match="step 3: the generator adapter weights became non-finite"):
        guard.finish(3)


def _fit(module, steps: int, callbacks=()) -> None:
    import lightning as L

    batches = [{"prompt": ["a red circle", "a small blue square"]}] * steps
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,  # as the lab runs (experiments/quality/run_sweep.sh)
        enable_model_summary=False,
        callbacks=list(callbacks),
    )
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))


def test_module_steps_sync_once_with_fused_adamw_and_equal_unguarded_steps(tiny_sd_cfg, monkeypatch):
    """The lab's settings: fused AdamW, EMA, two fake-score steps, alpha_T set, no progress bar."""
    from functools import partial

    from wadi.distill.module import WaDiModule

    def make():
        torch.manual_seed(0)
        # alpha_T set as in the lab recipes (null: one more sync a step, reading the schedule's alpha_T)
        return WaDiModule(
            backbone={**tiny_sd_cfg, "alpha_T": 0.15},
            rank=4,
            fake_rank=2,
            ema_decay=0.9,
            vsd={"fake_steps": 2},
            optimizer=partial(torch.optim.AdamW, weight_decay=0.0, fused=True),
        )

    import lightning as L

    syncs = []

    class PerStep(L.Callback):
        """Host syncs from one batch's start to the next's: the step and everything Lightning does after it."""

        counter: SyncCounter | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.on_train_end(trainer, pl_module)
            self.counter = SyncCounter().__enter__()

        def on_train_end(self, trainer, pl_module) -> None:
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                syncs.append(self.counter.syncs)
                self.counter = None

    guarded = make()
    _fit(guarded, 2, [PerStep()])
    assert syncs[0] == 1  # the guards' (the second interval also holds the end of training)
    # The same steps without any guard (the optimizers step unconditionally, the EMA follows each generator step)
    monkeypatch.setattr(StepGuard, "step", lambda self, opt, loss, norm, params, role, step: opt.step())
    monkeypatch.setattr(StepGuard, "finish", lambda self, step: {"generator": True})
    plain = make()
    _fit(plain, 2)
    ours, theirs = guarded.state_dict(), plain.state_dict()
    keys = guarded.adapter_keys()
    assert any(k.startswith("ema.") for k in keys)
    for k in keys:
        assert torch.equal(ours[k], theirs[k]), k
