"""Locate the toy assets shipped with wadi and verify their checksums before anything loads them.

Why checksums: the weights live in the repository and in installed wheels, where a half-finished checkout,
a git-lfs pointer or a stray edit would otherwise surface as an obscure shape or safetensors error deep in
diffusers. Every file is listed in `wadi/assets/toy/SHA256SUMS` (the `sha256sum` format, so
`cd wadi/assets/toy && sha256sum -c SHA256SUMS` checks them by hand too); a missing or changed file raises
an error that names it and says how to rebuild the assets.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ASSETS_ROOT = Path(__file__).resolve().parent.parent / "assets" / "toy"
ROOT_ENV = "WADI_TOY_ASSETS"  # another asset root (e.g. a fresh `python -m wadi.toy.pretrain` output)
CHECKSUMS = "SHA256SUMS"
# asset name -> folder under the root; "classifier" and "toy-classifier" are the same asset
ASSET_DIRS: dict[str, str] = {
    "toy-sd": "toy-sd",
    "toy-pixart": "toy-pixart",
    "toy-classifier": "toy-classifier",
    "classifier": "toy-classifier",
}
REGENERATE = (
    "restore it with `git checkout -- wadi/assets/toy`, or rebuild all toy assets with "
    "`python -m wadi.toy.pretrain out_dir=wadi/assets/toy` (a GPU run; see experiments/toy/RESULTS.md)"
)

_verified: set[tuple[Path, str]] = set()


class ToyAssetError(ValueError):
    """A toy asset file does not match its recorded checksum."""


def default_root() -> Path:
    return Path(os.environ[ROOT_ENV]).expanduser() if os.environ.get(ROOT_ENV) else ASSETS_ROOT


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checksums(root: str | Path) -> Path:
    """Hash every file in the asset folders under `root` into `root`/SHA256SUMS (sorted, relative paths)."""
    root = Path(root)
    lines = []
    for folder in sorted(set(ASSET_DIRS.values())):
        for f in sorted((root / folder).rglob("*")):
            if f.is_file():
                lines.append(f"{sha256_file(f)}  {f.relative_to(root).as_posix()}")
    if not lines:
        raise FileNotFoundError(
            f"no toy assets to checksum under {root} (expected {sorted(set(ASSET_DIRS.values()))})"
        )
    out = root / CHECKSUMS
    out.write_text("\n".join(lines) + "\n")
    return out


def read_checksums(root: Path) -> dict[str, str]:
    """{relative path: sha256} from root/SHA256SUMS."""
    file = root / CHECKSUMS
    if not file.is_file():
        raise FileNotFoundError(f"toy asset checksum file missing: {file}; {REGENERATE}")
    sums = {}
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ToyAssetError(f"{file}:{n} is not a '<sha256>  <path>' line: {line!r}; {REGENERATE}")
        sums[rel] = digest
    return sums


def verify_asset(name: str, root: str | Path | None = None) -> Path:
    """Check every recorded file of asset `name`; return its folder. Errors name the offending file."""
    if name not in ASSET_DIRS:
        raise ValueError(f"unknown toy asset {name!r}; expected one of {sorted(ASSET_DIRS)}")
    root = Path(root) if root is not None else default_root()
    folder = ASSET_DIRS[name]
    entries = {rel: d for rel, d in read_checksums(root).items() if rel.startswith(folder + "/")}
    if not entries:
        raise FileNotFoundError(
            f"toy asset {name!r}: {root / CHECKSUMS} lists no files under {folder}/; {REGENERATE}"
        )
    for rel, digest in sorted(entries.items()):
        path = root / rel
        if not path.is_file():
            raise FileNotFoundError(f"toy asset file missing: {path} (asset {name!r}); {REGENERATE}")
        actual = sha256_file(path)
        if actual != digest:
            raise ToyAssetError(
                f"toy asset file corrupt: {path} (asset {name!r}) has sha256 {actual}, expected {digest} "
                f"from {root / CHECKSUMS}; {REGENERATE}"
            )
    return root / folder


def toy_asset_path(name: str, root: str | Path | None = None) -> Path:
    """The folder of toy asset `name` ('toy-sd', 'toy-pixart', 'classifier'), verified once per process.

    `root` defaults to $WADI_TOY_ASSETS, else the assets shipped inside the package.
    """
    root = (Path(root) if root is not None else default_root()).resolve()
    key = (root, ASSET_DIRS.get(name, name))
    if key not in _verified:
        verify_asset(name, root)
        _verified.add(key)
    return root / ASSET_DIRS[name]


__all__ = [
    "ASSETS_ROOT",
    "ASSET_DIRS",
    "ToyAssetError",
    "read_checksums",
    "toy_asset_path",
    "verify_asset",
    "write_checksums",
]
