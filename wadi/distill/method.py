"""A distillation method: a student plus loss terms (`conf/method/<name>.yaml`, selected by `method=<name>`).

`WaDiModule` orchestrates (the two optimizer steps, RNG, guards, checkpoints); what differs between methods lives
here, behind two small interfaces:

- the student (`wadi.distill.student`): noise + prompt -> x0;
- loss terms: each may add to the generator's loss (`generator_loss`) and/or train the fake score
  (`fake_score_loss`); VSD (`wadi.distill.vsd.VSDLoss`) does both. An extra term (a KL, a patch
  distribution-matching loss) is one more entry under `method.losses` with its own `_target_` and `weight`.
  A term that reads what the student computed besides x0 (TiUE's KL on its noise maps) has `bind_student(student,
  key)`, called once here: it checks the student and keeps it.

Optional, additive parts of the seam (a student or term without them works as before):
- `uses_batch = True` on a student or a term: the module passes `batch=` (the training batch, e.g. its real
  `latents`) and `step=` (the global step) as keywords to `generate` / `generator_loss` during training;
- `fake_score_uses_batch = True` on a term: the same for its `fake_score_loss` (SwD's GAN critic: real latents);
- `enabled` False on a term (e.g. PDM at weight 0): the term is dropped when the method is built;
- `build_network(model)` on a term (SwD's GAN head, `wadi.distill.gan`): its own trainable network, built once the
  backbone is loaded (`Method.build_networks`); the module registers it (checkpoints, device moves) and trains it
  with the fake score (its own parameter group, lr `term.lr`, None: the fake score's);
- `fake_score_weight` on a term: the weight of its fake-score loss when it differs from `weight` (the GAN critic).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import torch
from torch import Tensor

from wadi.backbones.conditioning import Conditioning
from wadi.backbones.denoiser import Denoiser
from wadi.config import ConfigError
from wadi.distill.student import OneStepStudent, Student


class StepContext(Protocol):
    """What a loss term may use from the module during a step."""

    denoiser: Denoiser
    alphas_cumprod: Tensor
    device: torch.device
    fake_score_adapter: str  # the fake score's adapter name

    def randn(self, shape: tuple[int, ...], rng: torch.Generator) -> Tensor: ...

    def embed_dtype(self) -> torch.dtype: ...


class LossTerm(Protocol):
    """One term of a method's objective. Either call may be absent (None: the term does not train that role).

    `generator_loss` returns {"loss": scalar, ...logged extras}; the generator's loss is the weighted sum of the
    terms'. `fake_score_loss` returns {"loss": scalar}, summed likewise; `fake_steps` fake-score updates follow
    each generator update. Both draw their randomness from `rng` only (exact resume).
    """

    weight: float

    def generator_loss(
        self, ctx: StepContext, x0: Tensor, cond: Conditioning, uncond: Conditioning, rng: torch.Generator
    ) -> dict[str, Tensor]: ...


def _build(node: Any) -> Any:
    """An object as given, or one built from a Hydra node with `_target_` (train.py passes nodes unbuilt)."""
    if isinstance(node, Mapping) and "_target_" in node:
        from hydra.errors import InstantiationException
        from hydra.utils import instantiate

        try:
            return instantiate(dict(node), _convert_="all")
        except (
            InstantiationException
        ) as err:  # the builder's own error (a ConfigError names the key), unwrapped
            if err.__cause__ is not None:
                raise err.__cause__ from None
            raise
    return node


class Method:
    """A student and its loss terms, in the order given (the order fixes the RNG draws: keep it)."""

    def __init__(
        self,
        student: Student | Mapping[str, Any] | None = None,
        losses: Mapping[str, LossTerm | Mapping[str, Any]] | None = None,
        name: str = "wadi",
    ) -> None:
        from wadi.distill.vsd import VSDLoss

        self.name = name
        self.student: Student = _build(student) if student is not None else OneStepStudent()
        built = {k: _build(v) for k, v in (losses if losses is not None else {"vsd": VSDLoss()}).items()}
        built = {k: t for k, t in built.items() if getattr(t, "enabled", True)}
        for key, term in built.items():
            if not (hasattr(term, "generator_loss") or hasattr(term, "fake_score_loss")):
                raise ConfigError(
                    f"method.losses.{key}: {term!r} is not a loss term (needs generator_loss and/or fake_score_loss)"
                )
        for key, term in built.items():  # a term that reads the student's outputs (TiUE's KL) checks it here
            if hasattr(term, "bind_student"):
                term.bind_student(self.student, key)
        if not any(hasattr(t, "generator_loss") for t in built.values()):
            raise ConfigError(
                f"method {name!r}: no loss term trains the generator (method.losses: {sorted(built)})"
            )
        self.losses: dict[str, Any] = built

    @property
    def generator_terms(self) -> list[tuple[str, Any]]:
        return [(k, t) for k, t in self.losses.items() if hasattr(t, "generator_loss")]

    @property
    def fake_score_terms(self) -> list[tuple[str, Any]]:
        return [(k, t) for k, t in self.losses.items() if hasattr(t, "fake_score_loss")]

    @property
    def fake_steps(self) -> int:
        """Fake-score updates per generator update: the largest any term asks for (0 without a fake score)."""
        return max((int(getattr(t, "fake_steps", 1)) for _, t in self.fake_score_terms), default=0)

    def build_networks(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The terms' own trainable networks for the loaded (adapted) denoiser `model`, by term name ({} if none)."""
        return {k: t.build_network(model) for k, t in self.losses.items() if hasattr(t, "build_network")}

    @property
    def vsd(self):
        """The VSD term's config (the module's `vsd`), or None for a method without VSD."""
        term = self.losses.get("vsd")
        return getattr(term, "config", None)

    def __repr__(self) -> str:
        return f"Method({self.name!r}, student={self.student!r}, losses={self.losses!r})"


def build_method(method: Method | Mapping[str, Any] | None, vsd: Any = None) -> Method:
    """The module's method: given, built from its config node, or (None) WaDi's with `vsd` as the VSD config."""
    if isinstance(method, Method):
        return method
    if method is None:
        from wadi.distill.vsd import VSDLoss

        return Method(losses={"vsd": VSDLoss(vsd)})
    built = _build(method)
    if isinstance(built, Method):
        return built
    return Method(**dict(built))


def combine(outputs: list[tuple[float, dict[str, Tensor]]]) -> Tensor:
    """The weighted sum of the terms' losses; one term of weight 1 is its loss itself (bit-identical)."""
    total = None
    for weight, out in outputs:
        loss = out["loss"] if weight == 1 else weight * out["loss"]
        total = loss if total is None else total + loss
    return total
