"""Export a trained student: (a) the adapters alone, (b) the generator merged into a plain diffusers model.

The merged export is a complete diffusers directory whose scheduler is DDIM with trailing spacing, so
stock diffusers samples it in one step: `Pipeline.from_pretrained(dir)(prompt, num_inference_steps=1,
guidance_scale=1.0)` evaluates the denoiser once at t = T and returns x0 = (z - sigma_T eps) / alpha_T.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wadi.adapters.base import plain_key
from wadi.backbones.loading import KINDS, _denoiser_class
from wadi.diffusion import generator_schedule
from wadi.distill.guards import check_finite

EXPORT_INFO = "wadi_export.json"
MODEL_CARD = "README.md"
# Top-level files of the teacher's directory that describe the teacher, not this export: not copied.
TEACHER_ONLY = {"pretrain.json", MODEL_CARD, EXPORT_INFO}
# The adapter file's safetensors metadata: what it is, and why diffusers' load_lora_weights cannot use it.
ADAPTER_NOTE = (
    "WaDi adapters (LoRaD: a rotation and scale of the teacher's weights; or wadi's own LoRA / DoRA / full layers, "
    "named by generator_adapter / fake_score_adapter, wadi.adapters), NOT a LoRA: diffusers' "
    "load_lora_weights cannot apply them (the 'wadi_format' entry makes it refuse the file). Sample the merged "
    "export (export/merged, stock diffusers) or the run's checkpoint (python -m wadi.sample model=<.ckpt>)."
)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a finished temp directory into place, so a crash never leaves a half-written export."""
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _default_modes(root: Path) -> None:
    """Files and folders with the modes a plain `open`/`mkdir` would give (0644 / 0755 under umask 022):
    safetensors writes its files 0600, which hid exports from other users of a shared machine."""
    umask = os.umask(0)
    os.umask(umask)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _cast_component(folder: Path, dtype: torch.dtype) -> None:
    """Rewrite a copied pipeline component's floating-point weights (safetensors / .bin) in `dtype`, and the
    dtype its config.json declares, so every component of the export loads in one dtype."""
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        if any(t.is_floating_point() and t.dtype != dtype for t in tensors.values()):
            tensors = {k: t.to(dtype) if t.is_floating_point() else t for k, t in tensors.items()}
            save_file(tensors, str(path), metadata=metadata)
    for path in sorted(folder.glob("*.bin")):
        state = torch.load(path, map_location="cpu", weights_only=True)
        torch.save({k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}, path)
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        keys = [k for k in ("torch_dtype", "dtype") if k in config]
        if keys:
            config |= {k: _dtype_name(dtype) for k in keys}
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def one_step_betas(betas: torch.Tensor, alpha_T: float) -> torch.Tensor:
    """`betas` with the last one changed so that prod(1 - beta) over all steps is alpha_T^2.

    Only alphas_cumprod[T] changes, so one-step DDIM at t = T returns the student's x0 = (z - sigma_T eps) /
    alpha_T. The last beta may be negative (PixArt: alpha_T^2 = 0.0047 above alphas_cumprod[T-1] ~ 4e-5).
    """
    betas = betas.double().clone()
    before = torch.prod(1 - betas[:-1])
    betas[-1] = 1 - alpha_T**2 / before
    return betas


def _owned(value: torch.Tensor) -> torch.Tensor:
    """A float32 CPU copy that shares no memory with the live parameter (the EMA swap rewrites those)."""
    return value.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()


def role_adapters(module) -> dict[str, Any]:
    """{role: its Adapter} of a WaDiModule (one kind for both roles on modules without `adapters`)."""
    adapters = getattr(module, "adapters", None)
    return dict(adapters) if adapters else {"generator": module.adapter, "fake_score": module.adapter}


def load_adapters(module, path: str | Path, roles: tuple[str, ...] = ("generator", "fake_score")) -> None:
    """Load an adapter file written by `export_adapters` into `module`'s live adapters (same kinds, same layers;
    a mismatch is refused, naming both)."""
    path = Path(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    tensors = load_file(str(path))
    adapters = role_adapters(module)
    for role in roles:
        kind = meta.get(f"{role}_adapter", "lorad")
        if kind != adapters[role].name:
            raise ValueError(
                f"{path}: its {role} adapter is {kind!r} but this module's is {adapters[role].name!r} "
                f"(set {role}.adapter={kind})"
            )
    model = module.denoiser.model
    for role in roles:
        live = adapters[role].state_dict(model, role)
        stored = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith(f"{role}/")}
        if set(stored) != set(live):
            missing, extra = sorted(set(live) - set(stored)), sorted(set(stored) - set(live))
            raise ValueError(
                f"{path}: {role} tensors do not match this module: missing {missing[:3]}, extra {extra[:3]}"
            )
        with torch.no_grad():
            for key, param in live.items():
                if stored[key].shape != param.shape:
                    raise ValueError(
                        f"{path}: {role}/{key} has shape {tuple(stored[key].shape)}, expected {tuple(param.shape)}"
                    )
                param.copy_(stored[key])


def export_adapters(module, path: str | Path) -> Path:
    """Both adapters (and the EMA generator if any) as one small safetensors file with its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    model = module.denoiser.model
    adapters = role_adapters(module)
    for role in ("generator", "fake_score"):
        for key, value in adapters[role].state_dict(model, role).items():
            tensors[f"{role}/{key}"] = _owned(value)
    if module.ema is not None:
        with module.ema.swapped():
            for key, value in adapters["generator"].state_dict(model, "generator").items():
                tensors[f"generator_ema/{key}"] = _owned(value)
    hp = module.hparams
    meta = {
        "format": f"wadi-{adapters['generator'].name}",
        "format_version": "1",
        "not_a_lora": ADAPTER_NOTE,
        "backbone": module.backbone.cfg.name,
        "teacher": _teacher_path(module),
        "rank": str(hp.rank),
        "fake_rank": str(hp.fake_rank),
        "generator_adapter": adapters["generator"].name,
        "fake_score_adapter": adapters["fake_score"].name,
    }
    check_finite(tensors, f"adapter export {path}")
    # A key without "lora" in its name: diffusers' load_lora_weights raises "Invalid LoRA checkpoint" instead of
    # loading nothing and saying little (every adapter key has "lorad" in it).
    tensors["wadi_format"] = torch.tensor([1], dtype=torch.int32)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    _default_modes(path)
    return path


@torch.no_grad()
def export_merged(
    module, out_dir: str | Path, use_ema: bool = True, dtype: torch.dtype = torch.float32
) -> Path:
    """Write the generator, its adapter merged, as a diffusers directory loadable by stock `from_pretrained`.

    Every component is written in one `dtype` (float32 by default: the teacher's copied text encoder and VAE
    are often float16, and a pipeline loaded without `torch_dtype` then mixed fp16 and fp32 layers); load with
    `torch_dtype=torch.float16` to run in half precision."""
    from diffusers import DDIMScheduler

    out_dir = Path(out_dir)
    model = module.denoiser.model
    adapters = role_adapters(module)
    adapter = adapters["generator"]
    ema = module.ema.swapped() if (use_ema and module.ema is not None) else nullcontext()
    with ema:
        check_finite(adapter.state_dict(model, "generator"), f"merged export {out_dir}")
    cfg = module.backbone.cfg
    root = Path(str(cfg.pretrained))
    sub = KINDS[cfg.kind][1]
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for entry in root.iterdir():
        if entry.name in (sub, "scheduler", *TEACHER_ONLY) or entry.name.startswith("."):
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        if entry.is_dir():
            _cast_component(tmp / entry.name, dtype)
    # One-step sampling in stock diffusers: DDIM, trailing spacing (t = T), final alpha 1 (x_prev = x0).
    one_step_kw = dict(
        local_files_only=True,
        timestep_spacing="trailing",
        set_alpha_to_one=True,
        clip_sample=False,
        thresholding=False,
        steps_offset=1,  # unused by trailing spacing; 1 keeps StableDiffusionPipeline's FutureWarning away
    )
    scheduler = DDIMScheduler.from_pretrained(root / "scheduler", **one_step_kw)
    # A method's own student (TiUE) records how to rebuild it; it reads the schedule unchanged.
    student = module.student
    student_info = student.export_info(module.alphas_cumprod) if hasattr(student, "export_info") else None
    if cfg.alpha_T is not None and student_info is None:
        # The student's x0 = (z - sigma_T eps) / alpha_T uses its own alpha_T, and stock DDIM reads alpha_T from
        # alphas_cumprod[T]: write betas whose cumulative product ends at alpha_T^2 (every other t unchanged).
        betas = one_step_betas(scheduler.betas, float(cfg.alpha_T))
        scheduler = DDIMScheduler.from_pretrained(
            root / "scheduler", trained_betas=betas.tolist(), **one_step_kw
        )
    scheduler.save_pretrained(tmp / "scheduler")
    index_path = tmp / "model_index.json"
    if index_path.exists():
        index = json.loads(index_path.read_text())
        index["scheduler"] = ["diffusers", "DDIMScheduler"]
        if student_info is not None and hasattr(student, "pipeline_config"):
            index |= student.pipeline_config(module.alphas_cumprod)
        index_path.write_text(json.dumps(index, indent=2))
    if student_info is not None and hasattr(student, "pipeline_files"):
        for name, source in student.pipeline_files().items():  # its diffusers custom pipeline
            shutil.copy2(source, tmp / name)

    ema = module.ema.swapped() if (use_ema and module.ema is not None) else nullcontext()
    with ema, adapter.merged(model, "generator"):
        named = ((plain_key(adapters.values(), k), v) for k, v in model.state_dict().items())
        state = {k: v for k, v in named if k is not None}
        with torch.device("meta"):
            plain = _denoiser_class(cfg.kind).from_config(model.config)
        plain.load_state_dict(state, assign=True, strict=True)
        if any(p.dtype != dtype for p in plain.parameters()):  # diffusers warns on every .to(dtype) call
            plain = plain.to(dtype)
        plain.save_pretrained(tmp / sub)

    T, alpha_T, sigma_T = generator_schedule(module.alphas_cumprod, cfg.alpha_T)
    info = {
        "format": "wadi-merged-1",
        "backbone": asdict(cfg) | {"pretrained": None},
        "rank": int(module.hparams.rank),
        "adapter": adapter.name,
        "ema": bool(use_ema and module.ema is not None),
        "timestep": T,
        "alpha_T": alpha_T,
        "sigma_T": sigma_T,
        "alpha_T_from_scheduler": cfg.alpha_T is None,
        "sampling": "one step: num_inference_steps=1, guidance_scale=1.0",
        "dtype": _dtype_name(dtype),
        "method": str(module.hparams.get("method", "wadi")),
    }
    if student_info is not None:
        info["student"] = student_info
        files = sorted(student.pipeline_files()) if hasattr(student, "pipeline_files") else []
        info["sampling"] = (
            f"the {student_info['method']} student, not a stock one-step pipeline: wadi.sample, or diffusers "
            + (
                f"DiffusionPipeline.from_pretrained(dir, custom_pipeline=dir + '/{files[0]}', "
                "trust_remote_code=True)"
                if files
                else ""
            )
        )
    info["teacher"] = _teacher_path(module)  # hybrid sampling (hybrid_k > 0) loads it without teacher=<dir>
    run = (module.run_config or {}).get("run_dir") or (module.run_config or {}).get("name")
    info["run"] = (
        Path(str(run)).name if run else None
    )  # wadi.evaluate names its default output folder after it
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2))
    (tmp / MODEL_CARD).write_text(model_card(info, cfg.kind))
    _default_modes(tmp)
    _replace_dir(tmp, out_dir)
    return out_dir


def _teacher_path(module) -> str:
    """The teacher's diffusers directory (absolute), as recorded in the exports."""
    return str(Path(str(module.backbone.cfg.pretrained)).expanduser().resolve())


def model_card(info: dict, kind: str) -> str:
    """The merged export's README.md: what the model is, where it came from and how to sample it."""
    pipeline = "PixArtAlphaPipeline" if kind == "pixart" else "StableDiffusionPipeline"
    run = f" (run `{info['run']}`)" if info.get("run") else ""
    return f"""---
library_name: diffusers
tags: [text-to-image, one-step, wadi, distillation]
---
# One-step student distilled with WaDi{run}

A one-step text-to-image generator: the teacher below with its generator's LoRaD adapters (rank {info["rank"]},
{"EMA" if info["ema"] else "no EMA"}) merged into the {"transformer" if kind == "pixart" else "U-Net"}, trained by
VSD distillation (wadi). The text encoder, tokenizer and VAE are the teacher's, in {info["dtype"]}. The teacher's
licence terms apply to this model too.

- teacher: `{info["teacher"]}`
- backbone: `{info["backbone"]["name"]}` ({info["backbone"]["resolution"]} px, latents {info["backbone"]["latent_size"]})
- one step at t = {info["timestep"]}: x0 = (z - sigma_T eps) / alpha_T, alpha_T = {info["alpha_T"]:.4g}
- details: `{EXPORT_INFO}`

## Sampling

```python
from diffusers import {pipeline}

pipe = {pipeline}.from_pretrained("<this folder>")
image = pipe("a large red circle at the left", num_inference_steps=1, guidance_scale=1.0).images[0]
```

or `python -m wadi.sample model=<this folder> prompts="..."`; hybrid sampling (the teacher's first k steps, then
this model): `python -m wadi.sample model=<this folder> hybrid_k=1` (the teacher above is read from `{EXPORT_INFO}`).
"""
