"""Benchmark one full WaDi (VSD) training step, wadi against the public scripts' structure (issue 6).

wadi's side is its own code path: `WaDiModule` on a prebuilt full-size random-init `Backbone`, driven by a
real `lightning.Trainer` (bf16-mixed, one GPU, no logger or checkpointing), fed synthetic cached text
embeddings. The reference (`reference.py`) runs in the same process on the same batch. Speed does not
depend on weight values, so random weights measure what real checkpoints would.

A variant is a spec string: `ref` or `wadi`, then `+option`s:
  ckpt      gradient checkpointing
  fp32base  keep the frozen base in float32 (WaDiModule(base_dtype="float32")); default: bf16
  autocast  run the bf16 base under autocast (the module's behaviour before native bf16)
  unfused   build W' with the plain torch formula instead of the fused rotation
  fadam     fused AdamW
  cudnn     cudnn.benchmark (conv algorithm autotuning)
  cl        channels_last (U-Net only)
  ungrouped each layer rotates its own weight (wadi's default builds every W' of a pass up front, one
            launch per group of same-shape layers)
  compile   regional torch.compile (one compiled region per ResNet / transformer block / resampler)
  cfgcompile  wadi's `compile=true`: the no-grad teacher / fake-score CFG passes as one compiled graph per role
  gradcompile  wadi's `compile=all`: the passes with gradients (generator, fake score) compiled too
  layoutopt inductor's layout optimization forced on (its heuristic turns it off for the SD U-Net, whose
            up blocks have convs with in_channels >= 2 x out_channels): the compiled graphs run convs NHWC
  cudagraphs  wadi's `cuda_graphs=true`: the compiled graphs replayed as CUDA graphs (inductor's cudagraph
            trees, mode="reduce-overhead"; the module marks each step); needs cfgcompile or gradcompile
  flash     SDPA restricted to the flash-attention backend (default: PyTorch's choice, cuDNN on H100)
  profile   profile one extra step and break its GPU time down by kernel kind and by op + input shapes
`wadi+autocast+unfused` is the module as it was before this benchmark's changes. Without `fadam` the AdamW is
torch's default (foreach on CUDA), whose guard costs one host sync per optimizer step; with it, one per training step
(`wadi.distill.guards.StepGuard`). wadi rows report the losses of steps 1 and 2 (`loss_*_step1`, `_step2`; weights and
adapters seeded alike in every variant; step 1's generator loss is 0, the fake score starting as the teacher): a
lever that keeps the math keeps them within bf16 tolerance.

The toy lab (issue 16, item 7; experiments/fastlab/NOTES.md):

    TORCH_LOGS=perf_hints python -m experiments.bench.bench_step --batch 256 --warmup 5 --steps 20 --budget 150 \
        --plan "toy:wadi+fadam,wadi+fadam+gradcompile+cudagraphs;toy_pixart:wadi+fadam,wadi+fadam+gradcompile+cudagraphs"

    python -m experiments.bench.bench_step --plan "sd15:ref,ref+ckpt,wadi,wadi+ckpt" --out results/

(from the repository root). The fused rotation's accuracy against float64 on a full-size layer is a GPU
test: `python -m pytest -m gpu tests/adapters`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from experiments.bench.reference import ReferenceVSD
from wadi.adapters import get_adapter
from wadi.backbones import Backbone, BackboneConfig, PixArtDenoiser, UNetDenoiser

REPO = Path(__file__).resolve().parents[2]

H100_DENSE_BF16 = 989e12

OPTIONS = {
    "ungrouped",
    "ckpt",
    "fp32base",
    "autocast",
    "unfused",
    "fadam",
    "cudnn",
    "cl",
    "compile",
    "cfgcompile",
    "gradcompile",
    "layoutopt",
    "cudagraphs",
    "flash",
    "profile",
}


@dataclass(frozen=True)
class Arch:
    """A full-size architecture and what its cached text embeddings look like."""

    kind: str  # "unet" | "pixart"
    config: str | None  # diffusers config.json under conf/arch; None for the tiny test models
    backbone_yaml: str  # adapter targets and default rank
    latent_size: int
    text_len: int
    text_dim: int
    masked: bool


ARCHES = {
    "sd15": Arch("unet", "conf/arch/sd15_unet.json", "conf/backbone/sd15.yaml", 64, 77, 768, False),
    "pixart256": Arch(
        "pixart", "conf/arch/pixart_256_transformer.json", "conf/backbone/pixart.yaml", 32, 120, 4096, True
    ),
    "pixart512": Arch(
        "pixart", "conf/arch/pixart_512_transformer.json", "conf/backbone/pixart.yaml", 64, 120, 4096, True
    ),
    # the shipped toy teachers' architectures (random weights): the toy lab's step (issue 16, item 7)
    "toy": Arch(
        "unet", "wadi/assets/toy/toy-sd/unet/config.json", "conf/backbone/toy.yaml", 16, 32, 128, False
    ),
    "toy_pixart": Arch(
        "pixart",
        "wadi/assets/toy/toy-pixart/transformer/config.json",
        "conf/backbone/toy_pixart.yaml",
        16,
        32,
        128,
        True,
    ),
    "tiny_sd": Arch("unet", None, "conf/backbone/sd15.yaml", 8, 16, 32, False),
    "tiny_pixart": Arch("pixart", None, "conf/backbone/pixart.yaml", 8, 16, 32, True),
}


@dataclass
class Variant:
    impl: str
    options: frozenset = field(default_factory=frozenset)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        impl, *opts = spec.strip().split("+")
        if impl not in ("ref", "wadi"):
            raise ValueError(f"variant {spec!r}: must start with 'ref' or 'wadi'")
        unknown = set(opts) - OPTIONS
        if unknown:
            raise ValueError(f"variant {spec!r}: unknown options {sorted(unknown)}; known: {sorted(OPTIONS)}")
        return cls(impl, frozenset(opts))

    @property
    def name(self) -> str:
        return "+".join([self.impl, *sorted(self.options)])

    def has(self, option: str) -> bool:
        return option in self.options


# ----------------------------------------------------------------------------- building
def load_yaml(path: Path) -> dict:
    import yaml

    with path.open() as f:
        return yaml.safe_load(f)


def build_model(arch: Arch, device: torch.device) -> torch.nn.Module:
    """The random-init denoiser, built directly on `device` in float32."""
    with torch.device(device):
        if arch.config is None:
            from wadi.testing import tiny_pixart, tiny_unet

            model = (tiny_unet if arch.kind == "unet" else tiny_pixart)(cross_dim=arch.text_dim)
        else:
            import diffusers

            config = json.loads((REPO / arch.config).read_text())
            cls = getattr(diffusers, config["_class_name"])
            model = cls.from_config(config)
    return model.requires_grad_(False)


def alphas_cumprod(arch: Arch, device: torch.device) -> torch.Tensor:
    from diffusers import DDPMScheduler

    if arch.kind == "unet":
        sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    else:
        sched = DDPMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
    return sched.alphas_cumprod.to(device)


def backbone_config(name: str, arch: Arch) -> BackboneConfig:
    raw = load_yaml(REPO / arch.backbone_yaml)
    if raw.get("latent_size") != arch.latent_size:  # a full-size arch at another resolution (VAE factor 8)
        raw["resolution"] = arch.latent_size * 8
    raw.update(name=name, pretrained=None, arch_config=None, latent_size=arch.latent_size)
    return BackboneConfig.from_mapping(raw)


def recipe_defaults(arch: Arch) -> dict:
    """The backbone's training-recipe defaults (rank, guidance_scale): conf/recipe_defaults/<backbone>.yaml."""
    return load_yaml(REPO / "conf" / "recipe_defaults" / Path(arch.backbone_yaml).name)


def wrapper(arch: Arch):
    return UNetDenoiser if arch.kind == "unet" else PixArtDenoiser


def make_batch(arch: Arch, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """Cached-embedding batch: prompt_embeds (B, L, D), null_embeds (1, L, D), T5 masks for PixArt."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    L, D = arch.text_len, arch.text_dim
    batch = {
        "prompt_embeds": torch.randn(batch_size, L, D, generator=g).to(device),
        "null_embeds": torch.randn(1, L, D, generator=g).to(device),
    }
    if arch.masked:
        lengths = torch.randint(8, L + 1, (batch_size,), generator=g)
        batch["prompt_mask"] = (torch.arange(L)[None] < lengths[:, None]).long().to(device)
        batch["null_mask"] = (torch.arange(L)[None] < 1).long().to(device)  # "" is one </s> token
    return batch


class RepeatBatch(torch.utils.data.Dataset):
    """The same (device-resident) batch every step: the benchmark measures the step, not the loader."""

    def __init__(self, batch: dict, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.batch


def compile_regions(model: torch.nn.Module) -> int:
    """torch.compile each ResNet block, transformer block and resampler in place; returns how many."""
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

    cfg = torch._dynamo.config
    for key, value in (
        ("recompile_limit", 64),
        ("cache_size_limit", 64),
        ("accumulated_recompile_limit", 4096),
        ("accumulated_cache_size_limit", 4096),
    ):
        if hasattr(cfg, key):
            setattr(cfg, key, value)
    regions = (ResnetBlock2D, Downsample2D, Upsample2D, BasicTransformerBlock)
    n = 0
    for module in model.modules():
        if isinstance(module, regions):
            module.compile(dynamic=True)  # one graph for every block size: fewer, slower-to-rot compiles
            n += 1
    return n


# ----------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """Wall time of each step, synchronized at both ends, plus optional FLOP counting and profiling."""

    def __init__(self, device: torch.device, flops_at: int | None = None, profile_at: int | None = None):
        self.device = device
        self.times: list[float] = []
        self.flops_at, self.profile_at = flops_at, profile_at
        self.flops: int | None = None
        self.profile: dict | None = None
        self._mode = None
        self._t0 = 0.0

    def start(self, index: int) -> None:
        sync(self.device)
        if index == self.flops_at:
            from torch.utils.flop_counter import FlopCounterMode

            self._mode = FlopCounterMode(display=False)
            self._mode.__enter__()
        elif index == self.profile_at:
            self._mode = torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
                record_shapes=True,
            )
            self._mode.__enter__()
        self._t0 = time.perf_counter()

    def stop(self, index: int) -> None:
        sync(self.device)
        self.times.append(time.perf_counter() - self._t0)
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            if index == self.flops_at:
                self.flops = int(self._mode.get_total_flops())
            else:
                self.profile = summarize_profile(self._mode)
            self._mode = None


def lightning_clock(clock: StepClock, on_start=None, first_losses: dict | None = None):
    import lightning as L

    class _Clock(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            if on_start is not None:
                on_start(pl_module)

        def on_train_start(self, trainer, pl_module) -> None:
            if clock.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(clock.device)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            clock.start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            clock.stop(batch_idx)
            if (
                batch_idx < 2 and first_losses is not None
            ):  # steps 1-2's losses (read after the clock stopped)
                metrics = trainer.callback_metrics
                for key in ("loss_generator", "loss_fake_score"):
                    first_losses[f"{key}_step{batch_idx + 1}"] = float(metrics[f"train/{key}"])

    return _Clock()


KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("conv", ("conv", "implicit", "winograd", "wgrad", "dgrad", "cudnn")),
    ("matmul", ("gemm", "cutlass", "nvjet", "sm90_xmma", "xmma", "cublas", "matmul")),
    ("norm", ("norm",)),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("rotation", ("_rotate",)),
    ("copy/cast", ("copy", "cast", "convert", "to_copy", "cat", "stack")),
    ("triton (compiled)", ("triton_",)),
)


def _is_kernel(evt) -> bool:
    """A GPU kernel or copy; "## Call CompiledFxGraph ... ##" is a range around a graph's kernels, not one."""
    from torch.autograd import DeviceType

    return evt.device_type == DeviceType.CUDA and bool(evt.name) and not evt.name.startswith("## ")


def summarize_profile(prof) -> dict:
    """GPU time by kernel kind and the top kernels of one profiled step."""

    per_kernel: dict[str, float] = {}  # microseconds
    for evt in prof.events():
        if _is_kernel(evt):
            per_kernel[evt.name] = per_kernel.get(evt.name, 0.0) + float(evt.time_range.elapsed_us())
    kinds: dict[str, float] = {}
    for name, t in per_kernel.items():
        low = name.lower()
        kind = next((k for k, keys in KERNEL_KINDS if any(key in low for key in keys)), "elementwise/other")
        kinds[kind] = kinds.get(kind, 0.0) + t
    total = sum(per_kernel.values())
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:25]
    # The host side: where the step's CPU time goes (self time per op), to see whether launches bind it.
    averages = prof.key_averages()
    cpu = sorted(((e.key, e.self_cpu_time_total, e.count) for e in averages), key=lambda kv: -kv[1])[:30]
    # Which op (and on which shapes) each GPU microsecond belongs to: names the line behind a kernel.
    ops = prof.key_averages(group_by_input_shape=True)
    by_shape = sorted(ops, key=lambda e: -e.self_device_time_total)[:40]
    return {
        "gpu_ms": total / 1e3,
        "top_ops_by_shape_ms": [
            (e.key[:60], str(e.input_shapes)[:160], round(e.self_device_time_total / 1e3, 2), e.count)
            for e in by_shape
        ],
        "cpu_self_ms": sum(e.self_cpu_time_total for e in averages) / 1e3,
        "top_cpu_ops_ms": [(k[:100], round(t / 1e3, 2), n) for k, t, n in cpu],
        "by_kind_ms": {k: round(v / 1e3, 2) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top_kernels_ms": [(name[:120], round(t / 1e3, 2)) for name, t in top],
        **gpu_idle(prof),
    }


def gpu_idle(prof, min_gap_us: float = 20.0) -> dict:
    """Where the GPU waits for the host: gaps between kernels, charged to the host op issuing at the gap's end.

    Each gap of at least `min_gap_us` is charged to the outermost and the innermost host op whose time range
    holds the moment the GPU resumes (the op whose launch it waited for). The profiler slows the host, so
    the totals are an upper bound on the unprofiled step's idle time.
    """
    import bisect

    from torch.autograd import DeviceType

    events = prof.events()
    busy = sorted((e.time_range.start, e.time_range.end) for e in events if _is_kernel(e))
    if not busy:
        return {}
    gaps, end = [], busy[0][1]
    for start, stop in busy[1:]:
        if start - end >= min_gap_us:
            gaps.append((end, start))
        end = max(end, stop)
    roots = sorted(
        (e for e in events if e.device_type == DeviceType.CPU and e.cpu_parent is None),
        key=lambda e: e.time_range.start,
    )
    starts = [e.time_range.start for e in roots]
    by_outer: dict[str, float] = {}
    by_inner: dict[str, float] = {}
    for a, b in gaps:
        i = bisect.bisect_right(starts, b) - 1
        while i >= 0 and roots[i].time_range.end < b:  # the latest-starting root op still running at b
            i -= 1
        outer = roots[i] if i >= 0 else None
        inner = outer
        while inner is not None:
            child = next((c for c in inner.cpu_children if c.time_range.start <= b <= c.time_range.end), None)
            if child is None:
                break
            inner = child
        for table, evt in ((by_outer, outer), (by_inner, inner)):
            key = evt.name[:80] if evt is not None else "(no host op)"
            table[key] = table.get(key, 0.0) + (b - a)
    return {
        "gpu_span_ms": (end - busy[0][0]) / 1e3,
        "gpu_idle_ms": sum(b - a for a, b in gaps) / 1e3,
        "gpu_gaps": len(gaps),
        "idle_by_outer_host_op_ms": _top_ms(by_outer),
        "idle_by_inner_host_op_ms": _top_ms(by_inner),
    }


def _top_ms(table: dict[str, float], n: int = 15) -> list[tuple[str, float]]:
    return [(k, round(v / 1e3, 2)) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:n]]


# ----------------------------------------------------------------------------- one variant
def build_wadi_module(
    arch_name: str, device: torch.device, rank: int | None = None, fused_adamw: bool = False, **kw
):
    """wadi's `WaDiModule` on the full-size random-init `arch_name` backbone (fake rank 32, the backbone's
    rank and CFG scale); `kw` goes to the module (checkpointing, compile, base dtype)."""
    from wadi.distill.module import WaDiModule

    arch = ARCHES[arch_name]
    cfg = backbone_config(arch_name, arch)
    backbone = Backbone(cfg, wrapper(arch)(build_model(arch, device)), alphas_cumprod(arch, device))
    recipe = recipe_defaults(arch)
    return WaDiModule(
        backbone,
        rank=rank or recipe["rank"],
        fake_rank=32,
        vsd={"guidance_scale": recipe["guidance_scale"]},
        optimizer=partial(torch.optim.AdamW, weight_decay=0.0, fused=fused_adamw or None),
        text_encoder=False,
        **kw,
    )


def run_wadi(arch_name: str, arch: Arch, variant: Variant, args, clock: StepClock) -> dict:
    import lightning as L

    device = torch.device(args.device)
    torch.manual_seed(0)  # the same random base and adapters in every variant: step 1's losses compare
    module = build_wadi_module(
        arch_name,
        device,
        rank=args.rank,
        fused_adamw=variant.has("fadam"),
        gradient_checkpointing=variant.has("ckpt"),
        compile_passes="all" if variant.has("gradcompile") else variant.has("cfgcompile"),
        base_dtype="float32" if variant.has("fp32base") else "auto",
        cuda_graphs=variant.has("cudagraphs"),
    )
    info: dict = {}

    def on_start(pl_module) -> None:
        # After setup (which cast the base): apply the levers this variant turns off or on.
        denoiser = pl_module.denoiser
        if variant.has("autocast"):
            denoiser.update_speed(compute_dtype=None)
        if variant.has("ungrouped"):
            denoiser.update_speed(group_rotations=False)
        if variant.has("unfused"):
            denoiser.update_speed(fused_rotation=False)
        info["group_rotations"] = denoiser.speed.group_rotations
        if variant.has("cl"):
            denoiser.model.to(memory_format=torch.channels_last)
        if variant.has("compile"):
            info["compiled_regions"] = compile_regions(denoiser.model)

        info["compute_dtype"] = str(denoiser.speed.compute_dtype)
        info["base_dtype"] = str(next(denoiser.model.parameters()).dtype)
        info["trainable"] = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)

    steps = args.warmup + args.steps + (1 if clock.profile_at is not None else 0)
    loader = torch.utils.data.DataLoader(
        RepeatBatch(make_batch(arch, args.batch, device), steps), batch_size=None, shuffle=False
    )
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        precision=args.precision,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        benchmark=True if variant.has("cudnn") else None,
        callbacks=[lightning_clock(clock, on_start, first_losses=info)],
    )
    try:
        with sdpa_backend(variant), inductor_options(variant):
            trainer.fit(module, loader)
    finally:
        torch.backends.cudnn.benchmark = False
    metrics = trainer.callback_metrics
    info["loss_generator"] = float(metrics["train/loss_generator"])
    info["loss_fake_score"] = float(metrics["train/loss_fake_score"])
    return info


def inductor_options(variant: Variant):
    """The `layoutopt` option: inductor config read when the graphs compile (first steps)."""
    patch = {}
    if variant.has("layoutopt"):
        patch["force_layout_optimization"] = True
    if not patch:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(patch)


def sdpa_backend(variant: Variant):
    """The `flash` option: SDPA may use the flash-attention kernels only (forward and backward)."""
    if not variant.has("flash"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION])


def run_reference(arch_name: str, arch: Arch, variant: Variant, args, clock: StepClock) -> dict:
    device = torch.device(args.device)
    adapter = get_adapter()  # the same layers as wadi's side: conf/adapter/lorad.yaml
    on_gpu = device.type == "cuda"
    # The scripts' dtypes: fp16 + GradScaler for SD, bf16 for PixArt; fp32 without autocast on CPU.
    dtype = (torch.float16 if arch.kind == "unet" else torch.bfloat16) if on_gpu else torch.float32
    ref = ReferenceVSD(
        wrapper(arch),
        build_model(arch, device),
        adapter.targets(arch.kind, "generator"),
        adapter.targets(arch.kind, "fake_score"),
        rank=args.rank or recipe_defaults(arch)["rank"],
        fake_rank=32,
        alphas_cumprod=alphas_cumprod(arch, device),
        latent_shape=(4, arch.latent_size, arch.latent_size),
        dtype=dtype,
        gradient_checkpointing=variant.has("ckpt"),
        guidance_scale=recipe_defaults(arch)["guidance_scale"],
        autocast=on_gpu,
    )
    batch = make_batch(arch, args.batch, device)
    rng = torch.Generator(device=device).manual_seed(0)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    steps = args.warmup + args.steps + (1 if clock.profile_at is not None else 0)
    with sdpa_backend(variant):
        for i in range(steps):
            clock.start(i)
            loss_g, loss_f = ref.step(batch, rng)
            clock.stop(i)
    return {
        "dtype": str(dtype),
        "trainable": sum(p.numel() for p in ref.gen_params + ref.fake_params),
        "loss_generator": float(loss_g),
        "loss_fake_score": float(loss_f),
    }


def measure(arch_name: str, variant: Variant, args, count_flops: bool) -> dict:
    arch = ARCHES[arch_name]
    device = torch.device(args.device)
    flops_at = args.warmup - 1 if count_flops else None  # a warm-up step, never a timed one
    profile_at = args.warmup + args.steps if variant.has("profile") else None
    clock = StepClock(device, flops_at, profile_at)
    t0 = time.perf_counter()
    run = run_wadi if variant.impl == "wadi" else run_reference
    info = run(arch_name, arch, variant, args, clock)
    timed = clock.times[args.warmup : args.warmup + args.steps]
    median = statistics.median(timed)
    row = {
        "arch": arch_name,
        "variant": variant.name,
        "batch": args.batch,
        "step_ms": median * 1e3,
        "step_ms_min": min(timed) * 1e3,
        "step_ms_max": max(timed) * 1e3,
        "img_per_s": args.batch / median,
        "warmup_s": sum(clock.times[: args.warmup]),
        "wall_s": time.perf_counter() - t0,
        **info,
    }
    # Warm-up beyond steady state: compilation (and allocator/cuDNN warm-up) time.
    row["warmup_extra_s"] = row["warmup_s"] - args.warmup * median
    if device.type == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if clock.flops is not None:
        row["flops_per_step"] = clock.flops
    if clock.profile is not None:
        row["profile"] = clock.profile
    return row


def bf16_matmul_tflops(device: torch.device, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def cleanup() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(Exception):
        torch._dynamo.reset()


def table(rows: list[dict], peak: float | None) -> str:
    flops = {}
    for r in rows:  # useful FLOPs: counted once per arch on a wadi step without checkpointing
        if "flops_per_step" in r and r["arch"] not in flops:
            flops[r["arch"]] = r["flops_per_step"]
    refs = {}
    for r in rows:
        if "img_per_s" in r and r["variant"].startswith("ref"):
            refs[(r["arch"], "ckpt" in r["variant"])] = r["img_per_s"]
    lines = [
        "| arch | variant | img/s | step ms (min-max) | peak GiB | MFU (989) | MFU (measured) | x ref | warm-up extra s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "img_per_s" not in r:
            lines.append(f"| {r['arch']} | {r['variant']} | {r.get('error', 'skipped')[:80]} | | | | | | |")
            continue
        f = flops.get(r["arch"])
        mfu = f / (r["step_ms"] / 1e3) / H100_DENSE_BF16 if f else float("nan")
        mfu_m = f / (r["step_ms"] / 1e3) / (peak * 1e12) if (f and peak) else float("nan")
        ref = refs.get((r["arch"], "ckpt" in r["variant"]))
        ratio = r["img_per_s"] / ref if ref else float("nan")
        lines.append(
            f"| {r['arch']} | {r['variant']} | {r['img_per_s']:.2f} | {r['step_ms']:.0f} "
            f"({r['step_ms_min']:.0f}-{r['step_ms_max']:.0f}) | {r.get('peak_gib', float('nan')):.2f} | "
            f"{mfu:.1%} | {mfu_m:.1%} | {ratio:.2f} | {r['warmup_extra_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", required=True, help='"arch:variant,variant;arch:variant" (see module docstring)')
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rank", type=int, default=None, help="generator rank (default: the backbone's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default=None, help="Trainer precision (default bf16-mixed on GPU)")
    p.add_argument("--budget", type=float, default=float("inf"), help="skip variants after this many s")
    p.add_argument("--out", type=Path, default=None, help="folder for results.jsonl and profiles")
    p.add_argument(
        "--compile-cache",
        type=Path,
        default=None,
        help="torch.compile artifacts: loaded if present, saved after",
    )
    args = p.parse_args(argv)
    args.precision = args.precision or ("bf16-mixed" if args.device.startswith("cuda") else "32-true")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    start = time.perf_counter()
    header = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv if argv is None else argv,
    }
    with contextlib.suppress(ImportError):
        import diffusers
        import lightning

        header.update(diffusers=diffusers.__version__, lightning=lightning.__version__)
    peak = None
    if device.type == "cuda":
        peak = bf16_matmul_tflops(device)
        header["bf16_matmul_tflops"] = peak
    if args.compile_cache and args.compile_cache.is_file():
        torch.compiler.load_cache_artifacts(args.compile_cache.read_bytes())
        header["compile_cache_loaded"] = args.compile_cache.stat().st_size
    print(json.dumps(header), flush=True)
    rows: list[dict] = []
    counted: set[str] = set()
    for chunk in args.plan.split(";"):
        arch_name, _, specs = chunk.partition(":")
        arch_name = arch_name.strip()
        if arch_name not in ARCHES:
            raise SystemExit(f"unknown arch {arch_name!r}; known: {sorted(ARCHES)}")
        for spec in specs.split(","):
            variant = Variant.parse(spec)
            if time.perf_counter() - start > args.budget:
                rows.append({"arch": arch_name, "variant": variant.name, "error": "skipped (time budget)"})
                continue
            count = (
                variant.impl == "wadi"
                and arch_name not in counted
                and not (variant.options & {"ckpt", "compile", "cfgcompile", "gradcompile"})
            )
            try:
                row = measure(arch_name, variant, args, count)
                if "flops_per_step" in row:
                    counted.add(arch_name)
            except Exception as e:  # one failing variant (e.g. out of memory) must not lose the others
                row = {"arch": arch_name, "variant": variant.name, "error": f"{type(e).__name__}: {e}"[:500]}
            rows.append(row)
            short = {k: v for k, v in row.items() if k != "profile"}
            print(json.dumps(short), flush=True)
            if "profile" in row:
                prof = row["profile"]
                print(f"profile {arch_name} {variant.name}: {json.dumps(prof['by_kind_ms'])}", flush=True)
                for op in prof["top_ops_by_shape_ms"]:
                    print(f"profile op {json.dumps(op)}", flush=True)
                print(
                    f"profile {arch_name} {variant.name} GPU {prof['gpu_ms']:.0f} ms, host self "
                    f"{prof['cpu_self_ms']:.0f} ms; top host ops: {json.dumps(prof['top_cpu_ops_ms'][:12])}",
                    flush=True,
                )
            if args.out:
                with (args.out / "results.jsonl").open("a") as f:
                    f.write(json.dumps({**header, **row}) + "\n")
            cleanup()
    if args.out and any("compile" in r["variant"] for r in rows):
        with contextlib.suppress(Exception):
            artifacts = torch.compiler.save_cache_artifacts()
            if artifacts is not None:
                (args.out / "compile_cache.bin").write_bytes(artifacts[0])
                print(f"compile cache: {len(artifacts[0]) / 2**20:.1f} MiB", flush=True)
    print(f"\n{header['device']}  torch {header['torch']}  bf16 matmul {peak or float('nan'):.0f} TFLOP/s")
    print(table(rows, peak), flush=True)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
