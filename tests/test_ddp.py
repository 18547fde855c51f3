"""Two CPU processes (gloo) through `trainer=ddp`: adapter gradients are averaged, so ranks stay identical."""

from __future__ import annotations

import pytest
import torch

from wadi.testing import save_tiny_pipeline, two_process_train

RANK_DUMP = """
import sys, torch
from lightning.pytorch.callbacks import Callback
class Dump(Callback):
    def __init__(self, path):
        self.path = path
    def on_train_end(self, trainer, module):
        params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        torch.save(params, f"{self.path}/rank{trainer.global_rank}.pt")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "compile_overrides",
    [(), ("compile=all", "compile_backend=aot_eager")],
    ids=["eager", "compile_all"],
)
def test_two_process_ddp_keeps_ranks_in_sync(tmp_path, compile_overrides):
    """Also with every VSD pass compiled: the adapters' gradients are reduced outside the graphs."""
    model = save_tiny_pipeline(tmp_path / "model", "unet")
    (tmp_path / "dumpcb.py").write_text(RANK_DUMP)
    out = two_process_train(
        model,
        tmp_path,
        "ddp",
        "dataset.sample_prompts=[]",
        "export=false",
        f"run_dir={tmp_path / 'run'}",
        "~callbacks.progress",
        "~callbacks.sample_grid",
        "+callbacks.dump._target_=dumpcb.Dump",
        f"+callbacks.dump.path={tmp_path}",
        *compile_overrides,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    if compile_overrides:
        assert "compile=all: the first steps compile" in out.stdout + out.stderr
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # The ranks saw different prompts and noise; only averaged gradients keep their adapters equal.
    assert r0.keys() == r1.keys() and all(torch.equal(r0[k], r1[k]) for k in r0)
    moved = [k for k in r0 if k.endswith("lorad_A") and r0[k].abs().sum() > 0]  # A starts at zero
    assert len(moved) > 0.9 * sum(k.endswith("lorad_A") for k in r0)
