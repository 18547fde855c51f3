"""`python -m wadi.evaluate model=<export dir | .ckpt | teacher dir> eval=coco2014` (or coco2017, toy).

Teacher rows: `model=<diffusers dir> teacher_steps=25 guidance_scale=3.0`. Writes `<out>/metrics.json` and
`<out>/grid.png`; generated images go to `<out>/shards/shard_XXXXX.npz` (protocol images + per-image
features and CLIP scores), and a rerun skips the shards already there. Under torchrun every rank generates
its own shards (shard s on rank s mod W) and rank 0 computes the metrics.

Importable pieces, shared with the training callback (wadi.callbacks.eval):
  - `CocoEvaluator`: the GigaGAN / DMD2 protocol (wadi.metrics.protocol): Inception FID, CLIP score,
    precision / recall;
  - `ToyPromptEvaluator`: the toy world's FID / prompt accuracy / diversity (wadi.metrics.toy);
  - `measure` / `evaluate_prompts`: generate -> prepare -> per-image rows, sharded over ranks and gathered.
An evaluator has `prompts()`, `setup(device)`, `prepare(images) -> uint8 (N, H, W, 3)`,
`per_sample(prepared, captions) -> {name: (N, ...) tensor}` and `summarize(rows, prompts) -> {metric: float}`.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import wadi.config  # noqa: F401  (registers resolvers)
from wadi.metrics.clip import CLIP_HF_ID, ClipScorer, clip_score
from wadi.metrics.features import InceptionFeatures
from wadi.metrics.fid import ReferenceStats, feature_statistics, frechet_distance, reference_statistics
from wadi.metrics.prdc import precision_recall
from wadi.metrics.protocol import (
    EvalPrompt,
    all_gather_ordered,
    dist_info,
    list_reference_images,
    load_captions,
    protocol_images,
    split_for_rank,
    tensor_to_uint8,
)

log = logging.getLogger(__name__)
Generate = Callable[[list[str], list[int]], torch.Tensor]  # (prompts, seeds) -> (N, 3, H, W) in [0, 1]


class CocoEvaluator:
    """Zero-shot COCO: `n_samples` captions (one per image), FID / CLIP / precision-recall at 256 px.

    Weights and reference statistics load on `setup` (lazily), so building one from a config is free.
    """

    def __init__(
        self,
        captions: str,
        reference_dir: str,
        inception_path: str,
        clip_path: str | None,
        n_samples: int = 30000,
        resolution: int = 256,
        resize_filter: str = "lanczos",
        batch_size: int = 64,
        stats_cache_dir: str | None = None,
        seed: int = 0,
        n_reference: int | None = None,
        k: int = 3,
        allow_download: bool = False,
        clip_hf_id: str = CLIP_HF_ID,
        num_workers: int = 0,
        name: str = "coco",
    ) -> None:
        self.captions, self.reference_dir = captions, reference_dir
        self.inception_path, self.clip_path = inception_path, clip_path
        self.n_samples, self.resolution, self.resize_filter = n_samples, resolution, resize_filter
        self.batch_size, self.stats_cache_dir, self.seed = batch_size, stats_cache_dir, seed
        self.n_reference, self.k, self.allow_download = n_reference, k, allow_download
        self.clip_hf_id, self.num_workers, self.name = clip_hf_id, num_workers, name
        self.device = torch.device("cpu")
        self.inception: InceptionFeatures | None = None
        self.clip: ClipScorer | None = None
        self.reference: ReferenceStats | None = None
        self._prompts: list[EvalPrompt] | None = None

    def prompts(self) -> list[EvalPrompt]:
        if self._prompts is None:
            self._prompts = load_captions(self.captions, self.n_samples, self.seed)
        return self._prompts

    def describe(self) -> dict:
        """What fixes the numbers (for metrics.json and the resume check)."""
        return {
            "name": self.name,
            "captions": str(self.captions),
            "n_samples": self.n_samples,
            "seed": self.seed,
            "resolution": self.resolution,
            "resize_filter": self.resize_filter,
            "k": self.k,
            "clip_path": str(self.clip_path),
            "inception_sha256": self.inception.sha256 if self.inception else None,
        }

    def setup(
        self, device: str | torch.device = "cpu", progress: Callable[[str], None] | None = None
    ) -> None:
        """Load Inception and CLIP on `device` and the reference statistics (computed once, then cached).

        Collective under torch.distributed (reference features are extracted sharded): call on every rank.
        """
        self.device = torch.device(device)
        if self.inception is None:
            self.inception = InceptionFeatures(
                self.inception_path, self.device, self.batch_size, self.allow_download
            )
        self.inception.to(self.device)
        if self.clip is None and self.clip_path:
            self.clip = ClipScorer(
                self.clip_path, self.device, self.batch_size, self.allow_download, self.clip_hf_id
            )
        if self.clip is not None:
            self.clip.to(self.device)
        if self.reference is None:
            files = list_reference_images(self.reference_dir, self.n_reference)
            self.reference = reference_statistics(
                files,
                self.inception,
                self.resolution,
                self.resize_filter,
                self.stats_cache_dir,
                self.num_workers,
                progress,
            )

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        """Generated (N, 3, H, W) in [0, 1] -> protocol images (N, R, R, 3) uint8."""
        return protocol_images(images, self.resolution, self.resize_filter)

    def per_sample(self, prepared: np.ndarray, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """{'features': (N, 2048) Inception features, 'clip': (N,) cosine} of protocol images."""
        if self.inception is None:
            raise RuntimeError("CocoEvaluator.setup(device) must run before per_sample")
        rows = {"features": torch.from_numpy(self.inception(prepared))}
        if self.clip is not None:
            rows["clip"] = self.clip(torch.from_numpy(prepared).permute(0, 3, 1, 2), captions)
        return rows

    def summarize(self, rows: dict[str, torch.Tensor], prompts: Sequence[EvalPrompt]) -> dict[str, float]:
        """{'fid', 'clip', 'precision', 'recall', 'n_samples'} of all generated images against the reference."""
        ref = self.reference
        fake = rows["features"].numpy()
        out = {"fid": frechet_distance(*feature_statistics(fake), ref.mu, ref.sigma)}
        if "clip" in rows:
            out["clip"] = clip_score(rows["clip"])
        out["precision"], out["recall"] = precision_recall(ref.features, fake, self.k, device=self.device)
        out["n_samples"] = int(fake.shape[0])
        return out


class ToyPromptEvaluator:
    """The toy world's metrics on held-out captions: `n_samples // per_prompt` prompts x `per_prompt` seeds.

    toy FID against `n_real` held-out renders, prompt accuracy of the attribute classifier, diversity among
    the images of one prompt (wadi.metrics.toy.ToyEvaluator). Images are compared as uint8 (what a PNG holds).
    """

    def __init__(
        self,
        classifier_path: str,
        n_samples: int = 1000,
        per_prompt: int = 4,
        n_real: int = 5000,
        batch_size: int = 500,
        seed: int = 0,
        name: str = "toy",
    ) -> None:
        if n_samples % per_prompt:
            raise ValueError(f"eval.n_samples={n_samples} must be a multiple of eval.per_prompt={per_prompt}")
        self.classifier_path, self.n_samples, self.per_prompt = classifier_path, n_samples, per_prompt
        self.n_real, self.batch_size, self.seed, self.name = n_real, batch_size, seed, name
        self.toy = None
        self.device = torch.device("cpu")

    def prompts(self) -> list[EvalPrompt]:
        from wadi.toy.world import toy_prompts

        captions = toy_prompts(self.n_samples // self.per_prompt, self.seed, "heldout")
        rows = [c for c in captions for _ in range(self.per_prompt)]
        return [EvalPrompt(c, self.seed + i) for i, c in enumerate(rows)]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "n_samples": self.n_samples,
            "per_prompt": self.per_prompt,
            "seed": self.seed,
        }

    def setup(self, device: str | torch.device = "cpu", progress=None) -> None:
        from wadi.metrics.toy import ToyEvaluator
        from wadi.toy.classifier import load_classifier

        self.device = torch.device(device)
        if self.toy is None:
            classifier = load_classifier(self.classifier_path, self.device)
            self.toy = ToyEvaluator(classifier, self.n_real, self.device, self.batch_size)

    def prepare(self, images: torch.Tensor) -> np.ndarray:
        return tensor_to_uint8(images)

    def per_sample(self, prepared: np.ndarray, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"images": torch.from_numpy(prepared).permute(0, 3, 1, 2).contiguous()}

    def summarize(self, rows: dict[str, torch.Tensor], prompts: Sequence[EvalPrompt]) -> dict[str, float]:
        """{'toy_fid', 'prompt_accuracy', 'diversity', 'n_samples'}; images sharing a caption form a group."""
        images = rows["images"].float() / 127.5 - 1
        captions = [p.caption for p in prompts]
        _, group_ids = np.unique(np.array(captions), return_inverse=True)
        m = self.toy(images, captions, torch.from_numpy(group_ids.reshape(-1)))
        return {
            "toy_fid": m["fid"],
            "prompt_accuracy": m["prompt_accuracy"],
            "diversity": m["diversity"],
            "n_samples": len(captions),
        }


# ---------------------------------------------------------------------------------------------- running


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


# ---------------------------------------------------------------------------------------------- CLI


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
    """outputs/eval/<eval name>/<model name>[-teacher<steps>-cfg<g>]."""
    model = Path(str(cfg.model))
    name = model.stem if model.suffix == ".ckpt" else model.name
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
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _init_distributed() -> tuple[int, int]:
    """torchrun: join the process group (NCCL on GPUs, gloo on CPU)."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist_info()


def _load_generator(cfg: DictConfig, device: torch.device) -> Generate:
    from wadi.generation import load_generator

    return load_generator(
        cfg.model,
        cfg.get("teacher_steps"),
        cfg.get("guidance_scale", 1.0),
        device,
        int(cfg.batch_size),
        use_ema=cfg.get("use_ema", True),
        hybrid_k=cfg.get("hybrid_k", 0),
        schedule_steps=cfg.get("schedule_steps", 25),
        teacher_guidance=cfg.get("teacher_guidance", 0.0),
        teacher=cfg.get("teacher"),
        compile=cfg.get("compile", False),
    )


def evaluate(cfg: DictConfig, generator: Generate | None = None, evaluator=None) -> dict | None:
    """Run the evaluation `cfg` describes (see conf/evaluate.yaml); returns the metrics on rank 0.

    `generator`: any `gen(prompts, seeds) -> (N, 3, H, W)` in [0, 1]; default `wadi.generation.load_generator`.
    """
    from hydra.utils import instantiate
    from tqdm.auto import tqdm

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
        generator = generator if generator is not None else _load_generator(cfg, device)
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    log.info("config:\n%s", OmegaConf.to_yaml(cfg))
    evaluate(cfg)


if __name__ == "__main__":
    main()
