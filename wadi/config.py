"""OmegaConf resolvers and config checks shared by every entry point."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf


def _find_conf_dir() -> Path:
    """The repository's conf/ in a checkout (editable install, PYTHONPATH), else the copy installed with the
    package as `wadi.conf` (a wheel, `pip install .`: setup.py maps conf/ into the package)."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "conf"
    if (package.parent / "pyproject.toml").is_file() and (checkout / "config.yaml").is_file():
        return checkout
    return package / "conf"


CONF_DIR = _find_conf_dir()


def _precision() -> str:
    """bf16-mixed on a CUDA device, full fp32 on CPU."""
    import torch

    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _cuda() -> bool:
    """Whether a CUDA device is present: GPU-only speed levers (fused AdamW, cudnn.benchmark) key on it."""
    import torch

    return torch.cuda.is_available()


def _toy_asset(name: str) -> str:
    from wadi.toy.assets import toy_asset_path

    return str(toy_asset_path(name))


def _conf_path(relative: str) -> str:
    return str(CONF_DIR / relative)


def register_resolvers() -> None:
    for name, fn in (
        ("wadi_precision", _precision),
        ("wadi_cuda", _cuda),
        ("toy_asset", _toy_asset),
        ("conf_path", _conf_path),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
