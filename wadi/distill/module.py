"""The WaDi LightningModule: alternate a generator step and a fake-score step on every batch (spec 3).

It orchestrates; the math lives in `wadi.distill.losses`, the rotation in `wadi.adapters.lorad`.
One frozen denoiser serves three roles, chosen per forward: the teacher (no adapter), the fake score
(adapter "fake_score") and the generator (adapter "generator").
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from wadi.adapters import get_adapter
from wadi.backbones import Backbone, Conditioning, load_backbone
from wadi.distill.ema import EMA
from wadi.distill.guards import NONFINITE_CHOICES, NonFiniteError, all_finite, check_finite, nonfinite_count
from wadi.distill.losses import add_noise, fake_score_loss, generator_loss
from wadi.distill.vsd import VSDConfig
from wadi.distributed import sync_gradients
from wadi.samplers import one_step, seeded_noise
from wadi.speed import SpeedOptions

GENERATOR = "generator"
FAKE_SCORE = "fake_score"
CHECKPOINT_FORMAT = 1


@contextmanager
def _uncounted(optimizer) -> Iterator[None]:
    """Step a LightningOptimizer without advancing `trainer.global_step`.

    In manual optimization Lightning counts every optimizer step; WaDi takes two per batch, and one
    distillation step should be one global step (max_steps, checkpoint and logging intervals).
    """
    before, after = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = lambda: None
    try:
        yield
    finally:
        optimizer._on_before_step, optimizer._on_after_step = before, after


def _step_seed(seed: int, rank: int, step: int) -> int:
    """A seed for one step of one rank: the step's noise depends on nothing else, so resume is exact."""
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class WaDiModule(L.LightningModule):
    """VSD distillation of a one-step generator with LoRaD adapters."""

    def __init__(
        self,
        backbone: Mapping[str, Any] | Backbone,
        rank: int,
        fake_rank: int = 32,
        vsd: Mapping[str, Any] | VSDConfig | None = None,
        lr: float = 1e-4,
        fake_lr: float = 1e-2,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        grad_clip: float = 1.0,
        fake_grad_clip: float = 1.0,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        compile_passes: bool | str = False,
        compile_backend: str = "inductor",
        base_dtype: str = "auto",
        seed: int = 0,
        nonfinite: str = "stop",
        load_text_encoder: bool = True,
        run_config: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | str | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold adapters only; the frozen base comes from disk
        prebuilt = isinstance(backbone, Backbone)
        self.vsd = VSDConfig.from_mapping(vsd)
        self.save_hyperparameters(
            ignore=["optimizer", "run_config", "vsd"] + (["backbone"] if prebuilt else [])
        )
        self.hparams["vsd"] = self.vsd.as_dict()
        # Refuses bad compile / gradient_checkpointing values now; applied to the denoiser below and at setup.
        SpeedOptions(compile_passes, compile_backend, gradient_checkpointing=bool(gradient_checkpointing))
        if nonfinite not in NONFINITE_CHOICES:
            raise ValueError(
                f"nonfinite must be stop (end the run with an error at the first NaN/inf loss or gradient) or "
                f"skip (skip that optimizer step and count it), got {nonfinite!r}"
            )
        self._skipped = 0  # optimizer steps skipped for a non-finite loss or gradient (nonfinite=skip)
        for role, r in ((GENERATOR, rank), (FAKE_SCORE, fake_rank)):
            if int(r) < 1:
                raise ValueError(f"{'rank' if role == GENERATOR else 'fake_rank'} must be >= 1, got {r}")
        # A prebuilt Backbone (benchmarks, notebooks) skips loading; a config dict loads from disk.
        self.backbone: Backbone = (
            backbone if prebuilt else load_backbone(backbone, load_text=load_text_encoder)
        )
        cfg = self.backbone.cfg
        model = self.backbone.denoiser.model
        self.adapter = get_adapter(adapter)  # None: LoRaD with conf/adapter/lorad.yaml
        gen, fake = cfg.targets(GENERATOR, self.adapter), cfg.targets(FAKE_SCORE, self.adapter)
        self.generator_layers = self.adapter.attach(model, GENERATOR, int(rank), gen)
        self.fake_score_layers = self.adapter.attach(model, FAKE_SCORE, int(fake_rank), fake)
        if gradient_checkpointing:
            self.denoiser.update_speed(gradient_checkpointing=True)
        self.ema = EMA(self.adapter.parameters(model, GENERATOR), ema_decay) if ema_decay else None
        self._gradient = self.vsd.gradient_fn()
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, weight_decay=0.0)
        self.run_config = dict(run_config) if run_config is not None else None
        self._null: Conditioning | None = None
        # Without a text encoder (training from an embedding cache), prompts outside the batch (sample grids,
        # evaluation) are looked up here: set by wadi.train to the cache's `lookup`.
        self.prompt_lookup: Callable[[list[str]], tuple[Tensor, Tensor | None]] | None = None

    # ----------------------------------------------------------------- roles and conditioning
    @property
    def denoiser(self):
        return self.backbone.denoiser

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.backbone.alphas_cumprod

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return self.adapter.parameters(self.denoiser.model, GENERATOR)

    def fake_score_parameters(self) -> list[torch.nn.Parameter]:
        return self.adapter.parameters(self.denoiser.model, FAKE_SCORE)

    def _embed_dtype(self) -> torch.dtype:
        return next(self.denoiser.model.parameters()).dtype

    def conditioning(self, batch: Mapping[str, Any]) -> Conditioning:
        """Prompt conditioning from cached embeddings if the batch has them, else the text encoder, else the
        cache's lookup by prompt (sample grids and evaluation when training from a cache)."""
        if "prompt_embeds" in batch:
            return Conditioning(batch["prompt_embeds"].to(self._embed_dtype()), batch.get("prompt_mask"))
        embeds, mask = self._encode_prompts(list(batch["prompt"]))
        device = self.device
        return Conditioning(
            embeds.to(device, self._embed_dtype()), mask.to(device) if mask is not None else None
        )

    def _encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """(embeds, mask) from the text encoder, else from the embedding cache's lookup (training from a cache)."""
        if self.backbone.text_encoder is not None:
            return self.backbone.text_encoder.encode(prompts)
        if self.prompt_lookup is not None:
            return self.prompt_lookup(prompts)
        raise RuntimeError(
            "no text encoder and no embedding cache to look prompts up in: load the text encoder or set cache_dir"
        )

    def null_conditioning(self, batch: Mapping[str, Any] | None = None) -> Conditioning:
        """The empty prompt c0 (one row), encoded once."""
        if batch is not None and "null_embeds" in batch:
            return Conditioning(batch["null_embeds"][:1].to(self._embed_dtype()), batch.get("null_mask"))
        if self._null is None:
            embeds, mask = self._encode_prompts([""])
            self._null = Conditioning(embeds, mask)
        return self._null.to(self.device, self._embed_dtype())

    # ----------------------------------------------------------------- the two steps
    def _rng(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        return g.manual_seed(_step_seed(self.hparams.seed, self.global_rank, self.global_step))

    def _randn(self, shape: tuple[int, ...], rng: torch.Generator) -> Tensor:
        return torch.randn(shape, generator=rng, device=self.device)

    def generator_step(
        self, cond: Conditioning, uncond: Conditioning, rng: torch.Generator
    ) -> dict[str, Tensor]:
        """Spec 3, generator: x0 = G(z, c); g from the real and fake scores (vsd.gradient); loss with gradient g/numel."""
        vsd = self.vsd
        batch = len(cond)
        z = self._randn((batch, *self.backbone.latent_shape), rng)
        x0 = one_step(self.denoiser, z, cond, self.alphas_cumprod, GENERATOR, self.backbone.cfg.alpha_T)
        t = torch.randint(vsd.t_min, vsd.t_max + 1, (batch,), generator=rng, device=self.device)
        eps = self._randn(tuple(x0.shape), rng)
        x_t = add_noise(x0.detach(), eps, self.alphas_cumprod, t).to(self._embed_dtype())
        with torch.no_grad():
            eps_real = self.denoiser.cfg(x_t, t, cond, uncond, vsd.guidance_scale, None)
            eps_fake = self.denoiser.cfg(x_t, t, cond, uncond, vsd.fake_scale, FAKE_SCORE)
        g = self._gradient(x0, x_t, eps_real, eps_fake, self.alphas_cumprod, t)
        loss = generator_loss(x0, g)
        return {
            "loss": loss,
            "x0": x0,
            "g_norm": g.norm() / g.numel() ** 0.5,
            "g_nonfinite": nonfinite_count(g),
        }

    def fake_score_step(
        self, x0: Tensor, cond: Conditioning, uncond: Conditioning, rng: torch.Generator
    ) -> dict[str, Tensor]:
        """Spec 3, fake score: denoising loss on the detached generator sample, a share of null prompts."""
        vsd = self.vsd
        batch = x0.shape[0]
        t_max = self.backbone.num_train_timesteps - 1 if vsd.fake_t_max is None else vsd.fake_t_max
        t = torch.randint(vsd.fake_t_min, t_max + 1, (batch,), generator=rng, device=self.device)
        eps = self._randn(tuple(x0.shape), rng)
        x_t = add_noise(x0.detach(), eps, self.alphas_cumprod, t).to(self._embed_dtype())
        draws = batch if vsd.caption_drop == "sample" else 1
        drop = (torch.rand(draws, generator=rng, device=self.device) < vsd.uncond_prob).expand(batch)
        eps_hat = self.denoiser(x_t, t, cond.where(drop, uncond.expand(batch)), FAKE_SCORE)
        return {"loss": fake_score_loss(eps_hat, eps, self.alphas_cumprod, t)}

    def _optimize(self, optimizer, loss: Tensor, params: list, clip: float, role: str) -> tuple[Tensor, bool]:
        """Backward, clip and step; (gradient norm, stepped). A non-finite loss or gradient never reaches the
        optimizer: `nonfinite=stop` raises NonFiniteError, `skip` drops the step. The decision reads the norm
        after the gradient all-reduce, so every rank takes the same one (costs one host sync per step)."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        sync_gradients(params)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        if not bool(torch.isfinite(norm)):
            optimizer.zero_grad(set_to_none=True)
            self._skipped += 1
            if self.hparams.nonfinite == "stop":
                raise NonFiniteError(
                    f"step {self.global_step}: the {role} loss is {float(loss.detach()):.4g} and its gradient "
                    f"norm {float(norm):.4g}; nonfinite=stop ended the run before the optimizer step, so the "
                    "weights and every checkpoint are finite (resume from the last one with ckpt_path=last). "
                    "Lower lr / guidance_scale, or pass nonfinite=skip to skip such steps and count them "
                    "(train/nonfinite_skipped)."
                )
            return norm, False
        optimizer.step()
        if not all_finite(params):
            raise NonFiniteError(
                f"step {self.global_step}: the {role} adapter weights became non-finite in an optimizer step with "
                f"a finite gradient (norm {float(norm):.4g}): the learning rate or optimizer settings overflow. "
                "Nothing non-finite is saved; resume from the last checkpoint with a smaller lr."
            )
        return norm, True

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        opt_g, opt_f = self.optimizers()
        rng = self._rng()
        cond = self.conditioning(batch)
        uncond = self.null_conditioning(batch)
        gen = self.generator_step(cond, uncond, rng)
        norm_g, stepped = self._optimize(
            opt_g, gen["loss"], self.generator_parameters(), self.hparams.grad_clip, GENERATOR
        )
        if self.ema is not None and stepped:
            self.ema.update()
        for _ in range(self.vsd.fake_steps):  # DMD2's two time-scale rule: several fake updates per step
            fake = self.fake_score_step(gen["x0"].detach(), cond, uncond, rng)
            with _uncounted(opt_f):
                norm_f, _ = self._optimize(
                    opt_f, fake["loss"], self.fake_score_parameters(), self.hparams.fake_grad_clip, FAKE_SCORE
                )
        batch_size = len(cond)
        log = partial(self.log, on_step=True, batch_size=batch_size)
        log("train/loss_generator", gen["loss"].detach(), prog_bar=True)
        log("train/loss_fake_score", fake["loss"].detach(), prog_bar=True)
        log("train/grad_norm_generator", norm_g)
        log("train/grad_norm_fake_score", norm_f)
        log("train/vsd_g_rms", gen["g_norm"].detach())
        log("train/vsd_g_nonfinite", gen["g_nonfinite"].float())
        log("train/nonfinite_skipped", float(self._skipped))
        if "pass" in batch:
            log("train/prompt_epoch", float(batch["pass"]))

    def configure_optimizers(self):
        gen = self.optimizer_factory(self.generator_parameters(), lr=self.hparams.lr)
        fake = self.optimizer_factory(self.fake_score_parameters(), lr=self.hparams.fake_lr)
        return [gen, fake]

    # ----------------------------------------------------------------- precision of the frozen base
    def setup(self, stage: str) -> None:
        precision = str(getattr(self.trainer, "precision", "32")) if self._trainer is not None else "32"
        if precision.startswith("16"):
            raise ValueError(
                "precision=16-mixed is not supported (no loss scaling in the two-step VSD loop); use bf16-mixed"
            )
        dtype = {
            "auto": torch.bfloat16 if precision.startswith("bf16") else None,
            "float32": None,
            "bfloat16": torch.bfloat16,
            "float16": torch.float16,
        }[self.hparams.base_dtype]
        if dtype is not None:
            self.cast_frozen(dtype)
        # After the cast: the graphs are traced in the base's dtype.
        wanted = self.hparams.compile_passes
        if not wanted or self.denoiser.speed.compile in (wanted, "all"):
            return
        self.denoiser.update_speed(compile=wanted, compile_backend=self.hparams.compile_backend)
        rank_zero_info(
            f"compile={str(self.hparams.compile_passes).lower()}: the first steps compile the VSD passes "
            "(on an H100: ~1.5 min for true, 5-6 min for all; experiments/bench/RESULTS.md)"
        )

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Store frozen weights (denoiser, VAE, text encoder) in `dtype`; adapters stay float32."""
        for p in self.backbone.parameters():
            if not p.requires_grad:
                p.data = p.data.to(dtype)
        # A bf16 base runs natively in bf16 (autocast off inside the denoiser; adapters still build W' in
        # float32 arithmetic): autocast's float32 norms would round-trip every activation through memory.
        self.denoiser.update_speed(compute_dtype=dtype if dtype == torch.bfloat16 else None)
        self._null = None

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate_latents(self, prompts: list[str], seeds: list[int], use_ema: bool = True) -> Tensor:
        cond = self.conditioning({"prompt": prompts})
        z = seeded_noise(seeds, self.backbone.latent_shape, self.device, self._embed_dtype())
        ema = self.ema.swapped() if (use_ema and self.ema is not None) else nullcontext()
        with ema:
            return one_step(self.denoiser, z, cond, self.alphas_cumprod, GENERATOR, self.backbone.cfg.alpha_T)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], use_ema: bool = True) -> Tensor:
        """One-step images in [0, 1], (N, 3, H, W); EMA weights when EMA is on."""
        return self.backbone.decode(self.generate_latents(prompts, seeds, use_ema))

    # ----------------------------------------------------------------- checkpoints
    def adapter_keys(self) -> set[str]:
        return {k for k in self.state_dict() if self.adapter.is_state_key(k) or k.startswith("ema.")}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep adapters, EMA and what resume needs; the frozen base is reloaded from disk."""
        keep = self.adapter_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        check_finite(checkpoint["state_dict"], f"checkpoint at step {checkpoint.get('global_step', '?')}")
        checkpoint["wadi"] = {
            "format": CHECKPOINT_FORMAT,
            "backbone": self.backbone.cfg.name,
            "rank": int(self.hparams.rank),
            "fake_rank": int(self.hparams.fake_rank),
            "ema": self.ema is not None,
            "config": self.run_config,
            "nonfinite_skipped": self._skipped,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": _numpy_state(),
                "python": random.getstate(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_compatible(
            checkpoint,
            self.backbone.cfg.name,
            int(self.hparams.rank),
            int(self.hparams.fake_rank),
            self.ema is not None,
        )
        missing = self.adapter_keys() - set(checkpoint["state_dict"])
        if missing:
            raise ValueError(f"checkpoint lacks {len(missing)} adapter tensors, e.g. {sorted(missing)[:3]}")
        self._skipped = int(checkpoint["wadi"].get("nonfinite_skipped", 0))
        rng = checkpoint["wadi"].get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
            _set_numpy_state(rng["numpy"])
            random.setstate(rng["python"])
            if rng.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _numpy_state() -> dict[str, Any]:
    """numpy's RNG state as plain types and tensors, so Lightning's weights_only loading accepts it."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def _set_numpy_state(state: dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached"]))


def check_checkpoint_compatible(
    checkpoint: Mapping[str, Any], backbone: str, rank: int, fake_rank: int, ema: bool | None = None
) -> None:
    """Refuse a checkpoint made for another backbone, rank or EMA setting, naming both."""
    meta = checkpoint.get("wadi")
    if meta is None:
        raise ValueError("not a wadi checkpoint (no 'wadi' entry): was it written by wadi.train?")
    theirs = {"backbone": meta["backbone"], "rank": meta["rank"], "fake_rank": meta["fake_rank"]}
    ours = {"backbone": backbone, "rank": rank, "fake_rank": fake_rank}
    if ema is not None:
        theirs["ema"], ours["ema"] = meta.get("ema", False), ema
    if theirs != ours:
        diff = ", ".join(
            f"{k}: checkpoint {theirs[k]!r} vs this run {ours[k]!r}" for k in ours if theirs[k] != ours[k]
        )
        raise ValueError(
            f"checkpoint does not match this run ({diff}); use the same backbone/rank/fake_rank/ema"
        )
