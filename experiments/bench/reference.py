"""The structure of the public WaDi training scripts, rebuilt as the baseline of the step benchmark.

What makes it the reference (PERFORMANCE.md, WADI.md section 3 "known defects"):
- three separate half-precision copies of the denoiser: teacher, fake score, generator;
- LoRaD attached as forward hooks: the frozen layer runs, its output is thrown away, and the hook
  recomputes the layer with the rotated weight (a wasted matmul per adapted layer);
- separate cond and uncond forwards for classifier-free guidance (batch B twice, not 2B once);
- autocast in the scripts' dtype (fp16 for SD with a GradScaler per optimizer, bf16 for PixArt), fp32
  adapter factors, torch AdamW.
The math (one-step x0, VSD gradient, fake-score loss) is wadi's own pure functions, so both sides of the
benchmark compute the same thing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wadi.adapters.targets import AdapterTargets, select_targets
from wadi.backbones import Conditioning, Denoiser
from wadi.distill.losses import add_noise, cfg_combine, fake_score_loss, generator_loss, vsd_gradient
from wadi.samplers import one_step


class LoRaDHook:
    """Forward hook replacing a frozen nn.Linear's output by x W'^T + b, W' the LoRaD rotation of W."""

    def __init__(self, layer: nn.Linear, rank: int) -> None:
        device = layer.weight.device
        self.lorad_A = nn.Parameter(torch.zeros(layer.out_features, rank, device=device))
        self.lorad_B = nn.Parameter(torch.empty(rank, layer.in_features // 2, device=device))
        nn.init.xavier_uniform_(self.lorad_B)

    def __call__(self, module: nn.Linear, args: tuple, output: Tensor) -> Tensor:
        theta = self.lorad_A @ self.lorad_B  # autocast dtype
        theta = torch.remainder(theta + math.pi, 2 * math.pi) - math.pi
        w_even, w_odd = module.weight.unflatten(-1, (-1, 2)).unbind(-1)
        cos, sin = torch.cos(theta), torch.sin(theta)
        weight = torch.stack((w_even * cos - w_odd * sin, w_even * sin + w_odd * cos), dim=-1).flatten(-2)
        return F.linear(args[0], weight, module.bias)


def attach_hooks(model: nn.Module, targets: AdapterTargets, rank: int) -> list[nn.Parameter]:
    params = []
    for name in select_targets(model, targets):
        layer = model.get_submodule(name)
        hook = LoRaDHook(layer, rank)
        layer.register_forward_hook(hook)
        params += [hook.lorad_A, hook.lorad_B]
    return params


class ReferenceVSD:
    """One VSD step (generator then fake score) with the public scripts' structure."""

    def __init__(
        self,
        wrap: Callable[[nn.Module], Denoiser],
        model: nn.Module,
        generator_targets: AdapterTargets,
        fake_score_targets: AdapterTargets,
        rank: int,
        fake_rank: int,
        alphas_cumprod: Tensor,
        latent_shape: tuple[int, int, int],
        dtype: torch.dtype = torch.float16,
        gradient_checkpointing: bool = False,
        guidance_scale: float = 1.5,
        lr: float = 1e-4,
        fake_lr: float = 1e-2,
        autocast: bool = True,
    ) -> None:
        model = model.to(dtype).requires_grad_(False)
        fake, generator = copy.deepcopy(model), copy.deepcopy(model)
        self.gen_params = attach_hooks(generator, generator_targets, rank)
        self.fake_params = attach_hooks(fake, fake_score_targets, fake_rank)
        if gradient_checkpointing:
            generator.enable_gradient_checkpointing()
            fake.enable_gradient_checkpointing()
        self.teacher, self.fake, self.generator = wrap(model), wrap(fake), wrap(generator)
        self.alphas_cumprod = alphas_cumprod
        self.latent_shape = latent_shape
        self.dtype = dtype
        self.device = alphas_cumprod.device
        self.autocast = autocast
        self.guidance_scale = guidance_scale
        self.opt_g = torch.optim.AdamW(self.gen_params, lr=lr, weight_decay=0.0)
        self.opt_f = torch.optim.AdamW(self.fake_params, lr=fake_lr, weight_decay=0.0)
        use_scaler = autocast and dtype == torch.float16
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        self.scaler_f = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.autocast)

    def _optimize(self, loss: Tensor, opt, scaler, params) -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()

    def step(self, batch: dict, rng: torch.Generator) -> tuple[Tensor, Tensor]:
        w, ac, dev = self.guidance_scale, self.alphas_cumprod, self.device
        cond = Conditioning(batch["prompt_embeds"].to(self.dtype), batch.get("prompt_mask"))
        b = len(cond)
        uncond = Conditioning(batch["null_embeds"][:1].to(self.dtype), batch.get("null_mask")).expand(b)
        with self._autocast():
            z = torch.randn((b, *self.latent_shape), generator=rng, device=dev)
            x0 = one_step(self.generator, z, cond, ac, None)
            t = torch.randint(20, 981, (b,), generator=rng, device=dev)
            x_t = add_noise(x0.detach(), torch.randn(x0.shape, generator=rng, device=dev), ac, t)
            with torch.no_grad():  # four separate passes of batch b
                eps_real = cfg_combine(self.teacher(x_t, t, uncond), self.teacher(x_t, t, cond), w)
                eps_fake = cfg_combine(self.fake(x_t, t, uncond), self.fake(x_t, t, cond), w)
            loss_g = generator_loss(x0, vsd_gradient(eps_real, eps_fake, ac, t))
        self._optimize(loss_g, self.opt_g, self.scaler_g, self.gen_params)
        with self._autocast():
            t = torch.randint(0, ac.shape[0], (b,), generator=rng, device=dev)
            eps = torch.randn(x0.shape, generator=rng, device=dev)
            x_t = add_noise(x0.detach(), eps, ac, t)
            drop = torch.rand(b, generator=rng, device=dev) < 0.1
            loss_f = fake_score_loss(self.fake(x_t, t, cond.where(drop, uncond)), eps, ac, t)
        self._optimize(loss_f, self.opt_f, self.scaler_f, self.fake_params)
        return loss_g.detach(), loss_f.detach()
