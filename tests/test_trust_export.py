"""Issue 17, metadata: the export records its teacher and run, carries a model card (not the teacher's
pretrain.json), its adapter file is refused by diffusers' load_lora_weights; W&B run ids survive a resume;
wadi.evaluate names its default folder after the run."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open

from wadi.distill.module import WaDiModule
from wadi.evaluation import default_out
from wadi.export import EXPORT_INFO, export_adapters, export_merged
from wadi.runs import WANDB_RUN_ID, logger_kwargs
from wadi.testing import compose_config
from wadi.toy.assets import toy_asset_path

PROMPT = "a large red circle at the left"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    backbone = OmegaConf.to_container(compose_config(["backbone=toy"]).backbone, resolve=True)
    torch.manual_seed(0)
    run_config = {"name": "toy_r4", "run_dir": "/somewhere/outputs/toy_r4"}
    module = WaDiModule(backbone=backbone, rank=4, fake_rank=2, run_config=run_config).eval()
    with torch.no_grad():
        for p in module.generator_parameters():
            p.normal_(std=0.02)
    root = tmp_path_factory.mktemp("trust_export") / "toy_r4" / "export"
    return export_adapters(module, root / "adapters.safetensors"), export_merged(module, root / "merged")


def test_export_records_teacher_and_run_and_has_a_model_card(exported):
    _, merged = exported
    info = json.loads((merged / EXPORT_INFO).read_text())
    teacher = str(toy_asset_path("toy-sd").resolve())
    assert info["teacher"] == teacher and info["run"] == "toy_r4"
    assert not (merged / "pretrain.json").exists()  # the teacher's training record, not this model's
    card = (merged / "README.md").read_text()
    assert teacher in card and "num_inference_steps=1" in card and "toy_r4" in card


def test_adapter_file_is_not_mistaken_for_a_lora(exported):
    from diffusers import StableDiffusionPipeline

    adapters, merged = exported
    with safe_open(str(adapters), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "wadi-lorad" and "NOT a LoRA" in meta["not_a_lora"]
    assert meta["teacher"] == str(toy_asset_path("toy-sd").resolve())
    pipe = StableDiffusionPipeline.from_pretrained(merged)
    with pytest.raises(ValueError, match="Invalid LoRA checkpoint"):  # it used to load nothing, quietly
        pipe.load_lora_weights(str(adapters))


def test_hybrid_sampling_from_an_export_needs_no_teacher_argument(exported):
    from wadi.generation import load_generator

    _, merged = exported
    gen = load_generator(merged, hybrid_k=1, schedule_steps=4)
    assert gen.teacher is not None
    assert gen([PROMPT], [0]).shape == (1, 3, 64, 64)


def test_evaluate_default_out_is_named_after_the_run(exported, tmp_path):
    _, merged = exported
    cfg = OmegaConf.create({"model": str(merged), "teacher_steps": None, "hybrid_k": 0})
    assert default_out(cfg, "toy").name == "toy_r4"
    plain = tmp_path / "myrun" / "export" / "merged"  # an export without "run" in its info
    plain.mkdir(parents=True)
    assert default_out(OmegaConf.create({"model": str(plain)}), "toy").name == "myrun"


def test_wandb_run_id_is_kept_for_a_resume(tmp_path):
    wandb = OmegaConf.create({"_target_": "wadi.loggers.WandbLogger", "offline": True})
    first = logger_kwargs(wandb, tmp_path, resuming=False)
    assert first["resume"] == "allow" and (tmp_path / WANDB_RUN_ID).read_text().strip() == first["id"]
    assert logger_kwargs(wandb, tmp_path, resuming=True) == first  # ckpt_path=last: the same W&B run
    assert logger_kwargs(wandb, tmp_path, resuming=False)["id"] != first["id"]  # a new run: a new W&B run
    csv = OmegaConf.create({"_target_": "lightning.pytorch.loggers.CSVLogger"})
    assert logger_kwargs(csv, tmp_path, resuming=True) == {}
    pinned = OmegaConf.create({**OmegaConf.to_container(wandb), "id": "mine"})
    assert logger_kwargs(pinned, tmp_path, resuming=True) == {}


def test_wandb_logger_gets_the_kept_id_and_no_anonymous_setting(tmp_path):
    from wadi.loggers import WandbLogger

    kwargs = logger_kwargs(
        OmegaConf.create({"_target_": "wadi.loggers.WandbLogger"}), tmp_path, resuming=False
    )
    logger = WandbLogger(offline=True, save_dir=str(tmp_path), **kwargs)
    assert logger.version == kwargs["id"] == (tmp_path / WANDB_RUN_ID).read_text().strip()
    assert "anonymous" not in logger._wandb_init  # wandb warned "The anonymous setting has no effect"
