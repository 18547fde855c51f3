"""torch.compile where it pays, measured in experiments/bench (issue 6).

Whole-model graphs with static shapes, in three places:
- sampling: the denoiser (merged export, or the generator adapter) and the VAE decoder, whole-graph.
  On one H100 at batch 32 this is 1.96x stock diffusers' one-step throughput for ~90 s of warm-up;
- training, `compile=true`: the no-grad CFG passes of the teacher and the fake score inside the generator
  step (`Denoiser.cfg`), whole-graph, one graph per role: 1.11x the SD1.5 step (479 -> 433 ms) for ~100 s
  of warm-up. It paid nothing (0.99x) while the step was bound by the host issuing per-layer rotations;
  it pays since those are batched (`wadi.adapters.prerotate`).
- training, `compile=all`: the generator and fake-score passes with gradients too, through the same
  compiled model (one more graph per training role; AOTAutograd compiles its backward): 1.30x the eager
  SD1.5 step (478 -> 367 ms) and 2.9 GiB less peak memory, for ~5.6 min of compilation. Regional
  compilation of every block for every role had not finished in 8 minutes (experiments/bench/RESULTS.md).

Every training speed lever is one frozen `SpeedOptions` given to the Denoiser (`Denoiser.set_speed`), which
applies it where it is used: compiled graphs, checkpointed blocks, the base's compute dtype, and how each
pass builds the adapters' W'.

Compiled graphs take parameters as inputs, so adapter updates never trigger a recompile; a new batch
size or role does (once), which is why the sampler pads its last batch.

`cuda_graphs=true` (issue 16, item 7: the toy lab's step is bound by the host, ~10k aten ops a step,
experiments/fastlab/NOTES.md) compiles the same graphs with mode="reduce-overhead": inductor's cudagraph trees
record each compiled pass (and AOTAutograd's backward under `compile=all`) once and replay it with one launch;
`WaDiModule.training_step` marks each training step's start (`torch.compiler.cudagraph_mark_step_begin`),
so a step's graph outputs may be overwritten by the next step, never within one. A graphed pass builds its
adapters' W' inside the graph (traced, fused by inductor) instead of before it (`wadi.adapters.prerotate`):
eager, they would be the largest host cost left, and graph inputs copied at every replay. CUDA only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# The `compile` key of a training run: off, the no-grad CFG passes (true), or every VSD pass (all).
COMPILE_CHOICES = (False, True, "all")
# One static-shape graph per module; fullgraph: a graph break is an error, not a silent slowdown.
STATIC = {"fullgraph": True, "dynamic": False}
# Graphs a compiled denoiser adds per `compile` value: a teacher and a fake-score CFG graph (true), and
# the generator's and the fake score's with gradients too (all).
_GRAPHS = {False: 0, True: 2, "all": 4}


@dataclass(frozen=True)
class SpeedOptions:
    """How a Denoiser runs its passes; none of these changes the math (experiments/bench measures each).

    compile: False; True: the no-grad CFG passes (teacher, fake score) through one compiled graph per role;
        "all": the passes with gradients (generator, fake score) too.
    compile_backend: torch.compile's backend ("aot_eager" traces without inductor: debugging, CPU tests).
    fused_rotation: build the adapters' W' with the fused rotation (one autograd node, Triton on CUDA);
        False: the plain torch formula (benchmarks, debugging).
    group_rotations: build every adapted layer's W' at the start of a pass, batched over same-shape layers
        (checkpointed blocks recompute with the same W'); off under FSDP, whose weights are whole only
        inside a block.
    gradient_checkpointing: recompute every block in backward, under the role that ran its forward.
    compute_dtype: run the base natively in this dtype with autocast off (a bf16 base: autocast would run
        every norm in float32 and round-trip activations through memory); None: the caller's autocast.
    cuda_graphs: replay the compiled passes as CUDA graphs (torch.compile mode="reduce-overhead"); needs
        `compile` true or all, the inductor backend and a CUDA device.
    """

    compile: bool | str = False
    compile_backend: str | Callable = "inductor"
    fused_rotation: bool = True
    group_rotations: bool = True
    gradient_checkpointing: bool = False
    compute_dtype: torch.dtype | None = None
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(
                f"compile must be false, true (the no-grad teacher / fake-score passes) or all (every VSD "
                f"pass, with gradients too), got {self.compile!r}"
            )
        if self.compile == "all" and self.gradient_checkpointing:
            raise ValueError(
                "compile=all with gradient_checkpointing=true is not supported (checkpointed blocks inside "
                "the compiled graph are untested); use compile=all for speed or gradient_checkpointing=true "
                "for memory"
            )
        if not isinstance(self.cuda_graphs, bool):
            raise ValueError(f"cuda_graphs must be true or false, got {self.cuda_graphs!r}")
        if self.cuda_graphs and not self.compile:
            raise ValueError(
                "cuda_graphs=true replays the compiled VSD passes as CUDA graphs, and compile=false compiles "
                "none: set compile=all (every pass, the fast lab) or compile=true (the no-grad CFG passes)"
            )
        if self.cuda_graphs and self.compile_backend != "inductor":
            raise ValueError(
                f"cuda_graphs=true needs compile_backend=inductor (its cudagraph trees), got "
                f"{self.compile_backend!r}"
            )

    @property
    def compile_mode(self) -> str | None:
        """torch.compile's mode for the passes: "reduce-overhead" (CUDA graphs) or None (its default)."""
        return "reduce-overhead" if self.cuda_graphs else None

    @property
    def graphs(self) -> int:
        """How many compiled graphs these options make a denoiser trace."""
        return _GRAPHS[self.compile]


def make_room(graphs: int) -> None:
    """Raise dynamo's per-code-object graph limit by the graphs one more compiled module will add.

    Every denoiser of a class shares its `forward` code object, and dynamo counts graphs per code object,
    not per module: the jobs of an in-process Hydra multirun (and tests) each add their own graphs, and at
    the default limit (8) the third `compile=all` job would fail (fullgraph makes the limit an error).
    """
    config = torch._dynamo.config
    config.recompile_limit += graphs


def compile_sampler(backbone, mode: str | None = None, backend: str | Callable = "inductor") -> None:
    """Compile `backbone`'s denoiser and VAE decoder in place for one-step sampling.

    `mode="reduce-overhead"` adds CUDA graphs; at batch 32 on an H100 they bought nothing measurable
    (1.98x vs 1.96x stock), so the default is plain inductor.
    """
    make_room(1)  # one more graph on each of two code objects, the denoiser's and the decoder's
    backbone.denoiser.model.compile(mode=mode, backend=backend, **STATIC)
    if backbone.vae is not None:
        backbone.vae.decoder.compile(mode=mode, backend=backend, **STATIC)


def compile_passes(
    model: nn.Module, backend: str | Callable, graphs: int, mode: str | None = None
) -> nn.Module:
    """A whole-graph compiled `model` for a denoiser's VSD passes, making room for its `graphs` graphs.

    Lazy: nothing is traced before the first call. `Denoiser.set_speed` calls it. `mode`: torch.compile's
    ("reduce-overhead": CUDA graphs; `SpeedOptions.compile_mode`).
    """
    make_room(graphs)
    return torch.compile(model, backend=backend, mode=mode, **STATIC)


def check_cuda_graphs_device(speed: SpeedOptions, device: torch.device) -> None:
    """Refuse `cuda_graphs=true` on a device without CUDA graphs, naming the device and the way out."""
    if speed.cuda_graphs and torch.device(device).type != "cuda":
        from wadi.config import ConfigError

        raise ConfigError(
            f"cuda_graphs=true replays the compiled passes as CUDA graphs, which need a CUDA device; this run "
            f"trains on {torch.device(device).type}. Drop cuda_graphs=true (or train on a GPU: trainer.accelerator=gpu)"
        )
