"""The student: how the generator turns noise and a prompt into a clean latent x0.

A method's student is one object with two calls: the noise it starts from (`noise_shape`) and `generate`. Today's
is the one-step student of WaDi (spec section 1). A few-step student (SwD's scale-wise generator, TiUE's shared
encoder run once and decoder run K times) implements the same two calls; the module, the losses, sampling and
export only ever see `x0 = student.generate(...)`.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.backbones.denoiser import Denoiser
from wadi.samplers import one_step


class Student(Protocol):
    """What the module needs from a student."""

    def noise_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-sample shape of the noise `generate` starts from, given the backbone's latent shape."""
        ...

    def generate(
        self,
        denoiser: Denoiser,
        z: Tensor,
        cond: Conditioning,
        alphas_cumprod: Tensor,
        adapter: str | None,
        alpha_T: float | None,
    ) -> Tensor:
        """x0 (B, *latent_shape) from noise z (B, *noise_shape) and the prompts' conditioning, through `adapter`."""
        ...


class OneStepStudent:
    """WaDi's student: one denoiser evaluation at t = T on pure noise, x0 = (z - sigma_T eps_hat) / alpha_T."""

    def noise_shape(self, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(latent_shape)

    def generate(
        self,
        denoiser: Denoiser,
        z: Tensor,
        cond: Conditioning,
        alphas_cumprod: Tensor,
        adapter: str | None = "generator",
        alpha_T: float | None = None,
    ) -> Tensor:
        return one_step(denoiser, z, cond, alphas_cumprod, adapter, alpha_T)

    def __repr__(self) -> str:
        return "OneStepStudent()"
