"""The SLURM sweep launcher (issue 6): `hydra/launcher=wadi_slurm` composes with the paper's DDP experiment.

Nothing is submitted here (no SLURM on CI); the test pins what a cluster user gets."""

from __future__ import annotations

from wadi.testing import compose_config


def test_wadi_slurm_launcher_composes_with_the_ddp_experiment():
    cfg = compose_config(
        [
            "hydra/launcher=wadi_slurm",
            "experiment=wadi_sd15",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.nodes=2",
            "trainer.num_nodes=2",
        ],
        return_hydra_config=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 8)
    assert launcher.partition == "gpu" and launcher.timeout_min == 4320
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == launcher.tasks_per_node
    assert cfg.trainer.strategy._target_ == "wadi.distributed.AdapterDDPStrategy"


def test_ckpt_path_auto_resumes_only_when_a_checkpoint_exists(tmp_path):
    import pytest

    from wadi.train import resolve_ckpt_path

    assert resolve_ckpt_path("auto", str(tmp_path)) is None
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        resolve_ckpt_path("last", str(tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    last.write_bytes(b"x")
    assert resolve_ckpt_path("auto", str(tmp_path)) == str(last)
    assert resolve_ckpt_path("last", str(tmp_path)) == str(last)
    assert resolve_ckpt_path(None, str(tmp_path)) is None
