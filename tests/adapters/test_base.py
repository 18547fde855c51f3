"""The adapter seam: the registry, config-driven targets, and a kind added without touching wadi."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wadi.adapters import ADAPTERS, Adapter, AdapterTargets, LoRaD, get_adapter, register_adapter, use_adapter
from wadi.adapters.targets import select_targets


def test_default_adapter_is_lorad_with_the_configured_targets():
    adapter = get_adapter()
    assert isinstance(adapter, LoRaD) and adapter.name == "lorad"
    assert get_adapter("lorad").target_config == adapter.target_config
    assert adapter.targets("unet", "generator") == AdapterTargets(
        ["down_blocks", "up_blocks", "mid_block"], []
    )
    fake = adapter.targets("pixart", "fake_score")
    assert fake.blocks == ["transformer_blocks"] and "time_emb_proj" in fake.skip
    assert get_adapter(adapter) is adapter


def test_unknown_adapter_and_missing_targets_are_named():
    with pytest.raises(ValueError, match=r"unknown adapter 'dora2'; known adapters: \[.*'lorad'.*\]"):
        get_adapter("dora2")
    with pytest.raises(ValueError, match="unknown adapter 'context'"):
        get_adapter("context")  # a module of wadi.adapters that defines no kind
    with pytest.raises(ValueError, match="needs a `name`"):
        get_adapter({"targets": {}})
    with pytest.raises(ValueError, match=r"no targets for backbone kind 'dit'.*targets\.dit"):
        get_adapter().targets("dit", "generator")
    with pytest.raises(ValueError, match="no targets for role 'critic'"):
        get_adapter().targets("unet", "critic")


def test_a_config_node_overrides_targets():
    node = {"name": "lorad", "targets": {"unet": {"generator": {"blocks": ["up_blocks"], "on_odd": "skip"}}}}
    targets = get_adapter(node).targets("unet", "generator")
    assert targets == AdapterTargets(["up_blocks"], [], "skip")


def test_state_keys_are_the_kinds_own():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    lorad = LoRaD()
    lorad.attach(model, "generator", 2, AdapterTargets(["0"]))
    keys = set(model.state_dict())
    assert lorad.state_keys(keys) == {"0.lorad.generator.lorad_A", "0.lorad.generator.lorad_B"}
    assert not lorad.is_state_key("0.weight") and not lorad.is_state_key("lorad_mixer.weight")
    assert list(lorad.state_dict(model, "generator")) == ["0.lorad_A", "0.lorad_B"]


def test_merged_context_keeps_outputs_and_restores_the_base_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    lorad = LoRaD()
    lorad.attach(model, "generator", 2, AdapterTargets(["0", "1"]))
    with torch.no_grad():
        for p in lorad.parameters(model, "generator"):
            p.normal_(std=0.5)
    base = {k: v.clone() for k, v in model.state_dict().items() if not lorad.is_state_key(k)}
    x = torch.randn(3, 8)
    with use_adapter("generator"):
        before = model(x)
    with lorad.merged(model, "generator"):
        with use_adapter(None):  # the merged weights are what a plain diffusers model would run
            plain = nn.functional.linear(
                nn.functional.linear(x, model[0].weight, model[0].bias), model[1].weight
            )
        torch.testing.assert_close(plain + model[1].bias, before, rtol=1e-5, atol=1e-6)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())


def test_a_new_kind_needs_only_its_class():
    """What LoRA / DoRA / full fine-tuning will do: subclass, register, select by name."""

    @register_adapter
    class Bias(Adapter):  # trains a bias offset per targeted layer
        name = "test_bias_offset"

        def attach(self, model, role, rank, targets):
            names = select_targets(model, targets, even_only=False)
            for n in names:
                model.get_submodule(n).register_parameter(f"offset_{role}", nn.Parameter(torch.zeros(1)))
            return names

        def parameters(self, model, role):
            return [p for n, p in model.named_parameters() if n.endswith(f"offset_{role}")]

        def merge(self, model, role, safe_merge=True):
            pass

        def unmerge(self, model, role=None):
            pass

        def state_dict(self, model, role):
            return {n: p for n, p in model.named_parameters() if n.endswith(f"offset_{role}")}

        def is_state_key(self, key):
            return ".offset_" in key

    try:
        node = {"name": "test_bias_offset", "targets": {"unet": {"generator": {"blocks": ["0"]}}}}
        adapter = get_adapter(node)
        model = nn.Sequential(nn.Linear(3, 3))
        assert adapter.attach(model, "generator", 1, adapter.targets("unet", "generator")) == ["0"]
        assert len(adapter.parameters(model, "generator")) == 1
        with pytest.raises(ValueError, match="registered twice"):

            @register_adapter
            class Other(Bias):
                pass

    finally:
        ADAPTERS.pop("test_bias_offset", None)
