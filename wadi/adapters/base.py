"""The adapter seam: one interface for every kind of adapter on a frozen denoiser, and a registry.

A kind (LoRaD today; LoRA, DoRA, full fine-tuning next) is a subclass of `Adapter` in a file of its own,
`wadi/adapters/<name>.py`, decorated with `@register_adapter`, plus a config `conf/adapter/<name>.yaml`
(its targets per backbone kind and role, and its own options). Nothing else changes: `get_adapter` imports
`wadi.adapters.<name>` on first use, and the rest of wadi goes through this interface only (attach,
parameters, merge/unmerge for export, state keys for checkpoints).

The semantics follow peft's `tuners/lora/layer.py`: adapters are named (one per role: "generator",
"fake_score"; None is the frozen base, the teacher), attach with zero effect, merge and unmerge are
idempotent, unmerge restores the base bit for bit, and `safe_merge` refuses non-finite weights.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

from torch import Tensor, nn

from wadi.adapters.targets import AdapterTargets

ADAPTERS: dict[str, type[Adapter]] = {}
DEFAULT_ADAPTER = "lorad"
BUILTIN = (
    "lorad",
    "lora",
    "dora",
    "full",
)  # wadi's own kinds (wadi/adapters/<name>.py), imported on first use


class Adapter(ABC):
    """One kind of adapter. `targets`: {backbone kind: {role: {blocks, skip, on_odd}}} (conf/adapter/*.yaml)."""

    name: ClassVar[str]

    def __init__(self, targets: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None) -> None:
        self.target_config = {
            kind: {role: dict(t) for role, t in roles.items()} for kind, roles in dict(targets or {}).items()
        }

    def targets(self, kind: str, role: str) -> AdapterTargets:
        """The layers role `role` adapts on a backbone of kind `kind` (wadi.backbones.loading.KINDS)."""
        if kind not in self.target_config:
            raise ValueError(
                f"adapter {self.name!r} has no targets for backbone kind {kind!r}; it has "
                f"{sorted(self.target_config)} (conf/adapter/{self.name}.yaml, key targets.{kind})"
            )
        roles = self.target_config[kind]
        if role not in roles:
            raise ValueError(
                f"adapter {self.name!r} has no targets for role {role!r} on {kind!r}; it has {sorted(roles)}"
            )
        return AdapterTargets.from_mapping(roles[role])

    @abstractmethod
    def attach(self, model: nn.Module, role: str, rank: int, targets: AdapterTargets) -> list[str]:
        """Attach adapter `role` (zero effect at init) to the layers `targets` selects; their names."""

    @abstractmethod
    def parameters(self, model: nn.Module, role: str) -> list[nn.Parameter]:
        """The trainable parameters of adapter `role`, in a stable order."""

    @abstractmethod
    def merge(self, model: nn.Module, role: str, safe_merge: bool = True) -> None:
        """Write adapter `role` into the base weights (idempotent); `safe_merge` refuses non-finite ones."""

    @abstractmethod
    def unmerge(self, model: nn.Module, role: str | None = None) -> None:
        """Restore the base weights bit for bit (idempotent); `role` None: whichever adapter is merged."""

    @abstractmethod
    def state_dict(self, model: nn.Module, role: str) -> dict[str, Tensor]:
        """Adapter `role`'s tensors by a name stable across runs (adapter exports and finiteness checks)."""

    @abstractmethod
    def is_state_key(self, key: str) -> bool:
        """Whether `key` of the model's state dict belongs to an adapter of this kind (checkpoints keep
        these; a merged export drops them)."""

    def plain_key(self, key: str) -> str | None:
        """The plain diffusers key of model state key `key` (None: an adapter tensor, not in a merged export).
        Kinds that wrap the base layer (peft's `base_layer`) map its keys back."""
        return None if self.is_state_key(key) else key

    def layer_count(self, in_features: int, out_features: int, rank: int, bias: bool = True) -> int:
        """Trainable parameters this kind adds to one nn.Linear(in_features, out_features, bias) at `rank`
        (`wadi.adapters.budget` matches budgets with it)."""
        raise NotImplementedError(f"adapter {self.name!r} does not give its per-layer parameter count")

    def state_keys(self, keys: Iterable[str]) -> set[str]:
        return {k for k in keys if self.is_state_key(k)}

    @contextmanager
    def merged(self, model: nn.Module, role: str, safe_merge: bool = True) -> Iterator[None]:
        """Adapter `role` merged into the base weights for the enclosed block, unmerged after."""
        self.merge(model, role, safe_merge=safe_merge)
        try:
            yield
        finally:
            self.unmerge(model, role)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kinds={sorted(self.target_config)})"


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make adapter kind `cls.name` known to `get_adapter`."""
    if ADAPTERS.get(cls.name, cls) is not cls:
        raise ValueError(f"adapter kind {cls.name!r} is registered twice ({ADAPTERS[cls.name]} and {cls})")
    ADAPTERS[cls.name] = cls
    return cls


def adapter_class(name: str) -> type[Adapter]:
    """The registered kind `name`, importing `wadi.adapters.<name>` on first use."""
    if name not in ADAPTERS and name.isidentifier():
        try:
            importlib.import_module(f"wadi.adapters.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"wadi.adapters.{name}":
                raise
    if name not in ADAPTERS:
        raise ValueError(f"unknown adapter {name!r}; known adapters: {sorted(set(ADAPTERS) | set(BUILTIN))}")
    return ADAPTERS[name]


def default_config(name: str) -> dict[str, Any]:
    """conf/adapter/<name>.yaml as a plain dict ({} when there is none)."""
    from omegaconf import OmegaConf

    from wadi.config import CONF_DIR

    path = CONF_DIR / "adapter" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def get_adapter(spec: Adapter | str | Mapping[str, Any] | None = None) -> Adapter:
    """An adapter from a kind name (its conf/adapter/<name>.yaml), a config node {name, targets, ...},
    an Adapter (returned as is) or None (the default, LoRaD with conf/adapter/lorad.yaml)."""
    if isinstance(spec, Adapter):
        return spec
    if spec is None or isinstance(spec, str):
        name = spec or DEFAULT_ADAPTER
        cls = adapter_class(name)
        config = default_config(name)
    else:
        config = dict(spec)
        if "name" not in config:
            raise ValueError(f"an adapter config needs a `name` (one of {sorted(ADAPTERS)}), got {config}")
        cls = adapter_class(str(config["name"]))
    return cls(**{k: v for k, v in config.items() if k != "name"})


def role_adapters(
    configured: Adapter | str | Mapping[str, Any] | None, kinds: Mapping[str, str]
) -> dict[str, Adapter]:
    """One Adapter per role, `kinds` giving each role's kind (`generator.adapter`, `fake_score.adapter`).

    `configured` (the run's `adapter:` node, e.g. conf/adapter/lorad.yaml with a recipe's targets merged in)
    serves the roles of its own kind; a role of another kind gets `conf/adapter/<kind>.yaml`. Roles of one kind
    share one instance (an instance holds only its config; the layers hold the weights).
    """
    by_kind: dict[str, Adapter] = {}
    if configured is not None:
        first = get_adapter(configured)
        by_kind[first.name] = first
    out = {}
    for role, kind in kinds.items():
        if kind not in by_kind:
            by_kind[kind] = get_adapter(kind)
        out[role] = by_kind[kind]
    return out


def plain_key(adapters: Iterable[Adapter], key: str) -> str | None:
    """Model state key `key` as the plain diffusers model names it, through every kind on the model
    (None: an adapter tensor)."""
    for adapter in {a.name: a for a in adapters}.values():
        key = adapter.plain_key(key)
        if key is None:
            return None
    return key
