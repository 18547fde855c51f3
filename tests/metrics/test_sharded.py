"""Sharded evaluation: two gloo processes give what one process gives; the CLI's shards resume a run."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir
from PIL import Image

from wadi.config import CONF_DIR
from wadi.evaluate import CocoEvaluator, evaluate, evaluate_prompts
from wadi.metrics.clip import save_tiny_clip
from wadi.metrics.features import WeightsNotFoundError, save_standin_inception

N_PROMPTS = 10


def fake_generator(prompts, seeds):
    """Deterministic per (prompt, seed), batch-independent: what wadi generators promise."""
    out = []
    for p, s in zip(prompts, seeds):
        g = torch.Generator().manual_seed(int(s))
        tint = (sum(map(ord, p)) % 7) / 14
        out.append((torch.rand(3, 40, 56, generator=g) * 0.5 + tint).clamp(0, 1))
    return torch.stack(out)


@pytest.fixture(scope="module")
def coco_env(tmp_path_factory):
    """A miniature COCO: captions JSON, a reference folder (with a stray non-image file), stand-in weights."""
    root = tmp_path_factory.mktemp("coco")
    images = [{"id": i, "file_name": f"{i:06d}.jpg"} for i in range(14)]
    words = ["cat", "dog", "bus", "tree", "boat"]
    anns = [
        {"id": 10 * i + j, "image_id": i, "caption": f"a {words[(i + j) % 5]} number {i} {j}"}
        for i in range(14)
        for j in range(3)
    ]
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": anns}))
    ref = root / "val"
    ref.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        arr = rng.integers(0, 256, (30 + 2 * i, 40, 3), dtype=np.uint8)
        Image.fromarray(arr).save(ref / f"{i:06d}.png")
    (ref / "readme.txt").write_text("not an image")
    return {
        "captions": str(root / "captions.json"),
        "reference_dir": str(ref),
        "inception_path": str(save_standin_inception(root / "inception-2015-12-05.pt", dim=8)),
        "clip_path": str(save_tiny_clip(root / "clip")),
        "root": root,
    }


def _evaluator(env, **overrides):
    kwargs = dict(
        captions=env["captions"],
        reference_dir=env["reference_dir"],
        inception_path=env["inception_path"],
        clip_path=env["clip_path"],
        n_samples=N_PROMPTS,
        resolution=32,
        batch_size=4,
        stats_cache_dir=None,
        n_reference=None,
        name="mini",
    )
    return CocoEvaluator(**(kwargs | overrides))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, env: dict, out: str) -> None:
    import torch.distributed as dist

    from wadi.metrics.protocol import all_gather_ordered, split_for_rank

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ev = _evaluator(env)
        ev.setup("cpu")  # reference features extracted sharded (no cache) and gathered
        metrics = evaluate_prompts(fake_generator, ev, ev.prompts(), batch_size=3)
        rows = torch.tensor(split_for_rank(7, rank, world), dtype=torch.float64)[:, None] * torch.ones(1, 2)
        order = all_gather_ordered(rows, 7)[:, 0].tolist()
        Path(out, f"rank{rank}.json").write_text(
            json.dumps({"metrics": metrics, "order": order, "ref_mu": ev.reference.mu.tolist()})
        )
    finally:
        dist.barrier()  # neither rank tears gloo down while the other is still in a collective (an abort at exit)
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_evaluation_equals_single_process(coco_env, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), coco_env, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    ev = _evaluator(coco_env)
    ev.setup("cpu")
    single = evaluate_prompts(fake_generator, ev, ev.prompts(), batch_size=5)
    assert set(single) == {"fid", "clip", "precision", "recall", "n_samples"}
    for r in ranks:
        assert r["order"] == list(range(7))
        np.testing.assert_allclose(r["ref_mu"], ev.reference.mu, rtol=1e-6, atol=1e-7)
        for k, v in single.items():
            assert r["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


# ---------------------------------------------------------------------------------------------- CLI


def _cfg(env, out, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                "model=fake-model",
                f"out={out}",
                "shard_size=4",
                "batch_size=3",
                "grid_size=6",
                "device=cpu",
                f"eval.captions={env['captions']}",
                f"eval.reference_dir={env['reference_dir']}",
                f"eval.inception_path={env['inception_path']}",
                f"eval.clip_path={env['clip_path']}",
                f"eval.stats_cache_dir={env['root'] / 'stats'}",
                f"eval.n_samples={N_PROMPTS}",
                "eval.n_reference=12",
                "eval.resolution=32",
                "eval.batch_size=4",
                "eval.num_workers=0",
                *overrides,
            ],
        )


class Counting:
    def __init__(self, fail: bool = False):
        self.calls, self.fail = [], fail

    def __call__(self, prompts, seeds):
        if self.fail:
            raise AssertionError("generation should have been skipped")
        self.calls.extend(seeds)
        return fake_generator(prompts, seeds)


def test_cli_writes_metrics_grid_and_resumes_from_shards(coco_env, tmp_path):
    out = tmp_path / "eval"
    cfg = _cfg(coco_env, out)
    assert cfg.eval.name == "coco2014" and cfg.eval.resize_filter == "lanczos"
    gen = Counting()
    metrics = evaluate(cfg, generator=gen)
    assert sorted(gen.calls) == list(range(N_PROMPTS))
    report = json.loads((out / "metrics.json").read_text())
    assert report["fid"] == pytest.approx(metrics["fid"]) and report["n_samples"] == N_PROMPTS
    assert report["reference"]["n_images"] == 12 and report["reference"]["non_image_files_skipped"] == 1
    assert 0.0 <= report["precision"] <= 1.0 and "clip" in report
    assert Image.open(out / "grid.png").size[0] > 32 * 2
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard_0000{i}.npz" for i in range(3)]

    ev = _evaluator(coco_env, stats_cache_dir=str(coco_env["root"] / "stats"))
    ev.setup("cpu")
    assert evaluate_prompts(fake_generator, ev, ev.prompts(), 4) == pytest.approx(metrics, rel=1e-6)

    assert evaluate(cfg, generator=Counting(fail=True)) == pytest.approx(metrics)  # everything resumed

    (out / "shards" / "shard_00001.npz").unlink()
    (out / "shards" / "shard_00002.npz").write_bytes(b"truncated")
    gen = Counting()
    assert evaluate(cfg, generator=gen) == pytest.approx(metrics, rel=1e-6)
    assert sorted(gen.calls) == [4, 5, 6, 7, 8, 9]  # only the missing and the broken shard

    with pytest.raises(ValueError, match="different evaluation"):
        evaluate(_cfg(coco_env, out, "guidance_scale=2.0"), generator=Counting())


def test_cli_does_not_resume_shards_of_a_changed_checkpoint(coco_env, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights v1")
    cfg = _cfg(coco_env, tmp_path / "out", f"model={ckpt}")
    evaluate(cfg, generator=Counting())
    assert evaluate(cfg, generator=Counting(fail=True))["n_samples"] == N_PROMPTS  # unchanged: resumed
    ckpt.write_bytes(b"weights v2, trained longer")
    with pytest.raises(ValueError, match="different evaluation"):
        evaluate(cfg, generator=Counting(fail=True))


def test_cli_bad_inputs_fail_before_generating(coco_env, tmp_path):
    never = Counting(fail=True)
    with pytest.raises(WeightsNotFoundError, match="eval.inception_path"):
        evaluate(
            _cfg(coco_env, tmp_path / "a", f"eval.inception_path={tmp_path / 'none.pt'}"), generator=never
        )
    with pytest.raises(FileNotFoundError, match="eval.captions"):
        evaluate(_cfg(coco_env, tmp_path / "b", f"eval.captions={tmp_path / 'none.json'}"), generator=never)
    with pytest.raises(ValueError, match="holds 12 images but n_reference=40504"):
        evaluate(_cfg(coco_env, tmp_path / "c", "eval.n_reference=40504"), generator=never)
    with pytest.raises(ValueError, match="n_samples=30000"):
        evaluate(_cfg(coco_env, tmp_path / "d", "eval.n_samples=30000"), generator=never)
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written


def test_eval_configs_compose():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, n, n_ref in [("coco2014", 30000, 40504), ("coco2017", 5000, 5000)]:
            cfg = compose("evaluate", overrides=["model=x", f"eval={name}"])
            assert (cfg.eval.name, cfg.eval.n_samples, cfg.eval.n_reference) == (name, n, n_ref)
            assert cfg.eval.resolution == 256 and cfg.eval.seed == 0 and cfg.eval.allow_download is False
            assert cfg.eval.inception_path.endswith("inception-2015-12-05.pt")
        toy = compose("evaluate", overrides=["model=x", "eval=toy"])
        assert toy.eval._target_ == "wadi.evaluation.ToyPromptEvaluator"


@pytest.mark.slow
def test_cli_on_a_tiny_teacher_end_to_end(coco_env, tiny_sd_dir, tmp_path):
    """No injected generator: wadi.sample.load_generator samples a tiny diffusers directory as a teacher."""
    cfg = _cfg(
        coco_env, tmp_path / "teacher", f"model={tiny_sd_dir}", "teacher_steps=2", "guidance_scale=2.0"
    )
    metrics = evaluate(cfg)
    assert np.isfinite(metrics["fid"]) and metrics["n_samples"] == N_PROMPTS
    report = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert report["generator"]["teacher_steps"] == 2 and report["generator"]["guidance_scale"] == 2.0
