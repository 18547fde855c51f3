"""One interface over diffusers U-Nets and PixArt DiTs: eps = denoiser(x_t, t, cond, adapter).

The distillation code never branches on the backbone kind; the two subclasses below are the only place
that knows how each diffusers model takes its inputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import torch
from torch import Tensor, nn

from wadi.adapters.context import role_preserving_checkpoint, use_adapter
from wadi.adapters.lorad import LoRaDLinear
from wadi.adapters.prerotate import rotation_groups, rotation_scope
from wadi.backbones.conditioning import Conditioning
from wadi.speed import SpeedOptions, compile_passes, make_room


class Denoiser(nn.Module):
    """A frozen diffusers denoiser whose adapters give the fake-score and generator roles.

    It runs every pass as its `SpeedOptions` say (`speed`; given at construction or by `set_speed` /
    `update_speed`). Pass-level pre-rotation (`group_rotations`) concerns LoRaD layers only: a model
    without them (another adapter kind) finds no groups and runs each layer as it is.
    """

    def __init__(self, model: nn.Module, speed: SpeedOptions | None = None) -> None:
        super().__init__()
        self.model = model
        self._speed = SpeedOptions()
        # The compiled `model` for the VSD passes `speed.compile` names. Not an nn.Module attribute:
        # registered, it would duplicate every key of the state dict.
        object.__setattr__(self, "_compiled", None)
        self._groups: dict[str, list] = {}  # adapter -> its LoRaD layers grouped by shape (prerotate)
        if speed is not None:
            self.set_speed(speed)

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    # ----------------------------------------------------------------- speed options
    @property
    def speed(self) -> SpeedOptions:
        """How the passes run (`wadi.speed.SpeedOptions`); change it with `set_speed` / `update_speed`."""
        return self._speed

    @property
    def compiled(self) -> nn.Module | None:
        """The compiled graph the VSD passes run through, or None (`speed.compile` false)."""
        return self._compiled

    def set_speed(self, speed: SpeedOptions) -> None:
        """Apply `speed`: checkpoint the blocks or not, compile (lazily: nothing is traced yet) or not."""
        old = self._speed
        if speed.gradient_checkpointing != old.gradient_checkpointing:
            if speed.gradient_checkpointing:
                # Recompute every block under the adapter (and W') that ran the forward.
                self.model.enable_gradient_checkpointing(
                    gradient_checkpointing_func=role_preserving_checkpoint
                )
            else:
                self.model.disable_gradient_checkpointing()
        if not speed.compile:
            object.__setattr__(self, "_compiled", None)
        elif (
            self._compiled is None
            or speed.compile_backend != old.compile_backend
            or speed.cuda_graphs != old.cuda_graphs
        ):
            compiled = compile_passes(self.model, speed.compile_backend, speed.graphs, speed.compile_mode)
            object.__setattr__(self, "_compiled", compiled)
        elif speed.graphs > old.graphs:
            make_room(
                speed.graphs - old.graphs
            )  # the same compiled model traces the passes with gradients too
        self._speed = speed

    def update_speed(self, **changes) -> None:
        """`set_speed` with some fields of the current options changed."""
        self.set_speed(replace(self._speed, **changes))

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, adapter: str | None = None) -> Tensor:
        """Predicted epsilon for x_t (B, C, h, w) at integer timesteps t (B,), with adapter `adapter`."""
        return self._run(self._model_for(cfg_pass=False), x_t, t, cond, adapter)

    def _model_for(self, cfg_pass: bool) -> nn.Module:
        """The compiled graph for the VSD passes it was made for, else the eager model.

        No-grad passes outside `cfg` (sample grids, evaluation) stay eager: their batch shapes would each
        compile a graph of their own.
        """
        if self._compiled is None:
            return self.model
        if torch.is_grad_enabled():
            return self._compiled if self._speed.compile == "all" else self.model
        return self._compiled if cfg_pass else self.model

    def _run(
        self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, adapter: str | None
    ) -> Tensor:
        with self.bound(adapter, x_t.device.type, model) as dtype:
            if dtype is None:
                return self._eps(model, x_t, t, cond)
            return self._eps(model, x_t.to(dtype), t, cond.to(dtype=dtype))

    @contextmanager
    def bound(
        self, adapter: str | None, device: str, model: nn.Module | None = None
    ) -> Iterator[torch.dtype | None]:
        """What one pass binds: the adapter role, its W' (pre-rotation) and the compute dtype. Yields the dtype
        the inputs must be cast to (None: as given). A student that calls parts of `model` itself (TiUE's encoder
        and decoder) runs them inside one `bound` block, exactly as a forward runs. `model`: the module the pass
        calls (the compiled graph under CUDA graphs builds its own W')."""
        speed = self._speed
        # Under CUDA graphs a compiled pass builds its W' inside the graph (traced, fused by inductor): built here
        # they would be ~4 eager launches per group of layers each way, and graph inputs copied at every replay.
        graphed = speed.cuda_graphs and model is self._compiled
        groups = None if graphed else self._rotation_groups(adapter)
        fused = speed.fused_rotation
        with use_adapter(adapter):
            if speed.compute_dtype is None:
                dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
                with rotation_scope(groups, adapter, dtype, fused):
                    yield None
                return
            dtype = speed.compute_dtype
            with torch.autocast(device, enabled=False), rotation_scope(groups, adapter, dtype, fused):
                yield dtype

    def _rotation_groups(self, adapter: str | None) -> list | None:
        """Adapter `adapter`'s layers grouped by shape (built once per adapter), or None when grouping is off."""
        if adapter is None or not self._speed.group_rotations:
            return None
        if adapter not in self._groups:
            layers = [m for m in self.model.modules() if isinstance(m, LoRaDLinear)]
            self._groups[adapter] = rotation_groups(layers, adapter)
        return self._groups[adapter]

    def _eps(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """epsilon from `model` (the diffusers model, or its compiled graph): the kind-specific call."""
        raise NotImplementedError

    def cfg(
        self,
        x_t: Tensor,
        t: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        scale: float,
        adapter: str | None,
    ) -> Tensor:
        """Classifier-free guidance e_u + w (e_c - e_u), with cond and uncond in one batched forward.

        Without gradients (the teacher and fake-score passes of VSD) this runs the compiled graph if one is set.
        """
        model = self._model_for(cfg_pass=True)
        if scale == 1.0:
            return self._run(model, x_t, t, cond, adapter)
        batch = x_t.shape[0]
        both = Conditioning.cat([uncond.expand(batch) if len(uncond) == 1 else uncond, cond])
        eps = self._run(model, torch.cat([x_t, x_t]), torch.cat([t, t]), both, adapter)
        e_u, e_c = eps.chunk(2)
        return e_u + scale * (e_c - e_u)


class UNetDenoiser(Denoiser):
    """Stable Diffusion's UNet2DConditionModel (SD1.5, SD2.1, toy-sd)."""

    def _eps(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return model(x_t, t, encoder_hidden_states=cond.embeds, return_dict=False)[0]


class PixArtDenoiser(Denoiser):
    """PixArtTransformer2DModel; learned-sigma outputs are split and only epsilon is kept."""

    def _eps(self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        config = self.model.config
        added = {"resolution": None, "aspect_ratio": None}
        if config.use_additional_conditions:
            # 1024-px checkpoints condition on the image size; square images at the model's resolution.
            side = float(x_t.shape[-1] * 8)
            added = {
                "resolution": x_t.new_tensor([[side, side]]).expand(x_t.shape[0], 2),
                "aspect_ratio": x_t.new_tensor([[1.0]]).expand(x_t.shape[0], 1),
            }
        out = model(
            x_t,
            encoder_hidden_states=cond.embeds,
            encoder_attention_mask=cond.mask,
            timestep=t,
            added_cond_kwargs=added,
            return_dict=False,
        )[0]
        if out.shape[1] == 2 * x_t.shape[1]:
            out = out[:, : x_t.shape[1]]  # learned sigma: (eps, variance) -> eps
        return out
