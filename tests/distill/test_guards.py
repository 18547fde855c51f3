"""Non-finite weights never reach an export or a loaded module; a crafted checkpoint cannot run code."""

from __future__ import annotations

import pickle

import pytest
import torch

from wadi.distill.guards import NonFiniteError, all_finite, check_finite, first_nonfinite
from wadi.sample import load_checkpoint_file


def test_check_finite_names_the_tensor_and_count():
    state = {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan"), float("inf")])}
    assert first_nonfinite(state) == ("b", 2, 3)
    with pytest.raises(NonFiniteError, match="'b' holds 2 of 3"):
        check_finite(state, "export x")
    check_finite({"a": torch.ones(2)}, "fine")
    assert all_finite([torch.ones(3), torch.zeros(2)]) and all_finite([])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])])
    assert not all_finite([torch.tensor([float("nan")])])


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_checkpoint_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"x": _Payload(marker)}, f)
    with pytest.raises(ValueError, match="never unpickles code") as err:
        load_checkpoint_file(path)
    assert not marker.exists()
    assert "weights_only=False" not in str(err.value)
