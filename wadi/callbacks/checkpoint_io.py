"""Checkpoint IO: Lightning's TorchCheckpointIO (fsspec paths: s3://, gs://, ...), with two guarantees added.

- Local paths are written atomically and durably: torch.save into a temporary file in the same folder, fsync,
  os.replace over the target, fsync the folder. A crash mid-write never leaves a truncated `last.ckpt`, and the
  rename cannot degrade into a copy (Lightning's local transaction writes its temp file under $TMPDIR and moves
  it, which is a copy when $TMPDIR is another filesystem). Remote paths use Lightning's save unchanged.
- Loads are weights_only=True unless the caller asks otherwise: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a local `path` atomically (same-directory temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def local_path(path: str | Path) -> Path | None:
    """The local filesystem path behind `path` (a plain path or a file:// URL); None for a remote URL."""
    fs, stripped = url_to_fs(str(path))
    return Path(stripped) if isinstance(fs, LocalFileSystem) else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local saves never leave a half-written `last.ckpt` behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        local = local_path(path)
        if local is None:
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options for a local path ({path})")
        atomic_torch_save(checkpoint, local)

    def load_checkpoint(self, path, map_location: Any = lambda storage, loc: storage, weights_only=None):
        return super().load_checkpoint(
            path, map_location=map_location, weights_only=True if weights_only is None else weights_only
        )
