"""LoRA, DoRA and full fine-tuning beside LoRaD: peft's math, the per-forward role, the seam's contract per kind."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora.layer import Linear as PeftLinear
from torch import nn

from wadi.adapters import AdapterTargets, get_adapter, use_adapter
from wadi.adapters.budget import closest_rank, count, equal_budget, layer_shapes
from wadi.adapters.lora import RoleLoraLinear
from wadi.distill.module import WaDiModule, check_checkpoint_compatible

KINDS = ["lorad", "lora", "dora", "full"]
PROMPTS = ["a red circle at the left", "a small blue square"]
EVERYTHING = AdapterTargets(blocks=["0", "1", "2"])


def module(cfg, generator: str, fake: str = "lorad", **kw) -> WaDiModule:
    torch.manual_seed(0)
    return WaDiModule(
        backbone=cfg,
        generator={"adapter": generator, "rank": 4, "lr": 1e-3},
        fake_score={"adapter": fake, "rank": 2, "lr": 1e-2},
        **kw,
    )


def randomize(params, std=0.05):
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn_like(p) * std)


def eps(m: WaDiModule, role, seed=0):
    torch.manual_seed(seed)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 400])
    return m.denoiser(x, t, m.conditioning({"prompt": PROMPTS}), role)


# ------------------------------------------------------------------ peft's math is the reference
@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_role_layer_matches_peft_own_layer_and_merge(dora):
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    model = nn.Sequential(copy.deepcopy(base))
    kind = get_adapter("dora" if dora else "lora")
    kind.attach(model, "generator", 3, AdapterTargets(blocks=["0"]))
    ours = model[0]
    assert isinstance(ours, RoleLoraLinear)
    config = LoraConfig(r=3, lora_alpha=3.0, use_dora=dora)
    ref = PeftLinear(copy.deepcopy(base), "default", config, r=3, lora_alpha=3.0)
    randomize(kind.parameters(model, "generator"), std=0.3)
    with torch.no_grad():
        ref.lora_A["default"].weight.copy_(ours.lora_A["generator"].weight)
        ref.lora_B["default"].weight.copy_(ours.lora_B["generator"].weight)
        if dora:
            ref.lora_magnitude_vector["default"].weight.copy_(ours.lora_magnitude_vector["generator"].weight)
    x = torch.randn(5, 12)
    expected = ref(x)
    with use_adapter("generator"):
        got = model(x)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, base(x), atol=1e-3)  # the adapter does something
    with use_adapter(None):
        assert torch.equal(model(x), base(x))  # the teacher: the frozen base, bit for bit
    with use_adapter("fake_score"):  # a role this layer has no adapter for
        assert torch.equal(model(x), base(x))
    kind.merge(model, "generator")
    ref.merge(safe_merge=True)
    assert torch.allclose(ours.get_base_layer().weight, ref.get_base_layer().weight, atol=1e-6)
    with use_adapter("generator"):
        assert torch.allclose(model(x), expected, atol=1e-5)
    with use_adapter(None), pytest.raises(RuntimeError, match="is merged into the weight"):
        model(x)
    kind.unmerge(model)
    assert torch.equal(ours.get_base_layer().weight, base.weight)  # bit for bit


def test_lora_rank_no_layer_can_take_names_the_widest_layer():
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))
    with pytest.raises(
        ValueError, match=r"rank 7 .* the widest, 0, has min\(in_features, out_features\) = 6"
    ):
        get_adapter("lora").attach(model, "generator", 7, EVERYTHING)
    get_adapter("lora").attach(
        model, "generator", 6, EVERYTHING
    )  # 6 fits layer 0 (on layer 1, B A has rank <= 4)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(
        ValueError, match=r"unknown adapter 'lorax'; known adapters: \['dora', 'full', 'lora', 'lorad'\]"
    ):
        get_adapter("lorax")


def test_kinds_stack_on_one_layer_without_adapting_each_other():
    """Each kind's own factors (peft's lora_A is an nn.Linear) are never another kind's targets."""
    torch.manual_seed(0)
    for gen, fake in [
        ("lora", "lorad"),
        ("full", "lora"),
        ("lorad", "dora"),
        ("dora", "full"),
        ("lora", "dora"),
    ]:
        model = nn.Sequential(nn.Linear(8, 6))
        base = copy.deepcopy(model[0])
        g, f = get_adapter(gen), get_adapter(fake)
        assert g.attach(model, "generator", 2, EVERYTHING) == ["0"]
        assert f.attach(model, "fake_score", 2, EVERYTHING) == ["0"]
        counts = {
            n: sum(p.numel() for p in k.parameters(model, r))
            for n, k, r in ((gen, g, "generator"), (fake, f, "fake_score"))
        }
        expected = {n: get_adapter(n).layer_count(8, 6, 2) for n in (gen, fake)}
        assert counts == expected, (gen, fake)
        randomize(g.parameters(model, "generator") + f.parameters(model, "fake_score"), std=0.3)
        x = torch.randn(3, 8)
        outs = {}
        for role in (None, "generator", "fake_score"):
            with use_adapter(role):
                outs[role] = model(x)
        assert torch.equal(outs[None], base(x))
        assert not torch.allclose(outs["generator"], outs["fake_score"])


# ------------------------------------------------------------------ the seam's contract, per kind, on a module
@pytest.mark.parametrize(
    "kind", ["lora", "dora", "full"]
)  # LoRaD's: tests/adapters/test_lorad.py, tests/distill
def test_kind_identity_step_and_merge(kind, tiny_sd_cfg):
    m = module(tiny_sd_cfg, kind)
    assert m.adapter_kinds() == {"generator": kind, "fake_score": "lorad"}
    # Identity at init: the student is the teacher before training.
    assert torch.allclose(eps(m, "generator"), eps(m, None), atol=1e-6)
    # A generator step moves the generator's parameters only (not the fake score's, not the frozen base).
    m.train()
    gen_p, fake_p = m.generator_parameters(), m.fake_score_parameters()
    frozen = {
        k: v.detach().clone()
        for k, v in m.denoiser.state_dict().items()
        if not m.adapters["generator"].is_state_key(k)
    }
    fake_before = [p.detach().clone() for p in fake_p]
    gen_before = [p.detach().clone() for p in gen_p]
    opt = torch.optim.AdamW(gen_p, lr=1e-2)
    rng = torch.Generator().manual_seed(0)
    out = m.generator_step(m.conditioning({"prompt": PROMPTS}), m.null_conditioning(), rng)
    out["loss"].backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(gen_before, gen_p))
    assert all(torch.equal(b, p) for b, p in zip(fake_before, fake_p))
    state = m.denoiser.state_dict()
    assert all(
        torch.equal(v, state[k])
        for k, v in frozen.items()
        if k in state and not m.adapters["fake_score"].is_state_key(k)
    )
    # Merge, then unmerge, restores the base bit for bit; merged == unmerged generator.
    m.eval()
    randomize(gen_p)
    unmerged = eps(m, "generator")
    base = {k: v.clone() for k, v in state.items()}
    with m.adapter.merged(m.denoiser.model, "generator"):
        assert torch.allclose(eps(m, "generator"), unmerged, atol=1e-5)
    assert all(torch.equal(v, base[k]) for k, v in m.denoiser.state_dict().items())


def test_gradient_checkpointing_recomputes_under_the_forward_role(tiny_sd_cfg):
    """LoRA on the generator, full fine-tuning on the fake score (DoRA runs through LoRA's RoleLoraLinear)."""
    plain = module(tiny_sd_cfg, "lora", fake="full")
    randomize(plain.generator_parameters())
    randomize(plain.fake_score_parameters())
    ckpt = copy.deepcopy(plain)
    ckpt.denoiser.update_speed(gradient_checkpointing=True)
    assert ckpt.denoiser.model.is_gradient_checkpointing
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 400])
    grads = []
    for m in (plain, ckpt):
        m.train()
        cond = m.conditioning({"prompt": PROMPTS})
        loss = sum(m.denoiser(x, t, cond, role).square().mean() for role in ("generator", "fake_score"))
        with use_adapter(None):  # the teacher active at backward time must not leak into the recomputation
            loss.backward()
        grads.append([p.grad.clone() for p in m.generator_parameters() + m.fake_score_parameters()])
    assert len(grads[0]) > 0 and all(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", ["lora", "dora", "full"])
def test_export_loads_in_stock_diffusers_and_adapter_file_reloads(kind, tiny_sd_cfg, tmp_path):
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from wadi.export import export_adapters, export_merged, load_adapters

    m = module(tiny_sd_cfg, kind).eval()
    randomize(m.generator_parameters())
    randomize(m.fake_score_parameters())
    out = export_merged(m, tmp_path / "merged")
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    torch.manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999, 400])
    cond = m.conditioning({"prompt": PROMPTS})
    with torch.no_grad():
        theirs = unet(x, t, encoder_hidden_states=cond.embeds).sample
        ours = m.denoiser(x, t, cond, "generator")
    assert torch.allclose(theirs, ours, atol=1e-5)
    path = export_adapters(m, tmp_path / "adapters.safetensors")
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["generator_adapter"] == kind and f.metadata()["fake_score_adapter"] == "lorad"
    with torch.no_grad():
        fake = m.denoiser(x, t, cond, "fake_score")
        for p in m.generator_parameters() + m.fake_score_parameters():
            p.zero_()
    load_adapters(m, path)
    with torch.no_grad():
        assert torch.equal(m.denoiser(x, t, cond, "generator"), ours)
        assert torch.equal(m.denoiser(x, t, cond, "fake_score"), fake)
    other = SimpleNamespace(adapters={"generator": get_adapter("lorad"), "fake_score": get_adapter("lorad")})
    with pytest.raises(ValueError, match=f"its generator adapter is '{kind}' but this module's is 'lorad'"):
        load_adapters(other, path)


# ------------------------------------------------------------------ checkpoints and trainers
def test_resume_with_another_kind_is_refused():
    ckpt = {
        "wadi": {
            "backbone": "toy",
            "rank": 4,
            "fake_rank": 2,
            "adapters": {"generator": "lora", "fake_score": "lorad"},
        }
    }
    check_checkpoint_compatible(ckpt, "toy", 4, 2, adapters={"generator": "lora", "fake_score": "lorad"})
    with pytest.raises(ValueError, match=r"generator.adapter: checkpoint 'lora' vs this run 'dora'"):
        check_checkpoint_compatible(ckpt, "toy", 4, 2, adapters={"generator": "dora", "fake_score": "lorad"})
    old = {"wadi": {"backbone": "toy", "rank": 4, "fake_rank": 2}}  # before per-role kinds: LoRaD
    check_checkpoint_compatible(old, "toy", 4, 2, adapters={"generator": "lorad", "fake_score": "lorad"})
    with pytest.raises(ValueError, match=r"generator.adapter: checkpoint 'lorad' vs this run 'full'"):
        check_checkpoint_compatible(old, "toy", 4, 2, adapters={"generator": "full", "fake_score": "lorad"})


def test_full_with_fsdp_is_refused_before_loading():
    from wadi.config import ConfigError, validate_train_config
    from wadi.testing import compose_config

    with pytest.raises(
        ConfigError, match="generator.adapter=full with trainer=fsdp is refused: .* not be sharded"
    ):
        validate_train_config(compose_config(["trainer=fsdp", "generator.adapter=full"]))
    validate_train_config(compose_config(["trainer=fsdp", "generator.adapter=lora"]))


def test_adapter_group_sets_both_roles_and_roles_override():
    from wadi.config import validate_train_config
    from wadi.testing import compose_config

    typed = validate_train_config(compose_config(["adapter=dora"]))
    assert (typed.generator.adapter, typed.fake_score.adapter) == ("dora", "dora")
    typed = validate_train_config(compose_config(["generator.adapter=full"]))
    assert (typed.generator.adapter, typed.fake_score.adapter) == ("full", "lorad")


# ------------------------------------------------------------------ equal budgets
def test_closest_rank_is_the_nearest_integer_of_an_affine_count():
    assert closest_rank(lambda r: 10 * r, 34) == (3, 30)
    assert closest_rank(lambda r: 10 * r, 36) == (4, 40)
    assert closest_rank(lambda r: 10 * r, 35) == (3, 30)  # a tie: the smaller rank
    assert closest_rank(lambda r: 10 * r + 7, 2) == (1, 17)  # never below 1
    with pytest.raises(ValueError, match="target parameter count must be >= 1"):
        closest_rank(lambda r: r, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_budget_count_equals_the_attached_parameters(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 10, bias=False), nn.Linear(10, 4))
    adapter = get_adapter(kind)
    shapes = layer_shapes(model, EVERYTHING)
    adapter.attach(model, "generator", 3, EVERYTHING)
    assert count(adapter, shapes, 3) == sum(p.numel() for p in adapter.parameters(model, "generator"))


@pytest.mark.parametrize(
    ("backbone", "lorad_rank", "expected"),
    [
        (
            "sd15",
            256,
            {
                "lorad": (256, 83_795_968),
                "lora": (198, 83_622_528),
                "dora": (198, 83_854_848),
                "full": (None, 268_158_720),
            },
        ),
        (
            "sd21",
            256,
            {
                "lorad": (256, 94_429_184),
                "lora": (197, 94_648_256),
                "dora": (196, 94_425_088),
                "full": (None, 299_354_240),
            },
        ),
        (
            "pixart",
            128,
            {
                "lorad": (128, 81_219_584),
                "lora": (96, 81_349_632),
                "dora": (95, 80_923_904),
                "full": (None, 601_046_816),
            },
        ),
    ],
)
def test_equal_budget_ranks_on_full_size_architectures(backbone, lorad_rank, expected):
    """Full-size SD1.5 / SD2.1 / PixArt built on the meta device; the generator's targets of conf/adapter/*.yaml."""
    from omegaconf import OmegaConf

    from wadi.testing import compose_config
    from wadi.train import equal_budgets

    cfg = compose_config([f"backbone={backbone}"])
    budgets = equal_budgets(
        OmegaConf.to_container(cfg.backbone, resolve=True),
        lorad_rank,
        OmegaConf.to_container(cfg.adapter, resolve=True),
    )
    assert {b.kind: (b.rank, b.count) for b in budgets} == expected
    assert all(b.target == expected["lorad"][1] for b in budgets)
    assert equal_budget(get_adapter("full"), [(4, 3, True)], 5).count == 15


def test_dry_run_prints_the_equal_budget_rank_and_both_counts(capsys):
    from wadi.testing import compose_config
    from wadi.train import train

    metrics, _ = train(compose_config(["backbone=toy", "rank=64", "generator.adapter=lora", "dry_run=true"]))
    out = capsys.readouterr().out
    assert (
        "equal budget: generator.adapter=lora generator.rank=49 trains 1,251,264 parameters, LoRaD r=64 trains 1,239,040"
        in out
    )
    assert (
        metrics["parameters"]["generator"] == 64 * 1_251_264 // 49
    )  # this run: LoRA at rank 64, r x sum(in + out)
