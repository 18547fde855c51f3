"""`pip install .` ships everything a command needs: the Hydra configs (conf/) travel inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The repository built as a wheel (out of a copy: no build/ or egg-info in the checkout) and installed
    with --target into a folder of its own."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("wadi", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    built = _pip("wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), ".", cwd=src)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list((tmp / "dist").glob("wadi-*.whl"))
    assert len(wheels) == 1, wheels
    site = tmp / "site"
    inst = _pip("install", "--no-deps", "--target", str(site), str(wheels[0]), cwd=tmp)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    return {"site": site, "build_log": built.stdout + built.stderr, "tmp": tmp}


def _run_outside(installed, *args: str) -> subprocess.CompletedProcess:
    elsewhere = installed["tmp"] / "elsewhere"  # not the repository: its conf/ and wadi/ must not be found
    elsewhere.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(installed["site"]), "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_wheel_ships_configs_and_train_runs_from_it(installed):
    site = installed["site"]
    assert (site / "wadi" / "conf" / "config.yaml").is_file()
    assert (site / "wadi" / "conf" / "backbone" / "toy.yaml").is_file()
    assert (site / "wadi" / "conf" / "arch" / "sd15_unet.json").is_file()
    assert not (site / "conf").exists()  # no top-level `conf` package in site-packages

    where = _run_outside(
        installed, "-c", "import wadi, wadi.config; print(wadi.__file__); print(wadi.config.CONF_DIR)"
    )
    assert where.returncode == 0, where.stderr
    wadi_file, conf_dir = where.stdout.split()
    assert Path(wadi_file).is_relative_to(site), wadi_file  # the installed copy, not the editable checkout
    assert Path(conf_dir) == site / "wadi" / "conf"

    dry = _run_outside(installed, "-m", "wadi.train", "dry_run=true")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "wadi dry run: backbone=toy" in dry.stdout


@pytest.mark.slow
def test_build_has_no_license_metadata_warnings(installed):
    log = installed["build_log"]  # pip -v: the build backend's warnings are in it
    assert "Building wheel for wadi" in log
    assert "project.license" not in log and "License classifiers are deprecated" not in log, log
    assert "BuildBackendWarning" not in log, log


def test_make_clean_keeps_runs(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("no make")
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    runs = [
        tmp_path / "outputs" / "toy_r64" / "checkpoints",
        tmp_path / "outputs" / "multirun" / "a",
        tmp_path / "multirun",
    ]
    for folder in runs:
        folder.mkdir(parents=True)
        (folder / "last.ckpt").write_bytes(b"run")
    (tmp_path / ".pytest_cache").mkdir()
    (tmp_path / "wadi" / "__pycache__").mkdir(parents=True)
    out = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert all((folder / "last.ckpt").is_file() for folder in runs)
    assert not (tmp_path / ".pytest_cache").exists() and not (tmp_path / "wadi" / "__pycache__").exists()
