"""One interface over diffusers U-Nets and PixArt DiTs: eps = denoiser(x_t, t, cond, adapter).

The distillation code never branches on the backbone kind; the two subclasses below are the only place
that knows how each diffusers model takes its inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wadi.adapters.context import role_preserving_checkpoint, use_adapter
from wadi.adapters.lorad import LoRaDLinear, rotation_groups, rotation_scope
from wadi.backbones.conditioning import Conditioning


class Denoiser(nn.Module):
    """A frozen diffusers denoiser whose LoRaD adapters give the fake-score and generator roles."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # When set (WaDiModule.cast_frozen does), the model runs natively in this dtype with autocast off.
        # Autocast runs every GroupNorm/LayerNorm in float32 and casts back for the next conv or linear:
        # round trips through memory in a memory-bound network (experiments/bench).
        self.compute_dtype: torch.dtype | None = None
        # Set by `wadi.speed.compile_frozen_passes`: a compiled `model` for the no-grad CFG passes, and with
        # `compile_grad_passes` (`wadi.speed.compile_training_passes`) for every pass that runs with gradients.
        self.compiled_model: nn.Module | None = None
        self.compile_grad_passes = False
        # Build every adapted layer's W' at the start of a pass, batched over same-shape layers (checkpointed
        # blocks recompute with the same W'; off under FSDP, whose weights are whole only inside a block).
        self.group_rotations = True
        self._groups: dict[str, list] = {}

    @property
    def in_channels(self) -> int:
        return self.model.config.in_channels

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint every block, recomputing under the adapter that ran the forward."""
        self.model.enable_gradient_checkpointing(gradient_checkpointing_func=role_preserving_checkpoint)

    def forward(self, x_t: Tensor, t: Tensor, cond: Conditioning, adapter: str | None = None) -> Tensor:
        """Predicted epsilon for x_t (B, C, h, w) at integer timesteps t (B,), with adapter `adapter`."""
        return self._run(self._model_for(cfg_pass=False), x_t, t, cond, adapter)

    def _model_for(self, cfg_pass: bool) -> nn.Module:
        """The compiled graph for the VSD passes it was made for, else the eager model.

        No-grad passes outside `cfg` (sample grids, evaluation) stay eager: their batch shapes would each
        compile a graph of their own.
        """
        if self.compiled_model is None:
            return self.model
        if torch.is_grad_enabled():
            return self.compiled_model if self.compile_grad_passes else self.model
        return self.compiled_model if cfg_pass else self.model

    def _run(
        self, model: nn.Module, x_t: Tensor, t: Tensor, cond: Conditioning, adapter: str | None
    ) -> Tensor:
        groups = self._rotation_groups(adapter)
        device = x_t.device.type
        with use_adapter(adapter):
            if self.compute_dtype is None:
                dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
                with rotation_scope(groups, adapter, dtype):
                    return self._eps(model, x_t, t, cond)
            with torch.autocast(device, enabled=False), rotation_scope(groups, adapter, self.compute_dtype):
                return self._eps(model, x_t.to(self.compute_dtype), t, cond.to(dtype=self.compute_dtype))

    def _rotation_groups(self, adapter: str | None) -> list | None:
        """Adapter `adapter`'s layers grouped by shape (built once per adapter), or None when grouping is off."""
        if adapter is None or not self.group_rotations:
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
