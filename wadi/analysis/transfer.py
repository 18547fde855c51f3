"""Control transfer (diversity distillation, spec section 6): a LoRA trained on one model, used on another.

The one-step student is the teacher with rotated weight rows (LoRaD), so the teacher's layer names and
shapes are the student's: a LoRA trained on the base model loads unchanged onto the merged student, and a
LoRA trained on the student loads onto the teacher.

Files are diffusers' LoRA format (what `save_lora_weights` / `save_lora_adapter` write): a
`pytorch_lora_weights.safetensors` of peft keys (`<layer>.lora_A.weight`, `<layer>.lora_B.weight`),
prefixed with the denoiser's component name (`unet.` / `transformer.`) or not, with the peft `LoraConfig`
as JSON under the `lora_adapter_metadata` entry of the safetensors header. For U-Nets the older diffusers
and kohya formats are converted with diffusers' own converters. Layers are injected with peft itself
(`inject_adapter_in_model` + `set_peft_model_state_dict`), which works for U-Nets and PixArt alike
(diffusers 0.42's PixArtTransformer2DModel has no `load_lora_adapter`).

    gen = apply_lora("exports/student", "loras/red/pytorch_lora_weights.safetensors", scale=1.0)
    images = gen(prompts, seeds)
    unload_lora(gen)                       # the student again, bit for bit
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.backbones import Conditioning
from wadi.backbones.loading import KINDS
from wadi.diffusion import add_noise

log = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
DEFAULT_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers' LoRA training scripts
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2")


# ----------------------------------------------------------------------------- which model
def _denoiser_model(target) -> nn.Module:
    """The diffusers denoiser inside a Generator, Backbone, Denoiser, or the model itself."""
    for path in (("backbone", "denoiser", "model"), ("denoiser", "model"), ("model",)):
        obj = target
        for attr in path:
            obj = getattr(obj, attr, None)
            if obj is None:
                break
        if isinstance(obj, nn.Module) and obj is not target:
            return obj
    if isinstance(target, nn.Module) and hasattr(target, "config"):
        return target
    raise TypeError(f"cannot find a diffusers denoiser in {type(target).__name__}")


def component_prefix(model: nn.Module) -> str:
    """ "unet" or "transformer": the key prefix diffusers pipelines give this denoiser's LoRA."""
    name = type(model).__name__
    for _, prefix, cls_name in KINDS.values():
        if cls_name == name:
            return prefix
    return "transformer" if "Transformer" in name else "unet"


# ----------------------------------------------------------------------------- reading
def lora_file(path: str | Path) -> Path:
    """The safetensors file of a LoRA given as the file or its directory."""
    path = Path(str(path)).expanduser()
    file = path / LORA_WEIGHT_NAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"LoRA not found at {path}: expected a .safetensors file or a directory with {LORA_WEIGHT_NAME}"
        )
    if file.suffix != ".safetensors":
        raise ValueError(f"LoRA {file}: only .safetensors files are read (no pickled .bin)")
    return file


def _strip_prefix(keys: dict[str, Any], prefix: str, file: Path) -> dict[str, Any]:
    """Keep this component's keys (prefix removed); keys without any component prefix are kept as they are."""
    ours = {k[len(prefix) + 1 :]: v for k, v in keys.items() if k.startswith(prefix + ".")}
    if ours:
        others = sorted({k.split(".")[0] for k in keys if not k.startswith(prefix + ".")})
        if others:
            log.warning("LoRA %s: ignoring entries for %s (only the %s is adapted)", file, others, prefix)
        return ours
    foreign = sorted({k.split(".")[0] for k in keys if k.split(".")[0] in COMPONENTS})
    if foreign:
        raise ValueError(
            f"LoRA {file} has entries for {foreign} but none for this model's denoiser ({prefix!r})"
        )
    return dict(keys)


def read_lora(path: str | Path, prefix: str) -> tuple[dict[str, Tensor], Any]:
    """(peft state dict without the component prefix, peft LoraConfig) of a LoRA file for `prefix`."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from diffusers.utils.peft_utils import get_peft_kwargs
    from peft import LoraConfig
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = lora_file(path)
    state = load_file(str(file))
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
    metadata = json.loads(header[METADATA_KEY]) if header.get(METADATA_KEY) else None
    network_alphas = None
    if not any(".lora_A." in k or ".lora_B." in k for k in state):
        if prefix != "unet":
            raise ValueError(f"LoRA {file} is not in peft format (lora_A / lora_B keys); convert it first")
        from diffusers import StableDiffusionPipeline

        state, network_alphas = StableDiffusionPipeline.lora_state_dict(state)
    state = _strip_prefix(state, prefix, file)
    if network_alphas:
        network_alphas = {
            k[len(prefix) + 1 :]: v for k, v in network_alphas.items() if k.startswith(prefix + ".")
        }
    if not any(".lora_A." in k for k in state):
        state = convert_unet_state_dict_to_peft(state)
    if not state:
        raise ValueError(f"LoRA {file} holds no weights for the {prefix}")
    if metadata is not None:
        metadata = _strip_prefix(metadata, prefix, file)
        return state, LoraConfig(**metadata)
    ranks = {f"^{k}": v.shape[1] for k, v in state.items() if ".lora_B." in k and v.ndim > 1}
    kwargs = get_peft_kwargs(ranks, network_alphas, state, is_unet=prefix == "unet")
    return state, LoraConfig(**kwargs)


# ----------------------------------------------------------------------------- applying
def add_lora(target, path: str | Path, adapter_name: str = "lora", scale: float = 1.0) -> list[str]:
    """Inject the LoRA at `path` into the denoiser of `target` as `adapter_name`; returns the layer names.

    Raises if the file's layers do not all exist in this model (a LoRA for another base) and leaves the
    model untouched then.
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    model = _denoiser_model(target)
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(
            f"the model already has a LoRA named {adapter_name!r}; unload it or pick another name"
        )
    state, config = read_lora(path, component_prefix(model))
    try:
        with warnings.catch_warnings():  # several named LoRAs on one model are intended here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            inject_adapter_in_model(config, model, adapter_name)
    except ValueError as e:
        if adapter_name in getattr(model, "peft_config", {}):
            unload_lora(model, adapter_name)
        raise ValueError(f"LoRA {path} does not fit this model: {e}") from e
    result = set_peft_model_state_dict(model, state, adapter_name)
    unexpected = [k for k in result.unexpected_keys if "lora_" in k]
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter_name}." in k]
    if unexpected or missing:
        unload_lora(model, adapter_name)
        raise ValueError(
            f"LoRA {path} does not match this model: {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:2]}), {len(missing)} layers without weights (e.g. {missing[:2]})"
        )
    _activate_all(model)
    set_lora_scale(model, scale, adapter_name)
    return lora_layer_names(model, adapter_name)


def _activate_all(model: nn.Module) -> None:
    """peft activates only the first adapter it injected; a second LoRA should add to the first."""
    from peft.tuners.lora import LoraLayer

    names = list(getattr(model, "peft_config", {}))
    for m in model.modules():
        if isinstance(m, LoraLayer):
            m.set_adapter([n for n in names if n in m.lora_A])


def lora_layer_names(target, adapter_name: str | None = None) -> list[str]:
    from peft.tuners.lora import LoraLayer

    model = _denoiser_model(target)
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, LoraLayer) and (adapter_name is None or adapter_name in m.lora_A)
    ]


def set_lora_scale(target, scale: float, adapter_name: str = "lora") -> None:
    """Strength of the LoRA: delta W = scale * (alpha / r) B A (0 switches it off, 1 as trained)."""
    from peft.tuners.lora import LoraLayer

    for m in _denoiser_model(target).modules():
        if isinstance(m, LoraLayer):
            m.set_scale(adapter_name, scale)


def unload_lora(target, adapter_name: str | None = None) -> None:
    """Remove LoRA `adapter_name` (default: every LoRA), restoring the original modules and outputs exactly."""
    from diffusers.utils import recurse_remove_peft_layers
    from peft.tuners.lora import LoraLayer

    model = _denoiser_model(target)
    others = [k for k in getattr(model, "peft_config", {}) if k != adapter_name]
    if adapter_name is None or not others:
        recurse_remove_peft_layers(model)
        model.__dict__.pop("peft_config", None)
        if hasattr(model, "_hf_peft_config_loaded"):  # diffusers' PeftAdapterMixin flag
            model._hf_peft_config_loaded = False
        return
    for m in model.modules():
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A:
            m.delete_adapter(adapter_name)
    model.peft_config.pop(adapter_name, None)


def apply_lora(
    model_dir_or_generator, lora_path: str | Path, scale: float = 1.0, adapter_name: str = "lora", **load
):
    """A `wadi.generation.Generator` with the LoRA at `lora_path` on its denoiser (returned for chaining).

    `model_dir_or_generator`: a Generator, or anything `wadi.generation.load_generator` loads (a merged export,
    a checkpoint, or a teacher dir with `teacher_steps=N`); `load` is passed on to it. A hybrid generator's
    separate teacher is left as it is.
    """
    gen = model_dir_or_generator
    if isinstance(gen, (str, Path)):
        from wadi.generation import load_generator

        gen = load_generator(gen, **load)
    elif load:
        raise ValueError(f"load options {sorted(load)} only apply when a model path is given")
    add_lora(gen, lora_path, adapter_name, scale)
    return gen


# ----------------------------------------------------------------------------- training and saving
def save_lora(model: nn.Module, directory: str | Path, adapter_name: str = "lora") -> Path:
    """Write `directory/pytorch_lora_weights.safetensors` as diffusers' `save_lora_weights` does."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    model = _denoiser_model(model)
    prefix = component_prefix(model)
    config = model.peft_config[adapter_name].to_dict()
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    tensors = {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {f"{prefix}.{k}": v for k, v in config.items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LORA_WEIGHT_NAME
    save_file(tensors, str(path), metadata={"format": "pt", METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return path


@torch.no_grad()
def _encode_images(backbone, images: Tensor) -> Tensor:
    """(N, 3, H, W) in [0, 1] -> VAE latents (mean of the posterior, scaled as the pipelines scale them)."""
    vae = backbone.vae
    dtype = next(vae.parameters()).dtype
    posterior = vae.encode(images.to(backbone.alphas_cumprod.device, dtype) * 2 - 1).latent_dist
    return posterior.mean.float() * vae.config.scaling_factor


def train_lora(
    model_dir: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    *,
    latents: Tensor | None = None,
    images: Tensor | None = None,
    steps: int = 200,
    rank: int = 4,
    alpha: float | None = None,
    lr: float = 1e-3,
    target_modules: Sequence[str] = DEFAULT_TARGET_MODULES,
    batch_size: int = 4,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Path:
    """Fit a LoRA on a diffusers dir (teacher or merged student) with the plain denoising loss; returns its file.

    Targets are clean `latents` (N, C, h, w) or `images` (N, 3, H, W) in [0, 1] (VAE-encoded), paired with
    `prompts` (N of them, or one for all). Loss: mean (eps_hat(x_t, t, c) - eps)^2 with t ~ U{0..T} and
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. steps=0 writes the zero-initialised LoRA (B = 0).
    """
    from peft import LoraConfig, inject_adapter_in_model

    from wadi.generation import load_generator

    if (latents is None) == (images is None):
        raise ValueError("train_lora needs exactly one of `latents` or `images`")
    backbone = load_generator(model_dir, teacher_steps=1, device=device).backbone
    x0_all = latents.float().to(device) if latents is not None else _encode_images(backbone, images)
    n = x0_all.shape[0]
    prompts = list(prompts) * n if len(prompts) == 1 else list(prompts)
    if len(prompts) != n:
        raise ValueError(f"train_lora: {len(prompts)} prompts for {n} targets (give N prompts or one)")
    if tuple(x0_all.shape[1:]) != backbone.latent_shape:
        raise ValueError(
            f"train_lora: targets have latent shape {tuple(x0_all.shape[1:])}, model wants {backbone.latent_shape}"
        )
    embeds, mask = backbone.text_encoder.encode(prompts)
    model = backbone.denoiser.model
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, target_modules=list(target_modules), init_lora_weights=True
    )
    inject_adapter_in_model(config, model, "lora")
    params = [p for name, p in model.named_parameters() if ".lora_" in name]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = torch.Generator(device=device).manual_seed(seed)
    T = backbone.num_train_timesteps
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=rng, device=device)
        x0 = x0_all[idx]
        t = torch.randint(0, T, (len(idx),), generator=rng, device=device)
        eps = torch.randn(x0.shape, generator=rng, device=device)
        x_t = add_noise(x0, eps, backbone.alphas_cumprod, t)
        cond = Conditioning(embeds[idx], None if mask is None else mask[idx])
        loss = F.mse_loss(backbone.denoiser(x_t, t, cond).float(), eps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return save_lora(model, out, "lora")
