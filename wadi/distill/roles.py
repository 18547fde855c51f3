"""One trained role's settings (`generator:` and `fake_score:` in conf/config.yaml), validated once."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from wadi.config import ConfigError, check_keys

ADAPTERS = {
    "lorad": "LoRaD: a low-rank rotation of each adapted weight (wadi.adapters.lorad)",
    "lora": "LoRA: a low-rank additive update, peft's layer (wadi.adapters.lora)",
    "dora": "DoRA: LoRA's direction update plus a trainable row magnitude, peft's use_dora (wadi.adapters.lora)",
    "full": "full fine-tuning: a trainable copy of every targeted layer; rank unused (wadi.adapters.full)",
}


@dataclass(frozen=True)
class RoleConfig:
    """How one role (the generator or the fake score) is adapted and optimized."""

    adapter: str = "lorad"  # one of ADAPTERS
    rank: int = 32
    lr: float = 1e-4  # AdamW learning rate
    grad_clip: float = 1.0  # gradient-norm clip; <= 0: none

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | RoleConfig | None, node: str = "role") -> RoleConfig:
        if cfg is None:
            return cls()
        if isinstance(cfg, RoleConfig):
            return cfg
        check_keys(cfg, {f.name for f in fields(cls)}, node)
        try:
            return cls(**dict(cfg))
        except ConfigError as err:
            raise ConfigError(str(err).replace("role.", f"{node}.", 1)) from None

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> ConfigError:
            return ConfigError(f"role.{key}={getattr(self, key)!r}: expected {expected}")

        if self.adapter not in ADAPTERS:
            raise bad("adapter", f"one of the known adapters {sorted(ADAPTERS)}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise bad("rank", "an integer >= 1 (a fractional rank is refused, not truncated)")
        for key in ("lr", "grad_clip"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise bad(key, "a finite number")
        if self.lr <= 0:
            raise bad("lr", "a finite number > 0")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
