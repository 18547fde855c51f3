"""Two CPU processes (gloo) through `trainer=fsdp`: the frozen base is sharded, adapters stay whole and in
sync, and the export merges into a whole base rebuilt from disk."""

from __future__ import annotations

import json

import pytest
import torch

from wadi.testing import save_tiny_pipeline, two_process_train

RANK_DUMP = """
import torch
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor
class Dump(Callback):
    def __init__(self, path):
        self.path = path
    def on_train_end(self, trainer, module):
        adapters = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
        module.denoiser.model.reshard()  # FSDP2 keeps the root unit gathered after a forward
        frozen = [p for p in module.denoiser.model.parameters() if not p.requires_grad]
        local = sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in frozen)
        info = {"adapters_plain": not any(isinstance(p, DTensor) for p in adapters.values()),
                "sharded": sum(isinstance(p, DTensor) for p in frozen), "frozen": len(frozen),
                "local_numel": local, "full_numel": sum(p.numel() for p in frozen)}
        torch.save({"adapters": adapters, "info": info}, f"{self.path}/rank{trainer.global_rank}.pt")
"""


@pytest.mark.slow
def test_two_process_fsdp_shards_the_base_and_keeps_adapters_in_sync(tmp_path):
    model = save_tiny_pipeline(tmp_path / "model", "unet")
    (tmp_path / "dumpcb.py").write_text(RANK_DUMP)
    run = tmp_path / "run"
    out = two_process_train(
        model,
        tmp_path,
        "fsdp",
        "dataset.sample_prompts=[a red circle]",
        f"run_dir={run}",
        "~callbacks.progress",
        "+callbacks.dump._target_=dumpcb.Dump",
        f"+callbacks.dump.path={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for r in (r0, r1):
        info = r["info"]
        assert info["adapters_plain"] and info["sharded"] == info["frozen"]  # every frozen weight sharded
        assert info["local_numel"] < 0.6 * info["full_numel"]  # each rank holds about half of the base
    a0, a1 = r0["adapters"], r1["adapters"]
    assert a0.keys() == a1.keys() and all(torch.equal(a0[k], a1[k]) for k in a0)
    moved = [k for k in a0 if k.endswith("lorad_A") and a0[k].abs().sum() > 0]
    assert len(moved) > 0.9 * sum(k.endswith("lorad_A") for k in a0)
    # The sample grid ran on both ranks (a collective forward) and rank 0 saved it; the export is whole.
    assert list((run / "samples").glob("step*.png"))
    merged = run / "export" / "merged"
    assert json.loads((merged / "wadi_export.json").read_text())["rank"] == 4
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(merged / "unet")
    base = UNet2DConditionModel.from_pretrained(model / "unet")
    changed = [n for n, p in unet.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert changed and all(n.endswith("weight") for n in changed)  # LoRaD moved weights, nothing else
