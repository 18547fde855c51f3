"""Loading a generator: `load_generator(model)` -> `gen(prompts, seeds) -> (N, 3, H, W)` images in [0, 1].

`model` is a merged WaDi export, a wadi checkpoint (.ckpt, rebuilt from its stored config), or with
`teacher_steps=N` any diffusers directory (the teacher, DDIM + CFG). `generator_from_config` builds one from
a `generation` config node (conf/generation/default.yaml). The library behind `python -m wadi.sample`,
`wadi.evaluate`, `wadi.analyze` and `wadi.analysis.transfer`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import OmegaConf

from wadi.backbones import Conditioning
from wadi.backbones.loading import Backbone, BackboneConfig, load_backbone
from wadi.distill.student import OneStepStudent
from wadi.export import EXPORT_INFO
from wadi.samplers import Sampler, StudentSampler, build_sampler, seeded_noise


class Generator:
    """`gen(prompts, seeds) -> (N, 3, H, W)` images in [0, 1]; one latent per seed, batch-independent."""

    def __init__(
        self,
        backbone: Backbone,
        adapter: str | None,
        steps: int | None,
        guidance_scale: float,
        batch_size: int = 16,
        module=None,
        hybrid_k: int = 0,
        schedule_steps: int = 25,
        teacher_guidance: float = 0.0,
        teacher: Backbone | None = None,
        compile: bool = False,
        student=None,
    ) -> None:
        """`student`: a method's own student (TiUE's loop-free, SwD's scale-wise) sampled when neither `steps` nor
        `hybrid_k` is set; None: the one-step student."""
        self.backbone = backbone
        self.student = student
        self.hybrid_k = hybrid_k
        self.schedule_steps = schedule_steps
        self.teacher_guidance = teacher_guidance
        self.teacher = teacher
        self.adapter = adapter
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.module = module
        self.compiled = False
        if compile:
            self.compile()

    def compile(self, backend="inductor") -> Generator:
        """torch.compile the denoiser and VAE decoder (static shapes: every batch is padded to `batch_size`).

        ~1.5 min of warm-up for ~2x throughput on an H100 (experiments/bench/RESULTS.md): worth it for
        evaluation-sized runs, not for a handful of images.
        """
        from wadi.speed import compile_sampler

        compile_sampler(self.backbone, backend=backend)
        self.compiled = True
        return self

    @property
    def device(self) -> torch.device:
        return self.backbone.alphas_cumprod.device

    def to(self, device) -> Generator:
        (self.module or self.backbone).to(device)
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    @property
    def sampler(self) -> Sampler:
        """The wadi.samplers sampler these settings ask for (`build_sampler`: the one flag dispatch)."""
        teacher = self.teacher.denoiser if self.teacher is not None else None
        if self.student is not None and self.steps is None and self.hybrid_k == 0:
            return StudentSampler(self.student, self.adapter, self.backbone.cfg.alpha_T)
        return build_sampler(
            self.steps,
            self.guidance_scale,
            self.adapter,
            self.hybrid_k,
            self.schedule_steps,
            self.teacher_guidance,
            teacher,
            self.backbone.cfg.alpha_T,
            self.student,
        )

    @torch.no_grad()
    def latents(
        self, prompts: Sequence[str], seeds: Sequence[int], trajectory: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """x0 latents of one batch; every step's predicted x0 is appended to `trajectory` when given."""
        bb = self.backbone
        sampler = self.sampler
        dtype = next(bb.denoiser.parameters()).dtype
        embeds, mask = bb.text_encoder.encode(list(prompts))
        cond = Conditioning(embeds.to(dtype), mask)
        shape = (
            bb.latent_shape
            if not isinstance(sampler, StudentSampler)
            else sampler.student.noise_shape(bb.latent_shape)
        )
        z = seeded_noise(list(seeds), shape, self.device, dtype)
        uncond = None
        if sampler.needs_uncond:
            null_embeds, null_mask = bb.text_encoder.encode([""])
            uncond = Conditioning(null_embeds.to(dtype), null_mask)
        return sampler(bb.denoiser, z, cond, uncond, bb.alphas_cumprod, trajectory)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds")
        out = []
        for i in range(0, len(prompts), self.batch_size):
            chunk_prompts = list(prompts[i : i + self.batch_size])
            chunk_seeds = list(seeds[i : i + self.batch_size])
            n = len(chunk_prompts)
            if self.compiled:  # pad the last batch, so the compiled graphs see one shape only
                chunk_prompts += chunk_prompts[-1:] * (self.batch_size - n)
                chunk_seeds += chunk_seeds[-1:] * (self.batch_size - n)
            x0 = self.latents(chunk_prompts, chunk_seeds)
            out.append(self.backbone.decode(x0)[:n].cpu())
        return torch.cat(out)


def _backbone_cfg_for_dir(path: Path, info: dict | None) -> BackboneConfig:
    """Backbone settings for a plain diffusers directory (export info if present, else read from the dir)."""
    if info is not None:
        return BackboneConfig.from_stored({**info["backbone"], "pretrained": str(path)})
    kind = "pixart" if (path / "transformer").is_dir() else "unet"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    sub = "transformer" if kind == "pixart" else "unet"
    config = json.loads((path / sub / "config.json").read_text())
    vae = json.loads((path / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return BackboneConfig(
        name=path.name,
        kind=kind,
        pretrained=str(path),
        resolution=config["sample_size"] * factor,
        latent_size=config["sample_size"],
        text_max_length=tok.model_max_length,
        use_text_mask=kind == "pixart",
    )


def load_generator(
    model: str | Path,
    teacher_steps: int | None = None,
    guidance_scale: float = 1.0,
    device: str | torch.device = "cpu",
    batch_size: int = 16,
    use_ema: bool = True,
    hybrid_k: int = 0,
    schedule_steps: int = 25,
    teacher_guidance: float = 0.0,
    teacher: str | Path | None = None,
    compile: bool = False,
) -> Generator:
    """A generator from a merged export, a wadi checkpoint (.ckpt) or, with `teacher_steps`, a teacher dir.

    hybrid_k > 0: hybrid sampling, the teacher's first k of `schedule_steps` DDIM steps then the student. A
    checkpoint carries its teacher (the adapter-free base); a merged export records its teacher's directory (an
    older one, or a moved teacher, needs `teacher=<dir>`).
    compile: torch.compile the denoiser and VAE decoder once on `device` (`Generator.compile`).
    """
    hybrid = {"hybrid_k": hybrid_k, "schedule_steps": schedule_steps, "teacher_guidance": teacher_guidance}
    path = Path(str(model)).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"model not found at {path}: expected a wadi export dir, a .ckpt, or a diffusers dir"
        )
    if path.is_file():
        module = load_module_from_checkpoint(path)
        if use_ema and module.ema is not None:
            module.ema.copy_to_params()
        module.eval()
        student = None if isinstance(module.student, OneStepStudent) else module.student
        gen = Generator(
            module.backbone,
            "generator",
            teacher_steps,
            guidance_scale,
            batch_size,
            module=module,
            student=student,
            **hybrid,
        )
        gen = gen.to(device)
        return gen.compile() if compile else gen
    info_path = path / EXPORT_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if info is None and teacher_steps is None:
        raise ValueError(
            f"{path} is not a wadi export (no {EXPORT_INFO}); to sample it as a teacher pass teacher_steps=N"
        )
    backbone = load_backbone(_backbone_cfg_for_dir(path, info))
    backbone.eval()
    teacher_bb = None
    if hybrid_k > 0:
        teacher = (
            teacher if teacher is not None else (info or {}).get("teacher")
        )  # an export records its teacher
        if teacher is None:
            raise ValueError(
                "hybrid sampling from a merged export needs teacher=<the teacher's diffusers dir>"
            )
        if not Path(str(teacher)).is_dir():
            raise FileNotFoundError(
                f"hybrid sampling: the teacher {teacher} (recorded in {info_path}, or teacher=) is not there; "
                "pass teacher=<the teacher's diffusers dir>"
            )
        teacher_bb = load_backbone(_backbone_cfg_for_dir(Path(str(teacher)), None), load_vae=False).eval()
    student = student_from_export_info(info) if info is not None else None
    gen = Generator(
        backbone,
        None,
        teacher_steps,
        guidance_scale,
        batch_size,
        teacher=teacher_bb,
        student=student,
        **hybrid,
    ).to(device)
    return gen.compile() if compile else gen


# Students an export may name (`student.method` in its wadi_export.json): a fixed table, never a `_target_` read
# from a file (an export is data, as a checkpoint is).
EXPORT_STUDENTS = {
    "tiue": ("wadi.distill.tiue", "TiUEStudent"),
    "swd": ("wadi.distill.swd", "ScaleWiseStudent"),
}


def student_from_export_info(info: Mapping) -> object | None:
    """The student an export records (TiUE's, SwD's), or None for the one-step student."""
    student = info.get("student")
    if not student:
        return None
    method = student.get("method")
    if method not in EXPORT_STUDENTS:
        raise ValueError(
            f"the export's {EXPORT_INFO} names student method {method!r}; this wadi knows {sorted(EXPORT_STUDENTS)}"
        )
    import importlib

    module_name, class_name = EXPORT_STUDENTS[method]
    return getattr(importlib.import_module(module_name), class_name).from_export_info(student)


def load_checkpoint_file(path: str | Path) -> dict:
    """torch.load with weights_only=True: a checkpoint is data, never code (a crafted pickle cannot run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for code or unknown globals, RuntimeError for a non-zip file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path} is not a wadi checkpoint that loads as plain data (tensors, numbers, strings): {first}. "
            "wadi never unpickles code from a checkpoint; re-save it with wadi.train."
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} is not a wadi checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def load_module_from_checkpoint(path: str | Path):
    """Rebuild the WaDiModule a checkpoint was trained with (from its stored config) and load its adapters."""
    from hydra.utils import instantiate

    from wadi.distill.guards import check_finite

    checkpoint = load_checkpoint_file(path)
    meta = checkpoint.get("wadi")
    if meta is None or not meta.get("config"):
        raise ValueError(f"{path} is not a wadi checkpoint (no 'wadi' entry with the run's config)")
    check_finite(checkpoint["state_dict"], f"loading checkpoint {path}")  # before the model loads
    cfg = OmegaConf.create(meta["config"])
    stored = OmegaConf.to_container(
        cfg.module.backbone, resolve=True
    )  # an earlier wadi kept recipe keys here
    cfg.module.backbone = OmegaConf.create(asdict(BackboneConfig.from_stored(stored)))
    module = instantiate(cfg.module, _convert_="all")
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"], strict=False)
    return module


def prompt_list(value, key: str = "prompts") -> list[str]:
    """The prompts of a command's `prompts=` value: a string is ONE prompt (`prompts="a red circle"`), not one per
    character; a list gives one prompt per entry. Empty values raise a ConfigError naming `key`."""
    from wadi.config import ConfigError

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple) or not value:
        raise ConfigError(
            f"{key}={value!r}: expected one prompt (prompts='a red circle') or a list "
            '(prompts=\'["a red circle","a blue star"]\')'
        )
    prompts = [" ".join(str(p).split()) if isinstance(p, str | int | float) else None for p in value]
    bad = [value[i] for i, p in enumerate(prompts) if not p]
    if bad:
        raise ConfigError(f"{key}: {bad[0]!r} is not a prompt (expected a non-empty string)")
    return prompts


def generator_from_config(generation: Mapping, device: str | torch.device = "cpu") -> Generator:
    """`load_generator` from a `generation` config node (conf/generation/default.yaml): `model` and the
    sampling options (teacher_steps, guidance_scale, hybrid_k, schedule_steps, teacher_guidance, teacher,
    use_ema, batch_size, compile)."""
    if OmegaConf.is_config(generation):
        options = OmegaConf.to_container(generation, resolve=True)
    else:
        options = dict(generation)
    model = options.pop("model")
    return load_generator(model, device=device, **options)
