"""A dataset of teacher samples: the "real" side of SwD's losses (and of PDM for any method).

`python -m wadi.teacher_samples` writes, for the first `n` prompts of a dataset:

    <out>/
        meta.json                    settings, n, shard size, latent shape, identity hash, completed shards
        prompts.json                 the n prompts (row i of the shards is prompt i)
        embeddings/<enc>-<prompts>/  the prompts' text embeddings: an embedding cache (wadi.data.cache), incl. ""
        shard-00000.safetensors      "latents" (rows, C, S, S) and "seeds" (rows,) for prompts [0, shard_size)
        ...

Sources: `teacher` (multi-step trailing DDIM from seeded noise with the teacher's CFG; sample i's noise comes from
seed `seed * 10**9 + i`, so it does not depend on batching or sharding) or `renders` (toy world only: the scene
of each prompt rendered and encoded by the VAE, the latent distribution's mean: the toy world's own "real" data).
Shards are written atomically (temporary name, then rename) with a header naming the settings' identity; a rerun
skips every complete shard and the embedding cache resumes likewise (`build_cache`).
`TeacherSampleDataModule` streams it for training: the prompt stream of `wadi.data.prompts` (resumable at the
global step) plus `latents` and the cached embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wadi.config import ConfigError
from wadi.data.cache import _save_atomic, _shard_is_complete, _write_json, backbone_encoder_hash, parse_dtype
from wadi.data.datamodule import PromptDataModule
from wadi.data.prompts import PromptStream, prompts_identity

FORMAT = "wadi-teacher-samples-1"
META = "meta.json"
PROMPTS = "prompts.json"
EMBEDDINGS = "embeddings"
SOURCES = ("teacher", "renders")
SEED_STRIDE = 10**9


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


def sample_seeds(seed: int, first: int, rows: int) -> list[int]:
    return [int(seed) * SEED_STRIDE + i for i in range(first, first + rows)]


def samples_identity(settings: Mapping[str, Any], prompts_hash: str) -> str:
    """What a shard's content depends on: the settings and the prompt list."""
    blob = json.dumps({**settings, "prompts_hash": prompts_hash}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _header(identity: str, shard: int, start: int, rows: int) -> dict[str, str]:
    return {"identity": identity, "shard": str(shard), "start": str(start), "rows": str(rows)}


@torch.no_grad()
def teacher_latents(
    backbone, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float
) -> Tensor:
    """x0 latents of the teacher (`steps`-step trailing DDIM, CFG `guidance_scale`) from seeded noise."""
    from wadi.backbones.conditioning import Conditioning
    from wadi.samplers import DDIM, seeded_noise

    device = backbone.alphas_cumprod.device
    dtype = next(backbone.denoiser.parameters()).dtype
    embeds, mask = backbone.text_encoder.encode(list(prompts))
    null, null_mask = backbone.text_encoder.encode([""])
    cond = Conditioning(embeds.to(device, dtype), None if mask is None else mask.to(device))
    uncond = Conditioning(null.to(device, dtype), None if null_mask is None else null_mask.to(device))
    z = seeded_noise(seeds, backbone.latent_shape, device, dtype)
    return DDIM(steps, guidance_scale, None)(
        backbone.denoiser, z, cond, uncond, backbone.alphas_cumprod
    ).float()


@torch.no_grad()
def render_latents(backbone, scene_seeds: list[int]) -> Tensor:
    """The toy world's renders of `scene_seeds`, encoded by the backbone's VAE (mean, times the scaling factor)."""
    from wadi.toy.world import render, sample_scene

    vae = backbone.vae
    device = backbone.alphas_cumprod.device
    images = render(
        [sample_scene(s) for s in scene_seeds], resolution=int(backbone.cfg.resolution), device=device
    )
    dtype = next(vae.parameters()).dtype
    posterior = vae.encode(images.to(dtype)).latent_dist
    return (posterior.mean * vae.config.scaling_factor).float()


def build_teacher_samples(
    backbone,
    prompts: Sequence[str],
    out: str | Path,
    *,
    source: str = "teacher",
    steps: int = 25,
    guidance_scale: float = 4.5,
    seed: int = 0,
    shard_size: int = 256,
    batch_size: int = 64,
    dtype: str | torch.dtype | None = "float16",
    scene_seeds: Sequence[int] | None = None,
    encoder_hash: str | None = None,
    sample_prompts: Sequence[str] = (),
    progress: bool = True,
) -> Path:
    """Write (or finish) the teacher-sample dataset of `prompts` under `out` (module docstring); returns `out`.

    `backbone`: a loaded `wadi.backbones.Backbone` (denoiser, text encoder; VAE for `renders`). `scene_seeds`: the
    toy scene of each prompt (`renders` only). `encoder_hash` keys the embedding cache (default: from the backbone's
    files, what training computes).
    """
    from tqdm.auto import tqdm

    from wadi.data.cache import build_cache

    prompts = list(prompts)
    if not prompts:
        raise ValueError("teacher samples: no prompts")
    if source not in SOURCES:
        raise ConfigError(f"source={source!r}: expected one of {list(SOURCES)}")
    if source == "renders" and (scene_seeds is None or len(scene_seeds) != len(prompts)):
        raise ConfigError("source=renders needs the toy scene seed of every prompt (dataset=toy)")
    if int(shard_size) < 1 or int(batch_size) < 1:
        raise ConfigError(f"shard_size and batch_size must be >= 1, got {shard_size} and {batch_size}")
    store = parse_dtype(dtype, torch.float32)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cfg = backbone.cfg
    settings = {
        "format": FORMAT,
        "backbone": cfg.name,
        "latent_shape": list(backbone.latent_shape),
        "source": source,
        "steps": int(steps) if source == "teacher" else None,
        "guidance_scale": float(guidance_scale) if source == "teacher" else None,
        "seed": int(seed),
        "dtype": str(store).removeprefix("torch."),
        "n": len(prompts),
        "shard_size": int(shard_size),
    }
    prompts_hash = prompts_identity(prompts)
    identity = samples_identity(settings, prompts_hash)
    meta_path = out / META
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("identity") != identity:
            changed = [k for k in settings if old.get("settings", {}).get(k) != settings[k]]
            raise ValueError(
                f"{out} holds teacher samples made with other settings (differ: {changed or ['prompts']}); "
                "use another out= or delete it"
            )
    num_shards = -(-len(prompts) // int(shard_size))
    meta = {
        "identity": identity,
        "prompts_hash": prompts_hash,
        "settings": settings,
        "num_shards": num_shards,
    }
    _write_json(meta_path, meta | {"complete": False})
    (out / PROMPTS).write_text(json.dumps(prompts))

    encoder = backbone.text_encoder
    emb = build_cache(
        prompts,
        encoder,
        out / EMBEDDINGS,
        batch_size=batch_size,
        shard_size=max(int(shard_size), 1024),
        extra_prompts=list(sample_prompts),
        progress=progress,
        encoder_hash=encoder_hash or backbone_encoder_hash({**_backbone_dict(cfg)}),
    )
    todo = []
    for i in range(num_shards):
        start = i * int(shard_size)
        rows = min(int(shard_size), len(prompts) - start)
        if not _shard_is_complete(out / shard_name(i), _header(identity, i, start, rows)):
            todo.append((i, start, rows))
    bar = tqdm(
        total=len(prompts),
        initial=len(prompts) - sum(r for _, _, r in todo),
        disable=not progress,
        desc=f"teacher samples ({source})",
        unit="img",
    )
    for i, start, rows in todo:
        parts = []
        for lo in range(start, start + rows, int(batch_size)):
            hi = min(lo + int(batch_size), start + rows)
            if source == "teacher":
                parts.append(
                    teacher_latents(
                        backbone, prompts[lo:hi], sample_seeds(seed, lo, hi - lo), steps, guidance_scale
                    ).cpu()
                )
            else:
                parts.append(render_latents(backbone, list(scene_seeds[lo:hi])).cpu())
            bar.update(hi - lo)
        latents = torch.cat(parts)
        if not torch.isfinite(latents).all():
            raise ValueError(
                f"teacher samples {start}..{start + rows}: non-finite latents (teacher or VAE overflow)"
            )
        tensors = {"latents": latents.to(store), "seeds": torch.tensor(sample_seeds(seed, start, rows))}
        _save_atomic(tensors, out / shard_name(i), _header(identity, i, start, rows))
    bar.close()
    _write_json(meta_path, meta | {"complete": True, "embeddings": str(emb.relative_to(out))})
    return out


def _backbone_dict(cfg) -> dict[str, Any]:
    return {
        "pretrained": cfg.pretrained,
        "text_max_length": cfg.text_max_length,
        "use_text_mask": cfg.use_text_mask,
    }


# ------------------------------------------------------------------------------------------ reading
class TeacherSamples:
    """Read access to a finished dataset: `samples[indices] -> latents (B, C, S, S)` float32, `prompts`, `meta`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        meta_path = self.path / META
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"no teacher-sample dataset at {self.path} (no {META}); make one with "
                f"python -m wadi.teacher_samples backbone=... n=... out={self.path}"
            )
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("settings", {}).get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a {FORMAT} dataset")
        missing = [i for i in range(self.meta["num_shards"]) if not (self.path / shard_name(i)).is_file()]
        if not self.meta.get("complete") or missing:
            raise FileNotFoundError(
                f"teacher samples at {self.path} are incomplete ({self.meta['num_shards'] - len(missing)} of "
                f"{self.meta['num_shards']} shards); rerun python -m wadi.teacher_samples with the same settings"
            )
        self.prompts: list[str] = json.loads((self.path / PROMPTS).read_text())
        self._handles: dict[int, Any] = {}

    @property
    def settings(self) -> dict[str, Any]:
        return self.meta["settings"]

    def __len__(self) -> int:
        return len(self.prompts)

    def _handle(self, shard: int):
        from safetensors import safe_open

        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.path / shard_name(shard)), framework="pt")
        return self._handles[shard]

    def __getitem__(self, indices: int | Sequence[int] | Tensor) -> Tensor:
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        size = int(self.settings["shard_size"])
        rows = []
        for i in index.tolist():
            if not 0 <= i < len(self):
                raise IndexError(f"teacher sample {i} out of range [0, {len(self)}) ({self.path})")
            shard, row = divmod(i, size)
            rows.append(self._handle(shard).get_slice("latents")[row : row + 1])
        return torch.cat(rows).float()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}


class TeacherSampleStream(PromptStream):
    """The resumable prompt stream over the dataset's prompts, with each row's `latents` added."""

    def __init__(self, samples: TeacherSamples, batch_size: int, **kwargs: Any) -> None:
        super().__init__(samples.prompts, batch_size, **kwargs)
        self.samples = samples

    def batch(self, batch: int) -> dict[str, Any]:
        item = super().batch(batch)
        item["latents"] = self.samples[item["index"]]
        return item


class TeacherSampleDataModule(PromptDataModule):
    """Batches of teacher samples for training (`dataset=teacher_samples dataset.path=DIR`): the prompts, their
    cached embeddings (prompt_embeds, prompt_mask, null_embeds) and `latents` (B, C, S, S)."""

    def __init__(
        self,
        path: str | None,
        batch_size: int,
        seed: int = 0,
        sample_prompts: Sequence[str] = (),
        backbone: Mapping[str, Any] | None = None,
        key: str = "dataset.path",
        grammar: str
        | None = None,  # the toy recipe's prompt-file check: the samples' prompts are the teacher's own
    ) -> None:
        if not path:
            raise ConfigError(
                f"{key} is not set: the teacher-sample directory (python -m wadi.teacher_samples backbone=... "
                "n=... out=DIR, then swd.samples=DIR or dataset.path=DIR)"
            )
        super().__init__(
            "teacher_samples", batch_size, seed=seed, sample_prompts=sample_prompts, backbone=backbone
        )
        self.path = str(path)
        if not (Path(self.path).expanduser() / META).is_file():
            raise ConfigError(
                f"{key}={self.path!r}: no teacher-sample dataset there (no {META}); make it first with "
                f"python -m wadi.teacher_samples backbone=... n=... out={self.path}"
            )
        self._samples: TeacherSamples | None = None

    def samples(self) -> TeacherSamples:
        if self._samples is None:
            self._samples = TeacherSamples(self.path)
            self._check_backbone(self._samples)
        return self._samples

    def _check_backbone(self, samples: TeacherSamples) -> None:
        if self.backbone is None:
            return
        s = samples.settings
        size = int(self.backbone["latent_size"])
        if s["backbone"] != self.backbone.get("name") or int(s["latent_shape"][-1]) != size:
            raise ConfigError(
                f"teacher samples at {self.path} are for backbone {s['backbone']!r} (latents {s['latent_shape']}), "
                f"this run's backbone is {self.backbone.get('name')!r} (latent size {size})"
            )

    def prompts(self) -> list[str]:
        return self.samples().prompts

    def embedding_cache(self):
        if self._cache is None:
            from wadi.data.cache import EmbeddingCache

            samples = self.samples()
            self._cache = EmbeddingCache.open(
                samples.path / samples.meta["embeddings"],
                samples.meta.get("encoder_hash") or _cached_encoder_hash(samples),
                samples.prompts,
            )
        return self._cache

    def text_encoder(self):
        """None: the module loads the backbone's text encoder (sample grids and evaluation need other prompts)."""
        return None

    def train_dataloader(self):
        from torch.utils.data import DataLoader

        trainer = self.trainer
        stream = TeacherSampleStream(
            self.samples(),
            self.batch_size,
            seed=self.seed,
            start_batch=trainer.global_step if trainer is not None else 0,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            cache=self.embedding_cache(),
        )
        return DataLoader(stream, batch_size=None, num_workers=0)


def _cached_encoder_hash(samples: TeacherSamples) -> str:
    """The embedding cache's own encoder hash (its meta.json): the dataset was encoded by its backbone."""
    meta = json.loads((samples.path / samples.meta["embeddings"] / "meta.json").read_text())
    return meta["encoder_hash"]
