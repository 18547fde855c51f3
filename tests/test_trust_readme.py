"""Issue 17, the first hour: the default run's console is clean and ends with its metrics and paths, and the
README's copy-paste commands for the default run's output work (on a 1-step run of the default job)."""

from __future__ import annotations

import os
import re
import runpy
import shlex
import subprocess
import sys

import pytest

from wadi.config import CONF_DIR

README = CONF_DIR.parent / "README.md"
# Sizes only: the default job, one step, a small toy evaluation (the README commands are run as written).
SMALL_RUN = [
    "max_steps=1",
    "batch_size=2",
    "dataset.num_prompts=64",
    "eval.n_samples=8",
    "eval.n_real=16",
    "eval.batch_size=8",
    "callbacks.sample_grid.seeds_per_prompt=1",
]
SMALL_EVAL = ["eval.n_samples=8", "eval.n_real=16", "eval.batch_size=8"]


def readme_commands() -> list[list[str]]:
    """The commands of the README's "After `make train`" block, as argv lists (comments dropped)."""
    text = README.read_text()
    section = text[text.index("### After `make train`") :]
    block = section[
        section.index("```bash") + len("```bash") : section.index("```", section.index("```bash") + 7)
    ]
    commands = []
    for line in block.strip().splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line.startswith("python -m "):
            commands.append(shlex.split(line))
    return commands


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`python -m wadi.train` (the default job: toy teacher, W&B offline), 1 step, in a fresh folder."""
    root = tmp_path_factory.mktemp("first_hour")
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(CONF_DIR.parent)}
    proc = subprocess.run(
        [sys.executable, "-m", "wadi.train", *SMALL_RUN],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return root, proc.stdout + proc.stderr


@pytest.mark.slow
def test_default_run_console_is_clean_and_ends_with_metrics_and_paths(default_run):
    root, console = default_run
    for noise in (
        "Epoch 0/-2",
        "💡 Tip",
        "litlogger",
        "litmodels",
        "LeafSpec",
        "anonymous",
        "Loading weights",
    ):
        assert noise not in console, noise
    lines = [line.strip() for line in console.splitlines() if line.strip() and not line.startswith("wandb")]
    repeated = {line for line in lines if lines.count(line) > 1 and not set(line) <= set("─━ ")}
    assert not repeated, repeated  # Lightning's INFO lines were printed twice (its handler and Hydra's)
    assert re.search(r"step\s+━+\s+1/1", console)  # the progress bar counts the run's steps
    run = root / "outputs" / "toy_r64"
    report = console[console.index("wadi: run finished at step 1") :]
    assert "train metrics" in report and "loss_gen" in report and "val metrics" in report
    for path in (
        run / "checkpoints" / "last.ckpt",
        run / "eval" / "step0000001.json",
        run / "export" / "merged",
        run / "export" / "adapters.safetensors",
    ):
        assert str(path) in report and path.exists(), path
    assert "offline-run" in report  # the W&B folder, and how to upload it


@pytest.mark.slow
def test_readme_commands_work_on_the_default_runs_output(default_run, monkeypatch):
    root, _ = default_run
    commands = readme_commands()
    assert [c[2] for c in commands] == [
        "wadi.sample",
        "wadi.sample",
        "wadi.evaluate",
        "wadi.analyze",
        "wadi.analyze",
    ]
    monkeypatch.chdir(root)
    for argv in commands:
        module, args = argv[2], argv[3:]
        if module == "wadi.evaluate":
            args += SMALL_EVAL
        if args[:1] == ["weights"]:
            args += ["swap=false", "svd=false"]  # the two full-model swap copies and the SVDs: minutes on CPU
        monkeypatch.setattr(sys, "argv", [module, *args])
        runpy.run_module(module, run_name="__main__", alter_sys=False)  # raises if the command fails
    assert (root / "samples" / "grid.png").is_file()
    assert (root / "outputs" / "eval" / "toy" / "toy_r64" / "metrics.json").is_file()  # named after the run
    assert (root / "analysis" / "summary.json").is_file() and (
        root / "analysis" / "trajectory_00.png"
    ).is_file()


def test_example_prompts_are_toy_prompts():
    """The prompts in the README's commands and in conf/sample.yaml / conf/analyze.yaml are valid toy captions."""
    from omegaconf import OmegaConf

    from wadi.generation import prompt_list
    from wadi.toy.world import parse_caption

    prompts = []
    for argv in readme_commands():
        for arg in argv:
            if arg.startswith("prompts="):
                prompts += prompt_list(OmegaConf.from_dotlist([arg]).prompts)
    for name in ("sample.yaml", "analyze.yaml"):
        text = (CONF_DIR / name).read_text()
        prompts += list(OmegaConf.load(CONF_DIR / name).prompts)
        prompts += re.findall(r'prompts=\'\["([^"]+)"', text)  # the usage lines at the top
    assert len(prompts) >= 6
    for prompt in prompts:
        parse_caption(prompt)  # raises ValueError naming a prompt outside the toy grammar


def test_readme_commands_compose():
    """Every README command for the default run composes with its command's config (fast; the slow test above
    runs them)."""
    from wadi.testing import compose_config

    for argv in readme_commands():
        module, args = argv[2], argv[3:]
        name = module.removeprefix("wadi.")
        if module == "wadi.analyze":
            args = [f"command={args[0]}", *args[1:]]
        cfg = compose_config(args, name=name)
        assert str(cfg.get("model") or cfg.get("b")).startswith("outputs/toy_r64/")
