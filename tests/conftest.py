"""Shared fixtures: tiny random-init diffusers directories written once per test session."""

from __future__ import annotations

import pytest
import torch

from wadi.testing import save_tiny_pipeline, tiny_backbone_config

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"), "unet")


@pytest.fixture(scope="session")
def tiny_pixart_dir(tmp_path_factory):
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_pixart"), "pixart")


@pytest.fixture(scope="session")
def tiny_sd21_dir(tmp_path_factory):
    return save_tiny_pipeline(
        tmp_path_factory.mktemp("tiny_sd21"), "unet", linear_projection=True, text_dim=1024
    )


@pytest.fixture
def tiny_sd_cfg(tiny_sd_dir):
    return tiny_backbone_config(tiny_sd_dir, "unet")


@pytest.fixture
def tiny_pixart_cfg(tiny_pixart_dir):
    return tiny_backbone_config(tiny_pixart_dir, "pixart")
