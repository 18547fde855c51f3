"""Count the host work of one toy VSD training step on CPU, by phase (issue 16, item 7: a fast lab).

The toy step on a GPU is bound by the host: every aten op the step dispatches is host time (Python, the
dispatcher, a kernel launch). This runs the lab recipe (`experiment=toy_gpu` / `toy_pixart_gpu`) through
`wadi.train.train` on CPU at a small batch, with the lab sweep's overrides (experiments/quality/run_sweep.sh),
and reports per training step and per phase:

- ops: aten ops reaching the dispatcher (a TorchDispatchMode counts them); `launch`: those that are not views
  (a view launches no kernel; everything else launches about one on CUDA, a foreach op one per chunk);
  `sync`: `_local_scalar_dense` calls (`.item()`, `bool(t)`, `float(t)`: a host sync on CUDA);
- ms: the phase's exclusive wall time per step in a second, uncounted run (CPU: math included, so it is an
  upper bound on the host part at that batch).

Phases are found by wrapping the functions that run them (`PHASES`); whatever the Lightning loop does
outside `training_step` (fetching the batch, hooks, callbacks, logger) is "lightning loop + data".

`--gpu-like` makes CPU dispatch as CUDA would: foreach kernels allowed on CPU and fused AdamW (what
`optimizer.fused=${wadi_cuda:}` picks on a GPU), so the optimizer's op count is the GPU's.

    python -m experiments.fastlab.count_ops --experiment toy_gpu --batch 4 --steps 4 --gpu-like
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

OUTSIDE = "lightning loop + data"


class Phases:
    """A stack of phase names; the innermost one is charged for ops and exclusive time."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.ops: dict[str, int] = defaultdict(int)
        self.launch: dict[str, int] = defaultdict(int)
        self.sync: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)
        self.by_op: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.active = False
        self._t = time.perf_counter()

    @property
    def current(self) -> str:
        return self.stack[-1] if self.stack else OUTSIDE

    def _charge_time(self) -> None:
        now = time.perf_counter()
        if self.active:
            self.seconds[self.current] += now - self._t
        self._t = now

    @contextlib.contextmanager
    def enter(self, name: str):
        self._charge_time()
        self.stack.append(name)
        try:
            yield
        finally:
            self._charge_time()
            self.stack.pop()


_CURRENT: list[Phases] = []  # the run's Phases; the wrappers, installed once, charge it


def wrap(owner: object, attr: str, name: str | Callable[..., str]) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        label = name(*args, **kwargs) if callable(name) else name
        with _CURRENT[0].enter(label):
            return original(*args, **kwargs)

    setattr(owner, attr, wrapped)


class OpCounter(TorchDispatchMode):
    def __init__(self, phases: Phases) -> None:
        super().__init__()
        self.phases = phases

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        p = self.phases
        if p.active:
            phase = p.current
            p.ops[phase] += 1
            if not func.is_view:
                p.launch[phase] += 1
            if func is torch.ops.aten._local_scalar_dense.default:
                p.sync[phase] += 1
            p.by_op[phase][str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def _cfg_role(self, x_t, t, cond, uncond, scale, adapter) -> str:
    return "teacher CFG pass" if adapter is None else f"{adapter} CFG pass (no grad)"


def _optimize_role(self, optimizer, loss, params, clip, role) -> str:
    return f"guards + glue ({role})"


def install() -> None:
    """Wrap the functions whose time and ops make each phase (once per process)."""
    import lightning.pytorch.core.optimizer as lopt

    from wadi.adapters import function, prerotate
    from wadi.backbones.denoiser import Denoiser
    from wadi.distill import ema, guards, module, student

    M = module.WaDiModule
    wrap(M, "training_step", "training_step: rng, noise, glue")
    wrap(M, "conditioning", "conditioning (prompts -> embeddings)")
    wrap(M, "null_conditioning", "conditioning (prompts -> embeddings)")
    wrap(M, "generator_step", "generator step: VSD glue (t, noise, g, loss)")
    wrap(student.OneStepStudent, "generate", "generator forward")
    wrap(Denoiser, "cfg", _cfg_role)
    wrap(M, "fake_score_step", "fake-score forward + loss")
    wrap(M, "_optimize", _optimize_role)
    wrap(
        M,
        "manual_backward",
        lambda self, loss, *a, **k: f"backward ({_CURRENT[0].current.split('(')[-1][:-1]})",
    )
    wrap(torch.nn.utils, "clip_grad_norm_", "grad clip")
    wrap(lopt.LightningOptimizer, "step", "optimizer step (AdamW)")
    wrap(torch.optim.Optimizer, "zero_grad", "zero_grad")
    wrap(module, "sync_gradients", "zero_grad")
    if hasattr(module, "all_finite"):  # before StepGuard: a weights check after each optimizer step
        wrap(module, "all_finite", "guards: weights finite")
    if hasattr(guards, "StepGuard"):
        wrap(guards.StepGuard, "finish", "guards: end-of-step check (one sync)")
    wrap(ema.EMA, "update", "EMA update")
    # Inside the passes: the adapters' W' built in batched groups before each adapted pass, and its backward.
    wrap(prerotate, "prerotate", "W' groups (prerotate)")
    wrap(function.RotatedWeight, "backward", "W' groups backward")
    wrap(M, "log", "logging (self.log)")


def compose(experiment: str, batch: int, steps: int, run_dir: str, extra: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from wadi.config import CONF_DIR, register_resolvers

    register_resolvers()
    # experiments/quality/run_sweep.sh's overrides, on CPU, evaluation off
    overrides = [
        f"experiment={experiment}",
        f"batch_size={batch}",
        f"max_steps={steps}",
        "logger=csv",
        "~eval",
        "callbacks.checkpoint.every_n_train_steps=100000",
        "callbacks.sample_grid.every_n_steps=100000",
        "~callbacks.progress",
        "+trainer.enable_progress_bar=false",
        "export=false",
        f"run_dir={run_dir}",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def gpu_like() -> None:
    """Dispatch as on CUDA: foreach kernels on CPU (AdamW's default path then takes them)."""
    import torch.utils._foreach_utils as fu

    devices = fu._get_foreach_kernels_supported_devices()
    fu._get_foreach_kernels_supported_devices = lambda: [*devices, "cpu"]
    import torch.optim.optimizer as oo

    oo._get_foreach_kernels_supported_devices = fu._get_foreach_kernels_supported_devices


def run(args, count: bool) -> Phases:
    import lightning as L

    from wadi.train import train

    phases = Phases()
    first = args.skip  # steps 0..skip-1 warm up (optimizer state, lazy groups); the rest are measured

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == first:
                phases._charge_time()
                phases.active = True

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == first + args.steps:  # the last measured step is done
                phases._charge_time()
                phases.active = False

    _CURRENT[:] = [phases]
    steps = args.skip + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        extra = list(args.override)
        if args.gpu_like:
            extra.append("module.optimizer.fused=true")
        cfg = compose(args.experiment, args.batch, steps, tmp, extra)
        import wadi.runs as runs

        original = runs.with_run_checkpoint

        def with_window(callbacks, run_dir, cfg):
            return [*original(callbacks, run_dir, cfg), Window()]

        runs.with_run_checkpoint = with_window
        try:
            with OpCounter(phases) if count else contextlib.nullcontext():
                train(cfg)
        finally:
            runs.with_run_checkpoint = original
    return phases


def report(counted: Phases, timed: Phases, steps: int) -> dict:
    names = sorted(set(counted.ops) | set(timed.seconds), key=lambda k: -counted.ops.get(k, 0))
    rows = []
    for name in names:
        top = sorted(counted.by_op[name].items(), key=lambda kv: -kv[1])[:12]
        rows.append(
            {
                "phase": name,
                "ops": counted.ops.get(name, 0) / steps,
                "launch": counted.launch.get(name, 0) / steps,
                "sync": counted.sync.get(name, 0) / steps,
                "ms": 1e3 * timed.seconds.get(name, 0.0) / steps,
                "top_ops": [(k, v / steps) for k, v in top],
            }
        )
    total = {
        "ops": sum(r["ops"] for r in rows),
        "launch": sum(r["launch"] for r in rows),
        "sync": sum(r["sync"] for r in rows),
        "ms": sum(r["ms"] for r in rows),
    }
    return {"rows": rows, "total": total}


def markdown(result: dict, args) -> str:
    lines = [
        f"`{' '.join(sys.argv[1:]) or args}`: per training step, mean of {args.steps} steps after {args.skip}",
        "",
        "| phase | aten ops | non-view ops | host syncs | ms (CPU, math included) | top ops |",
        "|---|---|---|---|---|---|",
    ]
    for r in [*result["rows"], {"phase": "**total**", **result["total"], "top_ops": []}]:
        top = ", ".join(f"{k} {v:g}" for k, v in r["top_ops"][:4])
        lines.append(
            f"| {r['phase']} | {r['ops']:.0f} | {r['launch']:.0f} | {r['sync']:.0f} | {r['ms']:.1f} | {top} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="toy_gpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="measured steps")
    p.add_argument("--skip", type=int, default=2, help="warm-up steps before the measured ones")
    p.add_argument("--gpu-like", action="store_true", help="foreach kernels on CPU and fused AdamW")
    p.add_argument("--override", action="append", default=[], help="one more Hydra override")
    p.add_argument("--json", default=None, help="write the result here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.gpu_like:
        gpu_like()
    install()
    counted = run(args, count=True)
    timed = run(args, count=False)
    result = report(counted, timed, args.steps)
    print(markdown(result, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
