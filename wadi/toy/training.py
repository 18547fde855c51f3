"""Toy-asset pretraining as a library: the stages `python -m wadi.toy.pretrain` runs (`pretrain(cfg)`).

Stages (each writes the asset layout under `out_dir`):
  vae         AutoencoderKL on rendered toy images -> toy-sd/vae (scaling_factor = 1 / std of its latents)
  classifier  the toy judge (wadi.toy.classifier.train_classifier) -> toy-classifier/
  sd          UNet2DConditionModel + CLIPTextModel, trained jointly -> toy-sd/ (a StableDiffusionPipeline dir)
  pixart      PixArtTransformer2DModel + T5EncoderModel, trained jointly -> toy-pixart/ (PixArtAlphaPipeline)
The diffusion stages read the VAE from `out_dir` when the vae stage ran, else from `init_dir` (so a long
retraining can be split over several runs). SHA256SUMS is rewritten over `out_dir` at the end.

Why a fixed pool of pre-rendered images: one Python `sample_scene` per image would starve a GPU training
step of ~5 ms; the pool (500k scenes, sampled by worker processes, rendered once on the device as uint8)
is drawn from at random, and its VAE latents and token ids are computed once per stage.

Teachers predict epsilon; captions are dropped to "" with probability `cond_dropout` so CFG works. The
PixArt transformer's learned-sigma channels are trained with the variational bound on the stop-gradient
mean (Nichol & Dhariwal 2021, as DiT and PixArt do). The schedule math (noising, x0, Min-SNR weights,
posterior variances) is wadi.diffusion's.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

import wadi.config  # noqa: F401  (registers resolvers: trainer.precision is ${wadi_precision:})
from wadi.diffusion import add_noise, bcast, min_snr_weight, posterior_log_variance, x0_from_eps
from wadi.distill.ema import EMA
from wadi.toy import teachers
from wadi.toy.assets import write_checksums

log = logging.getLogger(__name__)

STAGES = ("vae", "classifier", "sd", "pixart")

# ------------------------------------------------------------------------------------------------ math


def lr_factor(step: int, warmup_steps: int, progress: float, min_ratio: float = 0.1) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay from 1 to `min_ratio` as `progress` goes 0 -> 1."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp()
    )


def learned_range_vlb(
    x0: Tensor, x_t: Tensor, t: Tensor, eps: Tensor, v: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """Per-sample variational bound term (bits/dim) that trains a learned-range variance (IDDPM eq. 15).

    The model's log-variance interpolates log beta~_t and log beta_t with frac = (v + 1) / 2, exactly as
    DDPMScheduler(variance_type="learned_range") reads it; the mean comes from `eps`, which callers pass
    detached so only `v` learns from this term. Uses the KL at every t (latents have no discrete decoder).
    """
    abar = bcast(alphas_cumprod[t].float(), x0)
    abar_prev = bcast(torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])[t].float(), x0)
    beta = 1 - abar / abar_prev
    coef_x0 = beta * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - beta).sqrt() / (1 - abar)
    max_log, min_log = (bcast(v_[t], x0) for v_ in posterior_log_variance(alphas_cumprod))
    true_mean = coef_x0 * x0.float() + coef_xt * x_t.float()
    x0_hat = x0_from_eps(x_t.float(), eps.float(), abar.sqrt(), (1 - abar).sqrt())
    model_mean = coef_x0 * x0_hat + coef_xt * x_t.float()
    frac = (v.float() + 1) / 2
    model_logvar = frac * max_log + (1 - frac) * min_log
    kl = normal_kl(true_mean, min_log.expand_as(true_mean), model_mean, model_logvar)
    return kl.flatten(1).mean(1) / math.log(2.0)


def diffusion_loss(eps_hat: Tensor, eps: Tensor, weight: Tensor) -> Tensor:
    """Weighted epsilon regression: mean_b w_b * mean((eps_hat - eps)^2)."""
    per_sample = (eps_hat.float() - eps.float()).square().flatten(1).mean(1)
    return (weight * per_sample).mean()


def vae_loss(x: Tensor, reconstruction: Tensor, kl_per_sample: Tensor, kl_weight: float) -> Tensor:
    """L1 + L2 reconstruction per pixel plus kl_weight * KL per pixel (SD's 1e-6 in its summed form)."""
    rec = (reconstruction.float() - x.float()).abs().mean() + (
        reconstruction.float() - x.float()
    ).square().mean()
    return rec + kl_weight * kl_per_sample.float().mean() / x[0].numel()


# ------------------------------------------------------------------------------------------------ data


@dataclass
class ToyPool:
    """Rendered training scenes: images (N, 3, 64, 64) uint8 on the training device, their captions."""

    images: Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def batch(self, idx: Tensor) -> Tensor:
        """Images idx as floats in [-1, 1]."""
        return self.images[idx.to(self.images.device)].float() / 127.5 - 1


def _pack_chunk(seeds: list[int]) -> tuple[dict[str, np.ndarray], list[str]]:
    from wadi.toy.world import caption, pack, sample_scene

    scenes = [sample_scene(s) for s in seeds]
    packed = pack(scenes)
    arrays = {k: getattr(packed, k).numpy() for k in ("bg", "shape", "geometry", "rgb")}
    return arrays, [caption(s) for s in scenes]


def build_pool(
    size: int, seed: int, device: str | torch.device, workers: int = 0, chunk: int = 4096
) -> ToyPool:
    """`size` training scenes of seed stream `seed`, sampled on `workers` processes and rendered on `device`."""
    from wadi.toy.world import PackedScenes, render_packed, sample_seeds

    seeds = sample_seeds(size, seed, "train")
    chunks = [seeds[i : i + chunk] for i in range(0, size, chunk)]
    if workers > 0:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.map(_pack_chunk, chunks)
    else:
        parts = [_pack_chunk(c) for c in chunks]
    images = torch.empty(size, 3, 64, 64, dtype=torch.uint8, device=device)
    captions: list[str] = []
    for i, (arrays, caps) in enumerate(parts):
        packed = PackedScenes(*(torch.from_numpy(arrays[k]) for k in ("bg", "shape", "geometry", "rgb")))
        rendered = render_packed(packed.to(device))  # (n, 3, 64, 64) in [-1, 1]
        images[i * chunk : i * chunk + len(caps)] = (
            ((rendered + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        )
        captions.extend(caps)
    return ToyPool(images, captions)


class RandomBatches(torch.utils.data.IterableDataset):
    """Endless (batch_size,) index tensors into a pool of n items; Lightning moves them to the device."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield torch.randint(self.n, (self.batch_size,), generator=g)


def index_loader(n: int, batch_size: int, seed: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(RandomBatches(n, batch_size, seed), batch_size=None)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def encode_pool(vae: nn.Module, pool: ToyPool, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """Posterior (mean, std) of every pool image, fp16 (N, 4, 16, 16), unscaled."""
    device = pool.images.device
    vae = vae.to(device).eval()
    means, stds = [], []
    for i in range(0, len(pool), batch_size):
        with _autocast(device):
            dist = vae.encode(pool.batch(torch.arange(i, min(i + batch_size, len(pool))))).latent_dist
        means.append(dist.mean.half())
        stds.append(dist.std.half())
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def tokenize_pool(tokenizer, captions: list[str], device) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both (N, model_max_length) on `device`."""
    tokens = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    return tokens["input_ids"].to(device), tokens["attention_mask"].to(device)


# ------------------------------------------------------------------------------------------------ modules


class _Stage(L.LightningModule):
    """Shared optimisation: AdamW, warmup + cosine LR, an optional EMA of every trainable parameter."""

    def __init__(
        self,
        lr: float,
        warmup_steps: int,
        total_steps: int,
        ema_decay: float | None,
        max_minutes: float | None = None,
    ) -> None:
        super().__init__()
        self.lr, self.warmup_steps, self.total_steps = lr, warmup_steps, total_steps
        self.max_seconds = 60.0 * max_minutes if max_minutes else None
        self.start_time: float | None = None
        self.ema_decay = ema_decay
        self.ema: EMA | None = None
        self.last_loss = float("nan")
        self.log_every = 0

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def progress(self, step: int) -> float:
        """Fraction of the run done: of the steps, or of the wall-clock budget if that runs out first
        (the LR decays fully either way, so a time-capped GPU run still ends at its low LR)."""
        done = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.max_seconds and self.start_time is not None:
            done = max(done, (time.time() - self.start_time) / self.max_seconds)
        return done

    def on_fit_start(self) -> None:
        self.start_time = time.time()
        if self.ema_decay and self.ema is None:
            self.ema = EMA(self.trainable(), self.ema_decay).to(self.device)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.trainable(), lr=self.lr, betas=(0.9, 0.99), weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.warmup_steps, self.progress(s))
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update()
        self._loss = outputs["loss"].detach()  # read back only when logged (a .item() per step syncs)
        step = self.global_step
        if self.log_every and step % self.log_every == 0:
            log.info(
                "%s step %d/%d loss %.4f", type(self).__name__, step, self.total_steps, float(self._loss)
            )

    def finalize(self) -> None:
        """Put the EMA weights into the live parameters (what gets saved)."""
        if getattr(self, "_loss", None) is not None:
            self.last_loss = float(self._loss)
        if self.ema is not None:
            self.ema.copy_to_params()


class VAEStage(_Stage):
    def __init__(self, vae: nn.Module, pool: ToyPool, kl_weight: float, **opt) -> None:
        super().__init__(**opt)
        self.vae, self.pool, self.kl_weight = vae, pool, kl_weight

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        x = self.pool.batch(idx)  # (B, 3, 64, 64)
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample
        return vae_loss(x, reconstruction, posterior.kl(), self.kl_weight)


class DenoiserStage(_Stage):
    """Joint training of a text encoder and an epsilon denoiser on pool latents x0 = scaling * z."""

    use_mask = False

    def __init__(
        self,
        denoiser: nn.Module,
        text_encoder: nn.Module,
        latents: tuple[Tensor, Tensor],
        tokens: tuple[Tensor, Tensor],
        empty_tokens: tuple[Tensor, Tensor],
        scaling_factor: float,
        alphas_cumprod: Tensor,
        cond_dropout: float,
        snr_gamma: float | None,
        **opt,
    ) -> None:
        super().__init__(**opt)
        self.denoiser, self.text_encoder = denoiser, text_encoder
        self.latent_mean, self.latent_std = latents
        self.ids, self.mask = tokens
        self.empty_ids, self.empty_mask = empty_tokens
        self.scaling_factor, self.cond_dropout, self.snr_gamma = scaling_factor, cond_dropout, snr_gamma
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)

    def predict(self, x_t: Tensor, t: Tensor, embeds: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_loss(self, out: Tensor, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor | None:
        return None

    def training_step(self, idx: Tensor, batch_idx: int) -> Tensor:
        dev = self.latent_mean.device
        idx = idx.to(dev)
        z = self.latent_mean[idx].float() + self.latent_std[idx].float() * torch.randn(
            idx.shape[0], *self.latent_mean.shape[1:], device=dev
        )
        x0 = self.scaling_factor * z  # (B, 4, 16, 16)
        drop = torch.rand(idx.shape[0], device=dev) < self.cond_dropout
        ids = torch.where(drop[:, None], self.empty_ids.to(dev), self.ids[idx])
        mask = torch.where(drop[:, None], self.empty_mask.to(dev), self.mask[idx])
        embeds = self.text_encoder(ids, attention_mask=mask if self.use_mask else None)[0]
        t = torch.randint(0, self.alphas_cumprod.shape[0], (idx.shape[0],), device=dev)
        eps = torch.randn_like(x0)
        x_t = add_noise(x0, eps, self.alphas_cumprod, t)
        out = self.predict(x_t, t, embeds, mask)
        loss = diffusion_loss(
            out[:, : x0.shape[1]], eps, min_snr_weight(self.alphas_cumprod, t, self.snr_gamma)
        )
        extra = self.extra_loss(out, x0, x_t, t)
        return loss if extra is None else loss + extra


class UNetStage(DenoiserStage):
    """toy-sd: CLIP embeddings of all max_length tokens, no mask (as StableDiffusionPipeline feeds them)."""

    def predict(self, x_t, t, embeds, mask):
        return self.denoiser(x_t, t, encoder_hidden_states=embeds, return_dict=False)[0]


class PixArtStage(DenoiserStage):
    """toy-pixart: T5 embeddings with their attention mask; learned sigma trained by the VLB term."""

    use_mask = True

    def __init__(self, *args, vlb_weight: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.vlb_weight = vlb_weight

    def predict(self, x_t, t, embeds, mask):
        added = {"resolution": None, "aspect_ratio": None}
        return self.denoiser(
            x_t,
            encoder_hidden_states=embeds,
            encoder_attention_mask=mask,
            timestep=t,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]

    def extra_loss(self, out, x0, x_t, t):
        c = x0.shape[1]
        if out.shape[1] != 2 * c or not self.vlb_weight:
            return None
        vlb = learned_range_vlb(x0, x_t, t, out[:, :c].detach(), out[:, c:], self.alphas_cumprod)
        return self.vlb_weight * vlb.mean()


# ------------------------------------------------------------------------------------------------ stages


def _trainer(cfg: DictConfig, steps: int, max_minutes: float | None) -> L.Trainer:
    tc = cfg.trainer
    return L.Trainer(
        accelerator="gpu" if _device(cfg.device).type == "cuda" else "cpu",
        devices=1,
        precision=tc.precision,
        max_steps=steps,
        max_time={"seconds": 60.0 * max_minutes} if max_minutes else None,
        gradient_clip_val=tc.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _plain(node) -> dict[str, Any]:
    """A config node as plain Python (lists, not ListConfig), for the builders in wadi.toy.teachers."""
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}


def _steps(cfg: DictConfig, stage_cfg: DictConfig) -> int:
    return int(cfg.trainer.max_steps) if cfg.trainer.get("max_steps") else int(stage_cfg.steps)


def _fit(
    cfg: DictConfig, module: _Stage, n_items: int, batch_size: int, seed: int, stage: str
) -> dict[str, Any]:
    """Train `module` for its total_steps; return what the stage reports (steps, time, loss)."""
    module.log_every = int(cfg.trainer.log_every)
    trainer = _trainer(cfg, module.total_steps, module.max_seconds and module.max_seconds / 60)
    start = time.time()
    trainer.fit(module, train_dataloaders=index_loader(n_items, batch_size, seed))
    wall = time.time() - start
    module.finalize()
    return {
        "config": _plain(cfg[stage]),
        "device": torch.cuda.get_device_name()
        if torch.cuda.is_available() and _device(cfg.device).type == "cuda"
        else "cpu",
        "steps": int(trainer.global_step),
        "batch_size": batch_size,
        "wall_s": round(wall, 1),
        "steps_per_s": round(trainer.global_step / max(wall, 1e-9), 2),
        "last_logged_loss": module.last_loss,
    }


def _previous_steps(asset_dir: Path, stage: str) -> int:
    """Training steps recorded for `stage` in asset_dir/pretrain.json (0 when none)."""
    path = asset_dir / "pretrain.json"
    if not path.is_file():
        return 0
    info = json.loads(path.read_text()).get(stage, {})
    return int(info.get("total_steps", info.get("steps", 0)))


def _record(asset_dir: Path, stage: str, info: dict[str, Any]) -> None:
    """Merge a stage's report into asset_dir/pretrain.json (how the shipped weights were made)."""
    path = asset_dir / "pretrain.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[stage] = info
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _opt(stage_cfg: DictConfig, steps: int) -> dict[str, Any]:
    return {
        "lr": float(stage_cfg.lr),
        "warmup_steps": min(int(stage_cfg.warmup_steps), max(1, steps // 10)),
        "total_steps": steps,
        "ema_decay": stage_cfg.get("ema_decay"),
        "max_minutes": stage_cfg.get("max_minutes"),
    }


def run_vae(cfg: DictConfig, pool: ToyPool, out: Path) -> dict[str, Any]:
    c = cfg.vae
    steps = _steps(cfg, c)
    L.seed_everything(cfg.seed, verbose=False)
    vae = teachers.build_vae(**_plain(cfg.arch.vae))
    module = VAEStage(vae, pool, float(c.kl_weight), **_opt(c, steps))
    info = _fit(cfg, module, len(pool), int(c.batch_size), cfg.seed, "vae")
    mean, std = encode_pool(
        vae, ToyPool(pool.images[: int(c.scale_samples)], pool.captions[: int(c.scale_samples)])
    )
    z = mean.float() + std.float() * torch.randn_like(mean, dtype=torch.float32)
    scaling = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=scaling)
    vae_dir = out / "toy-sd" / "vae"
    teachers.cast_copy(vae, torch.float16).save_pretrained(vae_dir, safe_serialization=True)
    info.update(scaling_factor=scaling, parameters=teachers.num_parameters(vae), latent_mean=float(z.mean()))
    _record(out / "toy-sd", "vae", info)
    return info


def pool_labels(pool: ToyPool) -> dict[str, Tensor]:
    """Per-slot labels (N, 5) of every pool image, read from its caption (what prompt accuracy compares)."""
    from wadi.toy.world import parse_caption, stack_labels

    labels = stack_labels([parse_caption(c) for c in pool.captions])
    return {k: v.to(pool.images.device) for k, v in labels.items()}


def run_classifier(
    cfg: DictConfig, device: torch.device, out: Path, pool: ToyPool | None = None
) -> dict[str, Any]:
    """Train the toy judge; from the rendered pool when there is one (fast on a GPU), else fresh renders."""
    from wadi.toy.classifier import num_parameters, save_classifier, train_classifier

    c = cfg.classifier
    steps = _steps(cfg, c)
    start = time.time()
    model = train_classifier(
        steps,
        int(c.batch_size),
        device=device,
        seed=cfg.seed,
        lr=float(c.get("lr", 3e-3)),
        eval_size=int(c.eval_size),
        log_every=int(cfg.trainer.log_every),
        pool_images=pool.images if pool is not None else None,
        pool_labels=pool_labels(pool) if pool is not None else None,
        max_minutes=c.get("max_minutes"),
    )
    path = save_classifier(model, out / "toy-classifier")
    info = {
        "config": _plain(c),
        "steps": int(model.trained_steps),
        "from_pool": pool is not None,
        "batch_size": int(c.batch_size),
        "wall_s": round(time.time() - start, 1),
        "parameters": num_parameters(model),
        **(model.heldout_metrics or {}),
    }
    _record(path, "classifier", info)
    return info


def load_vae(root: Path, device) -> nn.Module:
    from diffusers import AutoencoderKL

    vae_dir = root / "toy-sd" / "vae"
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"the diffusion stages need the toy VAE at {vae_dir}: run the vae stage first (stages=[vae,...]) or "
            f"point init_dir at a folder holding toy-sd/vae"
        )
    return (
        AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32)
        .to(device)
        .eval()
        .requires_grad_(False)
    )


def load_teacher_parts(folder: Path, kind: str) -> tuple[nn.Module, nn.Module]:
    """(text encoder, denoiser) of a saved toy teacher, in float32 and trainable, to continue training."""
    from diffusers import PixArtTransformer2DModel, UNet2DConditionModel
    from transformers import CLIPTextModel, T5EncoderModel

    denoiser_dir = folder / ("unet" if kind == "sd" else "transformer")
    if not (denoiser_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"{kind}.resume=true needs a saved teacher at {folder} (missing {denoiser_dir}/config.json); "
            "set init_dir to an asset root holding it, or resume=false to train from scratch"
        )
    encoder_cls = CLIPTextModel if kind == "sd" else T5EncoderModel
    denoiser_cls = UNet2DConditionModel if kind == "sd" else PixArtTransformer2DModel
    text_encoder = encoder_cls.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
    denoiser = denoiser_cls.from_pretrained(denoiser_dir, torch_dtype=torch.float32)
    return text_encoder.train().requires_grad_(True), denoiser.train().requires_grad_(True)


def run_denoiser(
    cfg: DictConfig,
    kind: str,
    pool: ToyPool,
    vae: nn.Module,
    latents: tuple[Tensor, Tensor],
    out: Path,
    init: Path | None = None,
) -> dict[str, Any]:
    """kind 'sd' (UNet + CLIP) or 'pixart' (PixArt + T5): train jointly, save the pipeline directory.

    With `init` (an asset root) and `<kind>.resume=true`, training continues from the teacher saved there
    (a fresh warmup + cosine cycle), so a longer teacher can be built over several time-capped GPU calls.
    """
    c = cfg[kind]
    steps = _steps(cfg, c)
    L.seed_everything(cfg.seed + (1 if kind == "sd" else 2), verbose=False)
    device = pool.images.device
    name = "toy-sd" if kind == "sd" else "toy-pixart"
    tokenizer = teachers.build_tokenizer("clip" if kind == "sd" else "t5", int(c.max_length))
    if c.get("resume"):
        text_encoder, denoiser = load_teacher_parts((init or out) / name, kind)
    elif kind == "sd":
        text_encoder = teachers.build_clip_text_encoder(tokenizer, **_plain(cfg.arch.clip))
        denoiser = teachers.build_unet(teachers.text_width(text_encoder), **_plain(cfg.arch.unet))
    else:
        text_encoder = teachers.build_t5_encoder(tokenizer, **_plain(cfg.arch.t5))
        denoiser = teachers.build_pixart_transformer(
            teachers.text_width(text_encoder), **_plain(cfg.arch.pixart)
        )
    if kind == "sd":
        stage_cls, extra = UNetStage, {}
    else:
        stage_cls, extra = PixArtStage, {"vlb_weight": float(c.vlb_weight)}
    previous = _previous_steps((init or out) / name, kind) if c.get("resume") else 0
    scheduler = teachers.build_scheduler(kind)
    module = stage_cls(
        denoiser,
        text_encoder,
        latents,
        tokenize_pool(tokenizer, pool.captions, device),
        tokenize_pool(tokenizer, [""], device),
        float(vae.config.scaling_factor),
        scheduler.alphas_cumprod,
        float(c.cond_dropout),
        c.get("snr_gamma"),
        **extra,
        **_opt(c, steps),
    )
    info = _fit(cfg, module, len(pool), int(c.batch_size), cfg.seed, kind)
    info["resumed_after_steps"] = previous
    info["total_steps"] = previous + info["steps"]
    info["parameters"] = {
        "denoiser": teachers.num_parameters(denoiser),
        "text_encoder": teachers.num_parameters(text_encoder),
        "vae": teachers.num_parameters(vae),
    }
    parts = {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}
    if kind == "sd":
        teachers.save_sd_teacher(out / name, unet=denoiser, **parts)
    else:
        teachers.save_pixart_teacher(out / name, transformer=denoiser, **parts)
    _record(out / name, kind, info)
    return info


def pretrain(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Run the selected stages in order; returns {stage: report}."""
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(
            f"unknown pretraining stage(s) {unknown} in `stages`; expected a subset of {list(STAGES)}"
        )
    out = Path(str(cfg.out_dir)).expanduser()
    src = Path(str(cfg.init_dir)).expanduser() if cfg.get("init_dir") else out
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    reports: dict[str, dict[str, Any]] = {}
    pool = None
    if any(s in stages for s in STAGES):
        start = time.time()
        pool = build_pool(int(cfg.data.pool_size), cfg.seed, device, int(cfg.data.workers))
        reports["pool"] = {"images": len(pool), "wall_s": round(time.time() - start, 1)}
        log.info("pool: %d scenes rendered in %.1f s", len(pool), time.time() - start)
    if "vae" in stages:
        reports["vae"] = run_vae(cfg, pool, out)
    if "classifier" in stages:
        reports["classifier"] = run_classifier(cfg, device, out, pool)
    diffusion = [s for s in ("sd", "pixart") if s in stages]
    if diffusion:
        vae = load_vae(out if "vae" in stages else src, device)
        latents = encode_pool(vae, pool)
        for kind in diffusion:
            reports[kind] = run_denoiser(cfg, kind, pool, vae, latents, out, init=src)
    if any((out / d).is_dir() for d in ("toy-sd", "toy-pixart", "toy-classifier")):
        write_checksums(out)
    if cfg.get("report_file"):
        Path(str(cfg.report_file)).write_text(json.dumps(reports, indent=2, default=str) + "\n")
    print(summary_table(reports))
    return reports


def summary_table(reports: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| stage | steps | batch | wall s | steps/s | last loss | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for stage, r in reports.items():
        notes = {
            k: v
            for k, v in r.items()
            if k not in ("steps", "batch_size", "wall_s", "steps_per_s", "last_logged_loss")
        }
        loss = r.get("last_logged_loss")
        rows.append(
            f"| {stage} | {r.get('steps', '')} | {r.get('batch_size', '')} | {r.get('wall_s', '')} | "
            f"{r.get('steps_per_s', '')} | {'' if loss is None else f'{loss:.4f}'} | {json.dumps(notes, default=str)} |"
        )
    return "\n".join(rows)
