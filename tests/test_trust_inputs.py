"""Issue 17, bad input at the boundary: `eval=null`, prompts given as a string, prompt files that are missing or
mostly malformed (refused before any model loads)."""

from __future__ import annotations

import json
import sys

import pytest

from wadi.config import ConfigError, null_group_overrides
from wadi.data.prompts import load_prompts
from wadi.generation import prompt_list
from wadi.testing import compose_config

TOY = "a large red circle at the left"


def test_group_null_means_group_off():
    assert null_group_overrides(["eval=null", "logger=null", "lr=null", "eval.n_samples=3", "x=1"]) == [
        "~eval",
        "~logger",
        "lr=null",  # not a config group: unchanged
        "eval.n_samples=3",
        "x=1",
    ]
    assert "eval" not in compose_config(["eval=null"])
    assert "eval" in compose_config([])  # the toy backbone brings its toy metrics by default


def test_cli_eval_null_composes(tmp_path, monkeypatch, capsys):
    """`python -m wadi.train eval=null` was refused by Hydra ("Config group override must be a string")."""
    import wadi.train

    monkeypatch.setattr(sys, "argv", ["wadi.train", "eval=null", "dry_run=true", f"output_root={tmp_path}"])
    wadi.train.main()
    assert "wadi dry run" in capsys.readouterr().out


def test_prompt_given_as_a_string_is_one_prompt():
    assert prompt_list("a b") == ["a b"]
    assert prompt_list(["a  b", "c"]) == ["a b", "c"]
    from omegaconf import OmegaConf

    assert prompt_list(OmegaConf.create({"p": ["x y"]}).p) == ["x y"]
    for bad in ([], "", ["ok", " "], None):
        with pytest.raises(ConfigError, match="prompts"):
            prompt_list(bad)


def test_sample_cli_string_prompt_and_bad_seeds(tiny_sd_dir, tmp_path, capsys):
    from wadi.sample import main

    out = tmp_path / "s"
    main([f"model={tiny_sd_dir}", "teacher_steps=1", f"prompts={TOY}", "per_prompt=1", f"out={out}"])
    rows = json.loads((out / "prompts.json").read_text())
    assert [r["prompt"] for r in rows] == [TOY]  # not 30 one-character prompts
    with pytest.raises(SystemExit) as exit_info:  # refused before the model loads: one line, rc 2
        main([f"model={tmp_path / 'nowhere'}", f"prompts={TOY}", "seeds=[1,2]", f"out={out}"])
    assert exit_info.value.code == 2
    assert "2 seeds for 1 prompts" in capsys.readouterr().err


def test_analyze_trajectory_string_prompt(tiny_sd_dir, tmp_path):
    from wadi.analyze import main

    main(["trajectory", f"model={tiny_sd_dir}", f"prompts={TOY}", "steps=2", f"out={tmp_path}"])
    assert len(json.loads((tmp_path / "prompts.json").read_text())) == 1


def test_mostly_malformed_prompt_file_is_refused(tmp_path):
    path = tmp_path / "anno.jsonl"
    path.write_text('{"caption": "a cat"}\n' + "not json\n" * 3)
    with pytest.raises(ValueError, match=r"anno.jsonl: 3 of 4 lines are malformed"):
        load_prompts(path, format="jsonl")
    words = tmp_path / "words.txt"
    words.write_text(f"{TOY}\na photo of a cat\na dog on a bench\n")
    assert len(load_prompts(words)) == 3  # no grammar: any text is a prompt
    with pytest.raises(ValueError, match=r"words.txt: 2 of 3 lines .*toy grammar"):
        load_prompts(words, grammar="toy")


def _train_cfg(tmp_path, *overrides):
    return compose_config(
        [
            "logger=csv",
            "trainer=cpu",
            "eval=null",
            f"run_dir={tmp_path / 'run'}",
            "max_steps=2",
            *overrides,
        ]
    )


@pytest.mark.parametrize("content", [None, "a photo of a cat\na dog\n" + TOY + "\n"])
def test_bad_prompt_file_fails_before_the_model_loads(tmp_path, monkeypatch, content):
    """A missing file, or a toy run on a file of mostly non-toy prompts: one ConfigError naming the file."""
    import wadi.train

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built before the prompt file was checked")

    monkeypatch.setattr(wadi.train, "build_module", no_model)
    source = tmp_path / "prompts.txt"
    if content is not None:
        source.write_text(content)
    cfg = _train_cfg(tmp_path, "dataset=text", f"dataset.source={source}")
    with pytest.raises(ConfigError, match=r"dataset.source: .*prompts.txt") as err:
        wadi.train.train(cfg)
    assert ("does not exist" if content is None else "2 of 3 lines") in str(err.value)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_resolution_latent_size_and_sample_size_must_agree(tiny_sd_dir):
    """Checked from the config files before any weights load, naming the keys and values."""
    from omegaconf import OmegaConf, open_dict

    from wadi.config import validate_train_config
    from wadi.testing import tiny_backbone_config

    def cfg(**backbone):
        composed = compose_config(["eval=null"])
        with open_dict(composed):
            composed.backbone = OmegaConf.create({**tiny_backbone_config(tiny_sd_dir), **backbone})
        return composed

    validate_train_config(cfg())  # 16 px, 8x8 latents: the tiny model's
    with pytest.raises(ConfigError, match=r"backbone.latent_size=16 but the model's sample_size is 8 .*unet"):
        validate_train_config(cfg(latent_size=16, resolution=32))
    with pytest.raises(ConfigError, match=r"backbone.resolution=64 but backbone.latent_size=8 .*factor 2"):
        validate_train_config(cfg(resolution=64))
    for backbone in ("toy", "toy_pixart", "sd15", "sd21", "pixart"):  # the shipped ones agree
        validate_train_config(compose_config([f"backbone={backbone}", "eval=null"]))
