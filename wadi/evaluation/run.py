"""Running an evaluation: generate -> prepare -> per-image rows, sharded over ranks, resumable on disk.

- `measure` / `evaluate_prompts`: in memory, sharded over torch.distributed ranks and gathered (also what
  the training callback wadi.callbacks.eval runs);
- `evaluate(cfg)`: what `python -m wadi.evaluate` runs (conf/evaluate.yaml): generated images go to
  `<out>/shards/shard_XXXXX.npz` (protocol images + per-image rows), a rerun skips the shards already there,
  shard s is generated on rank s mod W, and rank 0 writes `<out>/metrics.json` and `<out>/grid.png`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from wadi.metrics.fid import save_npz_atomic
from wadi.metrics.protocol import EvalPrompt, all_gather_ordered, dist_info, split_for_rank

Generate = Callable[[list[str], list[int]], torch.Tensor]  # (prompts, seeds) -> (N, 3, H, W) in [0, 1]


def measure(
    generate: Generate,
    evaluator,
    prompts: Sequence[EvalPrompt],
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Generate `prompts` in batches and measure them: (per-image rows, protocol images), in prompt order."""
    rows: dict[str, list[torch.Tensor]] = {}
    prepared_all = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i : i + batch_size]
        with torch.no_grad():
            images = generate([p.caption for p in batch], [p.seed for p in batch])
        if images.shape[0] != len(batch):
            raise ValueError(f"generator returned {images.shape[0]} images for {len(batch)} prompts")
        prepared = evaluator.prepare(images)
        for k, v in evaluator.per_sample(prepared, [p.caption for p in batch]).items():
            rows.setdefault(k, []).append(v.cpu())
        prepared_all.append(prepared)
        if on_batch is not None:
            on_batch(len(batch))
    return {k: torch.cat(v) for k, v in rows.items()}, np.concatenate(prepared_all)


def evaluate_prompts(
    generate: Generate, evaluator, prompts: Sequence[EvalPrompt], batch_size: int = 16
) -> dict[str, float]:
    """Metrics of `generate` on `prompts`, sharded over torch.distributed ranks (strided) and gathered in
    prompt order, so every rank returns what one process would."""
    rank, world = dist_info()
    mine = [prompts[i] for i in split_for_rank(len(prompts), rank, world)]
    rows, _ = measure(generate, evaluator, mine, batch_size)
    gathered = {k: all_gather_ordered(v, len(prompts)) for k, v in rows.items()}
    return evaluator.summarize(gathered, prompts)


def _fingerprint(cfg: DictConfig, evaluator) -> dict:
    keys = (
        "model",
        "teacher_steps",
        "guidance_scale",
        "hybrid_k",
        "schedule_steps",
        "teacher_guidance",
        "teacher",
    )
    return {
        "generator": {k: cfg.get(k) for k in keys} | {"use_ema": cfg.get("use_ema", True)},
        "model_files": _model_identity(Path(str(cfg.model))),
        "eval": evaluator.describe(),
        "shard_size": int(cfg.shard_size),
    }


def _model_identity(path: Path) -> list | None:
    """(name, size, mtime_ns) of the model file, or of the files one and two levels inside a model directory:
    a retrained `last.ckpt` at the same path must not resume the old model's shards."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in [*path.glob("*"), *path.glob("*/*")] if p.is_file())
    else:
        return None
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def default_out(cfg: DictConfig, eval_name: str) -> Path:
    """outputs/eval/<eval name>/<model name>[-teacher<steps>-cfg<g>]; a merged export's model name is its run's."""
    model = Path(str(cfg.model))
    name = model.stem if model.suffix == ".ckpt" else model.name
    if model.is_dir():  # a merged export: named after its training run, not `merged`
        info = model / "wadi_export.json"
        run = json.loads(info.read_text()).get("run") if info.is_file() else None
        if run:
            name = run
        elif model.name == "merged" and model.parent.name == "export":  # <run>/export/merged
            name = model.parent.parent.name
    if model.suffix == ".ckpt" and model.parent.name == "checkpoints":
        name = f"{model.parent.parent.name}-{name}"
    if cfg.get("teacher_steps"):
        name += f"-teacher{cfg.teacher_steps}-cfg{cfg.guidance_scale:g}"
    if cfg.get("hybrid_k"):
        name += f"-hybrid{cfg.hybrid_k}"
    return Path("outputs") / "eval" / eval_name / name


def _shard_path(shard_dir: Path, s: int) -> Path:
    return shard_dir / f"shard_{s:05d}.npz"


def _shard_ok(path: Path, key: str, n: int) -> bool:
    """True if the shard is complete and from this configuration (reads two small members only)."""
    try:
        with np.load(path) as z:
            return str(z["fingerprint"]) == key and z["index"].shape[0] == n
    except (OSError, ValueError, KeyError, EOFError):  # missing, partial or garbled: regenerate
        return False


def _shard_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in names}


def _save_shard(path: Path, **arrays) -> None:
    save_npz_atomic(path, compressed=True, **arrays)


def _init_distributed() -> tuple[int, int]:
    """torchrun: join the process group (NCCL on GPUs, gloo on CPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist_info()


def evaluate(cfg: DictConfig, generator: Generate | None = None, evaluator=None) -> dict | None:
    """Run the evaluation `cfg` describes (see conf/evaluate.yaml); returns the metrics on rank 0.

    `generator`: any `gen(prompts, seeds) -> (N, 3, H, W)` in [0, 1]; default `wadi.generation.load_generator`.
    """
    from hydra.utils import instantiate
    from tqdm.auto import tqdm

    from wadi.generation import generator_from_config
    from wadi.images import save_grid

    rank, world = _init_distributed()
    if cfg.get("device"):
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    evaluator = evaluator if evaluator is not None else instantiate(cfg.eval)
    out = Path(str(cfg.out)) if cfg.get("out") else default_out(cfg, evaluator.name)
    start = time.time()
    say = print if rank == 0 else (lambda *_: None)
    prompts = evaluator.prompts()  # bad captions / weights / reference folder fail here, before any output
    evaluator.setup(device, progress=say)
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)

    fingerprint = _fingerprint(cfg, evaluator)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()
    meta_path = out / "eval_config.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("key") != key:
        raise ValueError(
            f"{out} holds shards of a different evaluation ({meta_path}); pass a new `out=` or delete it"
        )
    if world > 1:
        torch.distributed.barrier()  # every rank has checked before rank 0 writes
    if rank == 0:
        meta_path.write_text(json.dumps({"key": key, **fingerprint}, indent=2, default=str) + "\n")

    size = int(cfg.shard_size)
    shards = [prompts[i : i + size] for i in range(0, len(prompts), size)]
    mine = range(rank, len(shards), world)  # shard s on rank s mod W
    todo = [s for s in mine if not _shard_ok(_shard_path(shard_dir, s), key, len(shards[s]))]
    if todo:
        generator = generator if generator is not None else generator_from_config(cfg.generation, device)
        total = sum(len(shards[s]) for s in mine)
        done = total - sum(len(shards[s]) for s in todo)
        with tqdm(total=total, initial=done, unit="img", desc="generate", disable=rank != 0) as bar:
            for s in todo:
                rows, prepared = measure(generator, evaluator, shards[s], int(cfg.batch_size), bar.update)
                _save_shard(
                    _shard_path(shard_dir, s),
                    fingerprint=np.array(key),
                    index=np.arange(s * size, s * size + len(shards[s])),
                    protocol_images=prepared,
                    **{f"row_{k}": v.numpy() for k, v in rows.items()},
                )
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return None

    paths = [_shard_path(shard_dir, s) for s in range(len(shards))]
    broken = [p.name for p, shard in zip(paths, shards) if not _shard_ok(p, key, len(shard))]
    if broken:
        raise RuntimeError(f"shards missing or unreadable after generation in {shard_dir}: {broken}")
    with np.load(paths[0]) as z:
        names = [k for k in z.files if k.startswith("row_")]
    parts = [_shard_arrays(p, names) for p in paths]  # per-image rows only; images stay on disk
    rows = {k[4:]: torch.from_numpy(np.concatenate([part[k] for part in parts])) for k in names}
    metrics = evaluator.summarize(rows, prompts)

    grid_n, grid = min(int(cfg.get("grid_size", 16)), len(prompts)), []
    for p in paths[: -(-grid_n // size)]:
        grid.append(_shard_arrays(p, ["protocol_images"])["protocol_images"])
    grid_images = torch.from_numpy(np.concatenate(grid)[:grid_n]).permute(0, 3, 1, 2).float() / 255
    save_grid(grid_images, out / "grid.png")
    report = {
        **metrics,
        "model": str(cfg.model),
        "protocol": evaluator.describe(),
        "generator": fingerprint["generator"],
        "wall_s": round(time.time() - start, 1),
    }
    reference = getattr(evaluator, "reference", None)
    if reference is not None:
        report["reference"] = {
            "dir": str(evaluator.reference_dir),
            "n_images": reference.n,
            "non_image_files_skipped": reference.skipped,
            "stats_key": reference.key,
        }
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    say(f"wadi.evaluate: {json.dumps(metrics)} -> {out / 'metrics.json'}")
    return metrics
