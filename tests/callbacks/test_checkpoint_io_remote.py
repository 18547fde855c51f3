"""Checkpoints go through fsspec: a remote-style URL (s3://, gs://; here fsspec's in-memory filesystem) is
written there, not to a local folder named after the URL, and reads back with weights_only=True."""

from __future__ import annotations

import fsspec
import pytest
import torch

from wadi.callbacks.checkpoint_io import AtomicCheckpointIO


@pytest.fixture
def memfs():
    fs = fsspec.filesystem("memory")
    yield fs
    if fs.exists("/wadi-test"):
        fs.rm("/wadi-test", recursive=True)


def test_memory_url_round_trip(tmp_path, monkeypatch, memfs):
    monkeypatch.chdir(tmp_path)  # a path mangled into a local one would land here
    io = AtomicCheckpointIO()
    url = "memory://wadi-test/run/checkpoints/last.ckpt"
    io.save_checkpoint({"step": 7, "w": torch.arange(4.0)}, url)
    assert memfs.exists("/wadi-test/run/checkpoints/last.ckpt")
    assert list(tmp_path.iterdir()) == []
    loaded = io.load_checkpoint(url)
    assert loaded["step"] == 7 and torch.equal(loaded["w"], torch.arange(4.0))
    io.remove_checkpoint(url)
    assert not memfs.exists("/wadi-test/run/checkpoints/last.ckpt")


class _Boom:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_load_is_weights_only(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"x": _Boom()}, path)  # a checkpoint whose unpickling would call a function
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_local_file_url_is_atomic_too(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, f"file://{tmp_path}/ckpts/last.ckpt")
    assert [p.name for p in (tmp_path / "ckpts").iterdir()] == ["last.ckpt"]
    assert io.load_checkpoint(tmp_path / "ckpts" / "last.ckpt")["step"] == 1
