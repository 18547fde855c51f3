"""Issue 17, `--help`: each command says what it does and lists its own options with their YAML comments."""

from __future__ import annotations

import runpy
import subprocess
import sys

import pytest

from wadi.config import CONF_DIR


def test_sample_help_lists_its_own_options_not_the_training_groups():
    proc = subprocess.run(
        [sys.executable, "-m", "wadi.sample", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=CONF_DIR.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "One step for a WaDi export or checkpoint" in out  # what it does (its docstring)
    assert "per_prompt=4" in out and "explicit seeds, one per prompt" in out  # conf/sample.yaml + comment
    assert "hybrid_k=0" in out and "the teacher's first k DDIM steps" in out  # conf/generation/default.yaml
    for training in ("trainer", "backbone", "dataset", "callbacks", "rank="):
        assert training not in out, training


@pytest.mark.parametrize(
    "module, expected, absent",
    [
        ("wadi.train", ["rank=256", "generator LoRaD rank", "trainer=<", "backbone=<"], []),
        (
            "wadi.evaluate",
            ["eval=<coco2014|coco2017|toy", "shard_size=1000", "images per resumable shard"],
            ["rank="],
        ),
        ("wadi.analyze", ["teacher_steps=1", "# trajectory", "b=null"], ["trainer=<"]),
        (
            "wadi.cache_prompts",
            ["cache_dir=null", "dataset=<", "encode the prompts once"],
            ["rank=", "trainer=<"],
        ),
        ("wadi.toy.pretrain", ["arch=<shipped|tiny>", "stages=", "vae.kl_weight"], ["backbone=<"]),
    ],
)
def test_every_command_has_its_own_help(module, expected, absent, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(module, run_name="__main__", alter_sys=False)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"python -m {module}")
    for text in expected:
        assert text in out, text
    for text in absent:
        assert text not in out, text
