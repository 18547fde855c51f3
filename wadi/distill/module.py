"""The WaDi LightningModule: alternate a generator step and a fake-score step on every batch (spec 3).

It orchestrates; the method (`wadi.distill.method`: a student and loss terms) says what is computed, the math
lives in `wadi.distill.losses`, the rotation in `wadi.adapters.lorad`.
One frozen denoiser serves three roles, chosen per forward: the teacher (no adapter), the fake score
(adapter "fake_score") and the generator (adapter "generator"); each role has its own adapter kind
(`generator.adapter`, `fake_score.adapter`: lorad, lora, dora or full; `wadi.adapters`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from wadi.adapters.base import role_adapters
from wadi.backbones import Backbone, Conditioning, load_backbone
from wadi.distill.ema import EMA
from wadi.distill.guards import NONFINITE_CHOICES, StepGuard, check_finite
from wadi.distill.method import Method, _build, build_method, combine
from wadi.distill.roles import RoleConfig
from wadi.distill.vsd import VSDConfig
from wadi.distributed import sync_gradients
from wadi.samplers import seeded_noise
from wadi.speed import SpeedOptions, check_cuda_graphs_device

if TYPE_CHECKING:
    from wadi.data.cache import TextEncoderLike

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


def _role(
    given: Mapping[str, Any] | RoleConfig | None, node: str, shortcuts: dict[str, Any], default: RoleConfig
) -> RoleConfig:
    """A role's config from its node, with the keyword shortcuts (rank=, lr=) applied on top."""
    base = default.as_dict() if given is None else RoleConfig.from_mapping(given, node).as_dict()
    return RoleConfig.from_mapping(base | {k: v for k, v in shortcuts.items() if v is not None}, node)


def _step_seed(seed: int, rank: int, step: int) -> int:
    """A seed for one step of one rank: the step's noise depends on nothing else, so resume is exact."""
    digest = hashlib.sha256(f"{seed}/{rank}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class WaDiModule(L.LightningModule):
    """Distillation of a generator with adapters on one frozen backbone: the method (student + loss terms,
    `wadi.distill.method`) says what is computed, this module runs it (two optimizer steps per batch)."""

    def __init__(
        self,
        backbone: Mapping[str, Any] | Backbone,
        generator: Mapping[str, Any] | RoleConfig | None = None,
        fake_score: Mapping[str, Any] | RoleConfig | None = None,
        method: Mapping[str, Any] | Method | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | Mapping[str, Any] | None = None,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        compile_passes: bool | str = False,
        compile_backend: str = "inductor",
        base_dtype: str = "auto",
        seed: int = 0,
        nonfinite: str = "stop",
        text_encoder: TextEncoderLike | None | bool = None,
        run_config: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | str | None = None,
        *,
        rank: int | None = None,
        fake_rank: int | None = None,
        lr: float | None = None,
        fake_lr: float | None = None,
        vsd: Mapping[str, Any] | VSDConfig | None = None,
        cuda_graphs: bool = False,
    ) -> None:
        """`generator` / `fake_score`: each role's {adapter, rank, lr, grad_clip} (`RoleConfig`). `method`: the
        student and loss terms (None: WaDi's one-step student and VSD). `text_encoder`: what encodes prompts
        outside the batch (an `encode(prompts) -> (embeds, mask)` object, e.g. the embedding cache's); None loads
        the backbone's own; False: none at all (batches must carry embeddings). `rank`, `fake_rank`, `lr`, `fake_lr` and `vsd` are shortcuts (scripts, tests) into
        `generator`, `fake_score` and the default method's VSD config. `cuda_graphs`: replay the compiled passes
        as CUDA graphs (`wadi.speed.SpeedOptions.cuda_graphs`; GPU only, with compile true or all)."""
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False  # checkpoints hold adapters only; the frozen base comes from disk
        prebuilt = isinstance(backbone, Backbone)
        self.generator_config = _role(generator, GENERATOR, {"rank": rank, "lr": lr}, RoleConfig(lr=1e-4))
        self.fake_score_config = _role(
            fake_score, FAKE_SCORE, {"rank": fake_rank, "lr": fake_lr}, RoleConfig(rank=32, lr=1e-2)
        )
        if vsd is not None and method is not None:
            raise ValueError("give the VSD config inside `method` or as `vsd`, not both")
        self.method: Method = build_method(method, vsd)
        self.student = self.method.student
        self.vsd = self.method.vsd  # the VSD term's config (None for a method without VSD)
        self.save_hyperparameters(
            ignore=["optimizer", "run_config", "vsd", "method", "text_encoder", "generator", "fake_score"]
            + (["backbone"] if prebuilt else [])
        )
        self.hparams["generator"] = self.generator_config.as_dict()
        self.hparams["fake_score"] = self.fake_score_config.as_dict()
        self.hparams["rank"] = self.generator_config.rank  # what checkpoints and exports record
        self.hparams["fake_rank"] = self.fake_score_config.rank
        self.hparams["method"] = self.method.name
        if self.vsd is not None:
            self.hparams["vsd"] = self.vsd.as_dict()
        # Refuses bad compile / gradient_checkpointing values now; applied to the denoiser below and at setup.
        SpeedOptions(
            compile_passes,
            compile_backend,
            gradient_checkpointing=bool(gradient_checkpointing),
            cuda_graphs=cuda_graphs,
        )
        if nonfinite not in NONFINITE_CHOICES:
            raise ValueError(
                f"nonfinite must be stop (end the run with an error at the first NaN/inf loss or gradient) or "
                f"skip (skip that optimizer step and count it), got {nonfinite!r}"
            )
        self._guard = StepGuard(nonfinite)  # counts optimizer steps skipped for a non-finite gradient (skip)
        # A prebuilt Backbone (benchmarks, notebooks) skips loading; a config dict loads from disk. A given text
        # encoder (the embedding cache's) means the backbone's own is never loaded.
        self.backbone: Backbone = (
            backbone if prebuilt else load_backbone(backbone, load_text=text_encoder is None)
        )
        self._given_text_encoder = text_encoder or None
        cfg = self.backbone.cfg
        model = self.backbone.denoiser.model
        # One adapter kind per role (`generator.adapter`, `fake_score.adapter`); `adapter` (the run's adapter node)
        # configures the roles of its kind, others read conf/adapter/<kind>.yaml.
        self.adapters = role_adapters(
            adapter, {GENERATOR: self.generator_config.adapter, FAKE_SCORE: self.fake_score_config.adapter}
        )
        self.adapter = self.adapters[GENERATOR]  # the generator's kind: what exports merge
        gen_kind, fake_kind = self.adapters[GENERATOR], self.adapters[FAKE_SCORE]
        gen, fake = cfg.targets(GENERATOR, gen_kind), cfg.targets(FAKE_SCORE, fake_kind)
        self.generator_layers = gen_kind.attach(model, GENERATOR, self.generator_config.rank, gen)
        self.fake_score_layers = fake_kind.attach(model, FAKE_SCORE, self.fake_score_config.rank, fake)
        # Loss terms' own networks (SwD's GAN head), trained with the fake score; empty (no keys) for most methods.
        self.term_networks = torch.nn.ModuleDict(self.method.build_networks(model))
        if gradient_checkpointing:
            self.denoiser.update_speed(gradient_checkpointing=True)
        self.ema = EMA(gen_kind.parameters(model, GENERATOR), ema_decay) if ema_decay else None
        optimizer = _build(optimizer)
        self.optimizer_factory = optimizer or partial(torch.optim.AdamW, weight_decay=0.0)
        self.run_config = dict(run_config) if run_config is not None else None
        self._null: Conditioning | None = None

    # ----------------------------------------------------------------- roles and conditioning
    @property
    def denoiser(self):
        return self.backbone.denoiser

    @property
    def alphas_cumprod(self) -> Tensor:
        return self.backbone.alphas_cumprod

    def generator_parameters(self) -> list[torch.nn.Parameter]:
        return self.adapters[GENERATOR].parameters(self.denoiser.model, GENERATOR)

    def fake_score_parameters(self) -> list[torch.nn.Parameter]:
        """The fake score's adapter, then the loss terms' networks (SwD's GAN head) trained with it."""
        params = self.adapters[FAKE_SCORE].parameters(self.denoiser.model, FAKE_SCORE)
        return params + [p for net in self.term_networks.values() for p in net.parameters()]

    def adapter_kinds(self) -> dict[str, str]:
        """Each role's adapter kind, as checkpoints and exports record it."""
        return {role: a.name for role, a in self.adapters.items()}

    @property
    def text_encoder(self) -> TextEncoderLike | None:
        """The backbone's text encoder, or the one given at construction (the embedding cache's)."""
        given = self._given_text_encoder
        return given if given is not None else self.backbone.text_encoder

    def _embed_dtype(self) -> torch.dtype:
        return next(self.denoiser.model.parameters()).dtype

    def conditioning(self, batch: Mapping[str, Any]) -> Conditioning:
        """Prompt conditioning from cached embeddings if the batch has them, else the text encoder (the backbone's,
        or the embedding cache's lookup by prompt: sample grids and evaluation when training from a cache)."""
        if "prompt_embeds" in batch:
            return Conditioning(batch["prompt_embeds"].to(self._embed_dtype()), batch.get("prompt_mask"))
        embeds, mask = self._encode_prompts(list(batch["prompt"]))
        device = self.device
        return Conditioning(
            embeds.to(device, self._embed_dtype()), mask.to(device) if mask is not None else None
        )

    def _encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """(embeds, mask) from the text encoder: the backbone's, or the one given (the embedding cache's)."""
        if self.text_encoder is None:
            raise RuntimeError(
                "no text encoder: the backbone's was not loaded and none was given (train with cache_dir set)"
            )
        return self.text_encoder.encode(prompts)

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

    # StepContext (wadi.distill.method): what loss terms use
    fake_score_adapter = FAKE_SCORE

    def randn(self, shape: tuple[int, ...], rng: torch.Generator) -> Tensor:
        return self._randn(shape, rng)

    def embed_dtype(self) -> torch.dtype:
        return self._embed_dtype()

    def generator_step(
        self,
        cond: Conditioning,
        uncond: Conditioning,
        rng: torch.Generator,
        batch: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Spec 3, generator: x0 = G(z, c) (the student), then each loss term's generator loss, summed. A student
        or term with `uses_batch` also gets the batch and the global step (wadi.distill.method)."""
        seen = {"batch": batch, "step": self.global_step}
        z = self._randn((len(cond), *self.student.noise_shape(self.backbone.latent_shape)), rng)
        x0 = self.student.generate(
            self.denoiser,
            z,
            cond,
            self.alphas_cumprod,
            GENERATOR,
            self.backbone.cfg.alpha_T,
            **(seen if getattr(self.student, "uses_batch", False) else {}),
        )
        outputs = {
            name: term.generator_loss(
                self, x0, cond, uncond, rng, **(seen if getattr(term, "uses_batch", False) else {})
            )
            for name, term in self.method.generator_terms
        }
        loss = combine([(self.method.losses[name].weight, out) for name, out in outputs.items()])
        extras = {k: v for out in outputs.values() for k, v in out.items() if k != "loss"}
        if len(outputs) > 1:
            extras |= {f"loss_{name}": out["loss"] for name, out in outputs.items()}
        return {"loss": loss, "x0": x0, **extras}

    def fake_score_step(
        self,
        x0: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        rng: torch.Generator,
        batch: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """Spec 3, fake score: each loss term's fake-score loss on the detached generator sample, summed (weight
        `fake_score_weight` where a term has one; one with `fake_score_uses_batch` also gets the batch and the step)."""
        seen = {"batch": batch, "step": self.global_step}
        outputs = {
            name: term.fake_score_loss(
                self, x0, cond, uncond, rng, **(seen if getattr(term, "fake_score_uses_batch", False) else {})
            )
            for name, term in self.method.fake_score_terms
        }
        terms = self.method.losses
        loss = combine(
            [(getattr(terms[n], "fake_score_weight", terms[n].weight), o) for n, o in outputs.items()]
        )
        if len(outputs) == 1:
            return {"loss": loss}
        extras = {k: v for out in outputs.values() for k, v in out.items() if k != "loss"}
        return {"loss": loss, **extras, **{f"loss_{name}": out["loss"] for name, out in outputs.items()}}

    @property
    def _skipped(self) -> int:
        """Optimizer steps skipped for a non-finite loss or gradient (nonfinite=skip); checkpointed."""
        return self._guard.skipped

    @_skipped.setter
    def _skipped(self, value: int) -> None:
        self._guard.skipped = value

    def _optimize(
        self, optimizer, loss: Tensor, params: list, clip: float, role: str
    ) -> tuple[Tensor, bool | None]:
        """Backward, clip and a guarded step; (gradient norm, stepped: None until `_guard.finish`). A non-finite
        loss or gradient never reaches the optimizer (`wadi.distill.guards.StepGuard`: `nonfinite=stop` raises
        NonFiniteError, `skip` drops the step; one host sync per training step with a fused optimizer). The
        decision reads the norm after the gradient all-reduce, so every rank takes the same one."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        sync_gradients(params)
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self._guard.step(optimizer, loss, norm, params, role, self.global_step)
        return norm, None

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        if self.denoiser.speed.cuda_graphs:  # a new step: the last step's graph outputs may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        opt_g, opt_f = self.optimizers()
        rng = self._rng()
        cond = self.conditioning(batch)
        uncond = self.null_conditioning(batch)
        gen = self.generator_step(cond, uncond, rng, batch)
        norm_g, _ = self._optimize(
            opt_g, gen["loss"], self.generator_parameters(), self.generator_config.grad_clip, GENERATOR
        )
        fake = norm_f = None  # a method without a fake score (fake_steps 0) logs no fake-score metrics
        for _ in range(self.method.fake_steps):  # DMD2's two time-scale rule: several fake updates per step
            fake = self.fake_score_step(gen["x0"].detach(), cond, uncond, rng, batch)
            with _uncounted(opt_f):
                norm_f, _ = self._optimize(
                    opt_f,
                    fake["loss"],
                    self.fake_score_parameters(),
                    self.fake_score_config.grad_clip,
                    FAKE_SCORE,
                )
        stepped = self._guard.finish(self.global_step)  # the step's one host sync for the guards
        if self.ema is not None and stepped.get(GENERATOR, False):
            self.ema.update()  # after the fake steps: they leave the generator's weights as they are
        batch_size = len(cond)
        log = partial(self.log, on_step=True, batch_size=batch_size)
        # Lightning reads progress-bar metrics back every step (a host sync each), with or without a bar shown.
        bar = self._trainer is not None and self.trainer.progress_bar_callback is not None
        log("train/loss_generator", gen["loss"].detach(), prog_bar=bar)
        if fake is not None:
            log("train/loss_fake_score", fake["loss"].detach(), prog_bar=bar)
        log("train/grad_norm_generator", norm_g)
        if norm_f is not None:
            log("train/grad_norm_fake_score", norm_f)
        # several fake-score terms (SwD's GAN critic): each one's loss and extras
        for key, value in (fake or {}).items():
            if key != "loss":
                log(f"train/fake_{key}", value.detach())
        if "g_norm" in gen:
            log("train/vsd_g_rms", gen["g_norm"].detach())
            log("train/vsd_g_nonfinite", gen["g_nonfinite"].float())
        for key, value in gen.items():
            if key.startswith("loss_"):
                log(f"train/{key}", value.detach())
        # Host numbers as CPU tensors: a float would be copied to the GPU, a blocking copy (a host sync) each.
        log("train/nonfinite_skipped", torch.tensor(float(self._skipped)))
        if "pass" in batch:
            log("train/prompt_epoch", torch.tensor(float(batch["pass"])))

    def configure_optimizers(self):
        gen = self.optimizer_factory(self.generator_parameters(), lr=self.generator_config.lr)
        lr = self.fake_score_config.lr
        params = self.adapters[FAKE_SCORE].parameters(self.denoiser.model, FAKE_SCORE)
        if len(self.term_networks):  # the terms' networks: a parameter group each, at the term's lr
            lrs = {name: getattr(self.method.losses[name], "lr", None) for name in self.term_networks}
            params = [{"params": params}] + [
                {"params": list(net.parameters()), "lr": lrs[name] or lr}
                for name, net in self.term_networks.items()
            ]
        fake = self.optimizer_factory(params, lr=lr)
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
        graphs = bool(self.hparams.get("cuda_graphs", False))
        if graphs:  # setup runs before Lightning moves the module: the strategy knows the device
            device = self.trainer.strategy.root_device if self._trainer is not None else self.device
            check_cuda_graphs_device(SpeedOptions(wanted, cuda_graphs=True), device)
        speed = self.denoiser.speed
        if not wanted or (speed.compile in (wanted, "all") and speed.cuda_graphs == graphs):
            return
        self.denoiser.update_speed(
            compile=wanted, compile_backend=self.hparams.compile_backend, cuda_graphs=graphs
        )
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
        shape = self.student.noise_shape(self.backbone.latent_shape)
        z = seeded_noise(seeds, shape, self.device, self._embed_dtype())
        ema = self.ema.swapped() if (use_ema and self.ema is not None) else nullcontext()
        with ema:
            return self.student.generate(
                self.denoiser, z, cond, self.alphas_cumprod, GENERATOR, self.backbone.cfg.alpha_T
            )

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], use_ema: bool = True) -> Tensor:
        """One-step images in [0, 1], (N, 3, H, W); EMA weights when EMA is on."""
        return self.backbone.decode(self.generate_latents(prompts, seeds, use_ema))

    # ----------------------------------------------------------------- checkpoints
    def adapter_keys(self) -> set[str]:
        kinds = {a.name: a for a in self.adapters.values()}.values()
        own = ("ema.", "term_networks.")  # EMA and the loss terms' networks (SwD's GAN head)
        return {k for k in self.state_dict() if k.startswith(own) or any(a.is_state_key(k) for a in kinds)}

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
            "adapters": self.adapter_kinds(),
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
            adapters=self.adapter_kinds(),
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
    checkpoint: Mapping[str, Any],
    backbone: str,
    rank: int,
    fake_rank: int,
    ema: bool | None = None,
    adapters: Mapping[str, str] | None = None,
) -> None:
    """Refuse a checkpoint made for another backbone, rank, EMA setting or adapter kind, naming both."""
    meta = checkpoint.get("wadi")
    if meta is None:
        raise ValueError("not a wadi checkpoint (no 'wadi' entry): was it written by wadi.train?")
    theirs = {"backbone": meta["backbone"], "rank": meta["rank"], "fake_rank": meta["fake_rank"]}
    ours = {"backbone": backbone, "rank": rank, "fake_rank": fake_rank}
    if adapters is not None:  # checkpoints from before per-role kinds hold LoRaD
        kinds = meta.get("adapters") or {GENERATOR: "lorad", FAKE_SCORE: "lorad"}
        for role, kind in adapters.items():
            theirs[f"{role}.adapter"], ours[f"{role}.adapter"] = kinds.get(role, "lorad"), kind
    if ema is not None:
        theirs["ema"], ours["ema"] = meta.get("ema", False), ema
    if theirs != ours:
        diff = ", ".join(
            f"{k}: checkpoint {theirs[k]!r} vs this run {ours[k]!r}" for k in ours if theirs[k] != ours[k]
        )
        raise ValueError(
            f"checkpoint does not match this run ({diff}); use the same backbone/rank/fake_rank/ema and adapter "
            "kinds (generator.adapter, fake_score.adapter)"
        )
