"""torch.compile where it pays, measured in experiments/bench (issue 6).

Whole-model graphs with static shapes, in three places:
- sampling: the denoiser (merged export, or the generator adapter) and the VAE decoder, whole-graph.
  On one H100 at batch 32 this is 1.96x stock diffusers' one-step throughput for ~90 s of warm-up;
- training, `compile=true`: the no-grad CFG passes of the teacher and the fake score inside the generator
  step (`Denoiser.cfg`), whole-graph, one graph per role: 1.11x the SD1.5 step (479 -> 433 ms) for ~100 s
  of warm-up. It paid nothing (0.99x) while the step was bound by the host issuing per-layer rotations;
  it pays since those are batched (`wadi.adapters.lorad.prerotate`).
- training, `compile=all`: the generator and fake-score passes with gradients too, through the same
  compiled model (one more graph per training role; AOTAutograd compiles its backward): 1.30x the eager
  SD1.5 step (478 -> 367 ms) and 2.9 GiB less peak memory, for ~5.6 min of compilation. Regional
  compilation of every block for every role had not finished in 8 minutes (experiments/bench/RESULTS.md).

Compiled graphs take parameters as inputs, so adapter updates never trigger a recompile; a new batch
size or role does (once), which is why the sampler pads its last batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# The `compile` key of a training run: off, the no-grad CFG passes (true), or every VSD pass (all).
COMPILE_CHOICES = (False, True, "all")
# One static-shape graph per module; fullgraph: a graph break is an error, not a silent slowdown.
STATIC = {"fullgraph": True, "dynamic": False}


def _make_room(graphs: int) -> None:
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
    _make_room(1)  # one more graph on each of two code objects, the denoiser's and the decoder's
    backbone.denoiser.model.compile(mode=mode, backend=backend, **STATIC)
    if backbone.vae is not None:
        backbone.vae.decoder.compile(mode=mode, backend=backend, **STATIC)


def compile_frozen_passes(denoiser, backend: str | Callable = "inductor") -> None:
    """Route `denoiser.cfg`'s no-grad passes (teacher and fake score inside VSD) through a compiled graph."""
    _make_room(2)  # the teacher's graph and the fake score's
    # Not an nn.Module attribute: registered, it would duplicate every key of the state dict.
    object.__setattr__(denoiser, "compiled_model", torch.compile(denoiser.model, backend=backend, **STATIC))


def compile_training_passes(denoiser, backend: str | Callable = "inductor") -> None:
    """Also route the passes with gradients (generator and fake-score forward+backward) through the graph.

    One more graph per role that trains; AOTAutograd compiles each one's backward with it.
    """
    if denoiser.compiled_model is None:
        compile_frozen_passes(denoiser, backend=backend)
    _make_room(2)  # the generator's graph and the fake score's, with gradients
    denoiser.compile_grad_passes = True
