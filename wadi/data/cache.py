"""Text-embedding cache: run the frozen text encoder once over a prompt list, train without loading it.

T5-XXL alone is ~9.5 GB in fp16; with a cache, training reads (B, L, D) rows from sharded safetensors.

Layout, keyed by who encoded what (the encoder's identity hash and the prompt list's hash):

    <cache_dir>/<encoder_hash[:16]>-<prompts_hash[:16]>/
        meta.json                   hashes, n, L, D, dtype, shard size, completed shards, extra prompts
        extra.safetensors           the empty prompt "" (the null embedding c0) and any sample prompts
        shard-00000.safetensors     prompts [0, shard_size): "embeds", "mask" (uint8) and, compact, "offsets"
        shard-00001.safetensors ...

Shards are written to a temporary name and renamed (atomic), so an interrupted build leaves only whole
shards; rerunning skips every shard whose header names the same encoder, prompts and rows.

Compact storage (`compact=True`, encoders with a mask such as T5): only the unmasked tokens are stored,
padded positions read back as zeros. PixArt masks padded keys out of cross-attention (bias -10000 before
the softmax), so the denoiser's output is the same while the cache shrinks by max_length / mean length
(JourneyDB captions: several times). Encoders without a mask (CLIP in SD) store every position, since SD
attends to the padding tokens' embeddings too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from wadi.data.prompts import prompts_identity

CACHE_FORMAT = 1
META = "meta.json"
EXTRA = "extra.safetensors"
_OPEN_SHARDS = 64  # safe_open handles kept (LRU); each holds a memory map
_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "32": torch.float32,
}


class TextEncoderLike(Protocol):
    """What the cache needs from a text encoder (wadi.backbones.text.TextEncoder is one)."""

    max_length: int

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        """embeds (B, L, D) with L = max_length; mask (B, L) of 0/1 (bool or integer) or None."""
        ...

    def identity(self) -> str:
        """A stable hash of the weights and tokenizer: equal hashes must mean equal embeddings."""
        ...


class CacheMismatchError(ValueError):
    """A cache exists but was built by another encoder, for other prompts, or with other settings."""


# ------------------------------------------------------------------------------------------- identity
def _tokenizer_fingerprint(tokenizer) -> dict[str, Any]:
    """Everything that decides token ids: the fast tokenizer's full JSON, else the vocabulary."""
    info: dict[str, Any] = {
        "class": type(tokenizer).__name__,
        "model_max_length": getattr(tokenizer, "model_max_length", None),
        "padding_side": getattr(tokenizer, "padding_side", None),
        "truncation_side": getattr(tokenizer, "truncation_side", None),
    }
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        info["backend"] = hashlib.sha256(backend.to_str().encode()).hexdigest()
    else:
        info["vocab"] = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    return info


def encoder_identity(model: nn.Module, tokenizer=None, **settings: Any) -> str:
    """sha256 of a loaded encoder: every state_dict tensor (name, dtype, shape, bytes), the tokenizer, and
    `settings` (e.g. max_length, use_mask) - anything that changes the embeddings must change the hash.

    The weights are hashed in the dtype they are held in: fp16 and fp32 copies give different embeddings.
    """
    h = hashlib.sha256(b"wadi-text-encoder/1")
    h.update(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.is_meta:
            raise ValueError(f"cannot hash the text encoder: {name} is on the meta device (load its weights)")
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    extra = {"settings": settings}
    if tokenizer is not None:
        extra["tokenizer"] = _tokenizer_fingerprint(tokenizer)
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def text_encoder_files_identity(
    pretrained: str | Path, subfolders: Sequence[str] = ("text_encoder", "tokenizer"), **settings: Any
) -> str:
    """sha256 of the files of `text_encoder/` and `tokenizer/` in a diffusers directory, plus `settings`.

    Computable without loading the encoder, so training can find its cache with the encoder never in memory
    (reads the files once: seconds for T5-XXL's ~10-20 GB). Hidden files and folders are ignored.
    """
    root = Path(pretrained).expanduser()
    h = hashlib.sha256(b"wadi-text-encoder-files/1")
    for sub in subfolders:
        folder = root / sub
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot hash the text encoder: {folder} is not a directory")
        files = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not any(s.startswith(".") for s in p.parts[len(root.parts) :])
        )
        for path in files:
            h.update(f"{path.relative_to(root).as_posix()}|{path.stat().st_size}".encode())
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def backbone_encoder_hash(backbone: Mapping[str, Any]) -> str:
    """The cache key of a backbone config's text encoder (`pretrained`, `text_max_length`, `use_text_mask`),
    from its files: the same for `wadi.cache_prompts` (encoder loaded) and training (encoder never loaded)."""
    return text_encoder_files_identity(
        backbone["pretrained"],
        max_length=int(backbone["text_max_length"]),
        use_mask=bool(backbone["use_text_mask"]),
    )


def cache_path(cache_dir: str | Path, encoder_hash: str, prompts_hash: str) -> Path:
    return Path(cache_dir).expanduser() / f"{encoder_hash[:16]}-{prompts_hash[:16]}"


# ------------------------------------------------------------------------------------------- writing
def parse_dtype(value: str | torch.dtype | None, default: torch.dtype | None = None) -> torch.dtype | None:
    """A torch dtype from a config value (float16 / fp16 / bfloat16 / bf16 / float32 / fp32); None: `default`."""
    if value is None:
        return default
    if isinstance(value, torch.dtype):
        return value
    key = str(value).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ValueError(f"cache dtype {value!r} unknown; expected float16, bfloat16 or float32")
    return _DTYPES[key]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _save_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


class _Encoded:
    """Checked, CPU, storage-dtype output of one encode call."""

    def __init__(self, encoder: TextEncoderLike, prompts: list[str], first: int, layout: dict | None) -> None:
        with torch.no_grad():
            embeds, mask = encoder.encode(list(prompts))
        b = len(prompts)
        if embeds.ndim != 3 or embeds.shape[0] != b:
            raise ValueError(
                f"text encoder returned embeds of shape {tuple(embeds.shape)} for {b} prompts; expected (B, L, D)"
            )
        if layout is not None:
            expect = (b, layout["max_length"], layout["dim"])
            if tuple(embeds.shape) != expect:
                raise ValueError(
                    f"text encoder returned embeds {tuple(embeds.shape)} for prompts {first}..; expected {expect}"
                )
            if (mask is None) != (not layout["mask"]):
                raise ValueError("text encoder returned a mask for some batches and None for others")
        if mask is not None:
            if tuple(mask.shape) != tuple(embeds.shape[:2]):
                raise ValueError(
                    f"text encoder mask has shape {tuple(mask.shape)}, embeds {tuple(embeds.shape)}"
                )
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError("text encoder mask has values other than 0 and 1")
        self.source_dtype = embeds.dtype
        self.embeds = embeds.detach().to("cpu")
        self.mask = None if mask is None else mask.detach().to("cpu")
        self.mask_dtype = None if mask is None else mask.dtype

    def stored(self, dtype: torch.dtype, prompts: list[str], first: int) -> Tensor:
        """The embeddings in `dtype`, refusing non-finite values (an overflowing encoder or storage dtype)."""
        finite = torch.isfinite(self.embeds).flatten(1).all(1)
        if not finite.all():
            row = int((~finite).nonzero()[0])
            raise ValueError(
                f"text encoder output for prompt {first + row} ({prompts[row][:60]!r}) is not finite in "
                f"{_dtype_name(self.source_dtype)}; run the encoder in bfloat16 or float32 (cache_encoder_dtype)"
            )
        out = self.embeds.to(dtype)
        finite = torch.isfinite(out).flatten(1).all(1)
        if not finite.all():
            row = int((~finite).nonzero()[0])
            raise ValueError(
                f"embedding of prompt {first + row} ({prompts[row][:60]!r}) is not finite when stored as "
                f"{_dtype_name(dtype)} (|x| up to {self.embeds[row].abs().max().item():.3g}); store bfloat16 or float32"
            )
        return out


def _shard_header(
    encoder_hash: str, prompts_hash: str, shard: int, start: int, rows: int, layout: dict
) -> dict[str, str]:
    return {
        "encoder_hash": encoder_hash,
        "prompts_hash": prompts_hash,
        "shard": str(shard),
        "start": str(start),
        "rows": str(rows),
        "dtype": layout["dtype"],
        "compact": str(layout["compact"]),
    }


def _shard_is_complete(path: Path, header: dict[str, str]) -> bool:
    """A shard counts as done only if its header names this very encoder, prompt list and row range."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() == header
    except Exception:  # unreadable / foreign file: write it again
        return False


def _pack(embeds: Tensor, mask: Tensor | None, compact: bool) -> dict[str, Tensor]:
    if mask is None:
        return {"embeds": embeds}
    mask_u8 = mask.to(torch.uint8)
    if not compact:
        return {"embeds": embeds, "mask": mask_u8}
    lengths = mask_u8.sum(1, dtype=torch.int64)  # (n,)
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    return {"embeds": embeds[mask_u8.bool()], "mask": mask_u8, "offsets": offsets}  # embeds: (sum valid, D)


def _encode_rows(
    encoder: TextEncoderLike,
    prompts: list[str],
    first: int,
    batch_size: int,
    layout: dict | None,
    dtype: torch.dtype | None,
    bar=None,
) -> tuple[Tensor, Tensor | None, _Encoded]:
    """Embeddings (n, L, D) in storage dtype and mask (n, L) or None for `prompts` (rows first.. of the list)."""
    embeds, masks, last = [], [], None
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo : lo + batch_size]
        last = _Encoded(encoder, chunk, first + lo, layout)
        embeds.append(last.stored(dtype or last.source_dtype, chunk, first + lo))
        masks.append(last.mask)
        if bar is not None:
            bar.update(len(chunk))
    mask = None if masks[0] is None else torch.cat(masks)
    return torch.cat(embeds), mask, last


def build_cache(
    prompts: Sequence[str],
    encoder: TextEncoderLike,
    cache_dir: str | Path,
    batch_size: int = 64,
    shard_size: int = 1024,
    dtype: str | torch.dtype | None = None,
    extra_prompts: Sequence[str] = (),
    compact: bool = True,
    progress: bool = True,
    encoder_hash: str | None = None,
) -> Path:
    """Encode `prompts` once into `<cache_dir>/<encoder_hash[:16]>-<prompts_hash[:16]>/`; returns that folder.

    `dtype`: storage dtype (float16 / bfloat16 / float32); None keeps the encoder's output dtype.
    `extra_prompts` (e.g. the dataset's sample prompts) are stored in `extra.safetensors` together with the
    empty prompt, which is always there (the null embedding of CFG). Rerunning after an interruption encodes
    only the missing shards; rerunning a finished cache only refreshes the extra prompts.
    `encoder_hash` keys the cache (default `encoder.identity()`); the CLI passes `backbone_encoder_hash`.
    """
    from tqdm.auto import tqdm

    prompts = list(prompts)
    if not prompts:
        raise ValueError("build_cache needs at least one prompt")
    if int(batch_size) < 1 or int(shard_size) < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    batch_size, shard_size = int(batch_size), int(shard_size)
    encoder_hash = encoder_hash or encoder.identity()
    prompts_hash = prompts_identity(prompts)
    out = cache_path(cache_dir, encoder_hash, prompts_hash)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp-*"):  # left by an interrupted run
        stale.unlink(missing_ok=True)

    # The extra prompts go first: they are few and tell L, D, the mask and the dtype.
    extras = list(dict.fromkeys(["", *extra_prompts]))
    extra_embeds, extra_mask, probe = _encode_rows(
        encoder, extras, 0, batch_size, None, parse_dtype(dtype, None)
    )
    layout = {
        "max_length": int(extra_embeds.shape[1]),
        "dim": int(extra_embeds.shape[2]),
        "dtype": _dtype_name(extra_embeds.dtype),
        "mask": extra_mask is not None,
        "mask_dtype": None if probe.mask_dtype is None else _dtype_name(probe.mask_dtype),
        "compact": bool(compact and extra_mask is not None),
        "shard_size": shard_size,
    }
    if getattr(encoder, "max_length", layout["max_length"]) != layout["max_length"]:
        raise ValueError(
            f"text encoder has max_length={encoder.max_length} but returned L={layout['max_length']}"
        )
    num_shards = -(-len(prompts) // shard_size)
    meta = {
        "format": CACHE_FORMAT,
        "encoder_hash": encoder_hash,
        "prompts_hash": prompts_hash,
        "n": len(prompts),
        **layout,
        "num_shards": num_shards,
        "completed": [],
        "complete": False,
        "extra_prompts": extras,
    }
    if (out / META).is_file():
        old = json.loads((out / META).read_text())
        changed = {
            k: (old.get(k), meta[k])
            for k in ("format", "encoder_hash", "prompts_hash", "n", *layout)
            if old.get(k) != meta[k]
        }
        if changed:
            diff = ", ".join(f"{k}: cache {a!r} vs now {b!r}" for k, (a, b) in changed.items())
            raise CacheMismatchError(
                f"cache at {out} was started with other settings ({diff}); use the same settings or delete {out}"
            )
    _save_atomic(_pack(extra_embeds, extra_mask, compact=False), out / EXTRA, {"prompts": json.dumps(extras)})

    headers = []
    for i in range(num_shards):
        start = i * shard_size
        rows = min(shard_size, len(prompts) - start)
        headers.append(_shard_header(encoder_hash, prompts_hash, i, start, rows, layout))
    done = {i for i in range(num_shards) if _shard_is_complete(out / _shard_name(i), headers[i])}
    meta["completed"] = sorted(done)
    _write_json(out / META, meta)

    initial = sum(int(headers[i]["rows"]) for i in done)
    with tqdm(
        total=len(prompts), initial=initial, unit="prompt", desc=f"caching {out.name}", disable=not progress
    ) as bar:
        for i in range(num_shards):
            if i in done:
                continue
            start, rows = int(headers[i]["start"]), int(headers[i]["rows"])
            chunk = prompts[start : start + rows]
            embeds, mask, _ = _encode_rows(encoder, chunk, start, batch_size, layout, extra_embeds.dtype, bar)
            _save_atomic(_pack(embeds, mask, layout["compact"]), out / _shard_name(i), headers[i])
            meta["completed"] = sorted(meta["completed"] + [i])
            _write_json(out / META, meta)
    meta["complete"] = True
    _write_json(out / META, meta)
    return out


# ------------------------------------------------------------------------------------------- reading
class EmbeddingCache:
    """Read access to a finished cache: `cache[indices] -> (embeds (B, L, D), mask (B, L) or None)`.

    Shards are memory-mapped lazily (safetensors `safe_open`) and only the requested rows are read, so a
    cache far larger than RAM costs a few hundred KB per batch. Picklable (for DataLoader workers): open
    handles are dropped and reopened on use.
    """

    def __init__(self, path: str | Path, meta: dict) -> None:
        self.path = Path(path)
        self.meta = meta
        self._handles: OrderedDict[int, Any] = OrderedDict()
        self._offsets: dict[int, Tensor] = {}
        self._extra: dict[str, tuple[Tensor, Tensor | None]] | None = None

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, cache_dir: str | Path, encoder_hash: str, prompts: Sequence[str]) -> EmbeddingCache:
        """The cache of `prompts` by the encoder `encoder_hash` under `cache_dir` (or `cache_dir` itself when it
        holds a meta.json). Refuses a cache built by another encoder or for other prompts, naming both hashes."""
        root = Path(cache_dir).expanduser()
        prompts_hash = prompts_identity(list(prompts))
        path = root if (root / META).is_file() else cache_path(root, encoder_hash, prompts_hash)
        if not (path / META).is_file():
            _explain_missing(root, path, encoder_hash, prompts_hash, len(prompts))
        meta = json.loads((path / META).read_text())
        if meta.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(
                f"cache at {path} has format {meta.get('format')}, expected {CACHE_FORMAT}; rebuild it"
            )
        if meta["encoder_hash"] != encoder_hash:
            raise CacheMismatchError(
                f"cache at {path} was built by another text encoder: cache encoder hash {meta['encoder_hash']}, "
                f"this run's encoder hash {encoder_hash}; rebuild with python -m wadi.cache_prompts"
            )
        if meta["prompts_hash"] != prompts_hash:
            raise CacheMismatchError(
                f"cache at {path} holds other prompts: cache prompts hash {meta['prompts_hash']} (n={meta['n']}), "
                f"this run's prompts hash {prompts_hash} (n={len(prompts)}); prompt file, seed or max_samples changed?"
            )
        missing = [i for i in range(meta["num_shards"]) if not (path / _shard_name(i)).is_file()]
        if not meta.get("complete") or missing:
            raise FileNotFoundError(
                f"cache at {path} is incomplete ({meta['num_shards'] - len(missing)} of {meta['num_shards']} shards); "
                "rerun python -m wadi.cache_prompts with the same settings to finish it"
            )
        return cls(path, meta)

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Refuse a prompt list other than the one cached (rows are looked up by position)."""
        got = prompts_identity(list(prompts))
        if got != self.meta["prompts_hash"]:
            raise CacheMismatchError(
                f"cache at {self.path} holds other prompts: cache prompts hash {self.meta['prompts_hash']} "
                f"(n={self.meta['n']}), given prompts hash {got} (n={len(prompts)})"
            )

    # -------------------------------------------------------------- properties
    def __len__(self) -> int:
        return int(self.meta["n"])

    @property
    def encoder_hash(self) -> str:
        return self.meta["encoder_hash"]

    @property
    def prompts_hash(self) -> str:
        return self.meta["prompts_hash"]

    @property
    def max_length(self) -> int:
        return int(self.meta["max_length"])

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.meta["dtype"]]

    @property
    def has_mask(self) -> bool:
        return bool(self.meta["mask"])

    @property
    def has_null(self) -> bool:
        return "" in self._extras()

    def _mask_dtype(self) -> torch.dtype:
        return getattr(torch, self.meta["mask_dtype"])

    # -------------------------------------------------------------- rows
    def _handle(self, shard: int):
        from safetensors import safe_open

        if shard in self._handles:
            self._handles.move_to_end(shard)
        else:
            if len(self._handles) >= _OPEN_SHARDS:
                self._handles.popitem(last=False)
            self._handles[shard] = safe_open(str(self.path / _shard_name(shard)), framework="pt")
        return self._handles[shard]

    def __getitem__(self, indices: int | Sequence[int] | Tensor) -> tuple[Tensor, Tensor | None]:
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        n = len(self)
        if len(index) and (index.min() < 0 or index.max() >= n):
            raise IndexError(f"cache rows {index.tolist()} out of range [0, {n}) ({self.path})")
        size, compact = int(self.meta["shard_size"]), bool(self.meta["compact"])
        embeds = torch.zeros(len(index), self.max_length, self.dim, dtype=self.dtype)
        mask = torch.zeros(len(index), self.max_length, dtype=torch.uint8) if self.has_mask else None
        for j, i in enumerate(index.tolist()):
            shard, row = divmod(i, size)
            f = self._handle(shard)
            if mask is not None:
                mask[j] = f.get_slice("mask")[row : row + 1][0]
            if compact:
                if shard not in self._offsets:
                    self._offsets[shard] = f.get_tensor("offsets")
                lo, hi = self._offsets[shard][row : row + 2].tolist()
                valid = mask[j].bool()
                if bool(valid[: hi - lo].all()):  # right padding (the tokenizers' default): one slice copy
                    embeds[j, : hi - lo] = f.get_slice("embeds")[lo:hi]
                else:
                    embeds[j, valid] = f.get_slice("embeds")[lo:hi]
            else:
                embeds[j] = f.get_slice("embeds")[row : row + 1][0]
        return embeds, None if mask is None else mask.to(self._mask_dtype())

    # -------------------------------------------------------------- extra prompts (null, samples)
    def _extras(self) -> dict[str, tuple[Tensor, Tensor | None]]:
        """The extra file names its own prompts, so it stays consistent even if a rerun stopped midway."""
        if self._extra is None:
            from safetensors import safe_open

            with safe_open(str(self.path / EXTRA), framework="pt") as f:
                prompts = json.loads(f.metadata()["prompts"])
                embeds = f.get_tensor("embeds")
                mask = f.get_tensor("mask").to(self._mask_dtype()) if "mask" in f.keys() else None
            self._extra = {
                p: (embeds[i : i + 1], None if mask is None else mask[i : i + 1])
                for i, p in enumerate(prompts)
            }
        return self._extra

    def lookup(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """Embeddings of extra prompts (the empty prompt, the dataset's sample prompts) by text."""
        extras = self._extras()
        missing = [p for p in prompts if p not in extras]
        if missing:
            raise KeyError(
                f"prompts not in the cache's extra prompts ({self.path / EXTRA}): {missing[:3]}; rebuild the cache "
                "with them in the dataset's sample_prompts (only the extras are re-encoded)"
            )
        rows = [extras[p] for p in prompts]
        mask = None if rows[0][1] is None else torch.cat([m for _, m in rows])
        return torch.cat([e for e, _ in rows]), mask

    def null(self) -> tuple[Tensor, Tensor | None]:
        """The empty prompt's embedding (1, L, D) and mask (1, L) or None: c0 of classifier-free guidance."""
        return self._extras()[""] if self.has_null else self.lookup([""])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        return state

    def __repr__(self) -> str:
        m = self.meta
        return f"EmbeddingCache({self.path}, n={m['n']}, L={m['max_length']}, D={m['dim']}, {m['dtype']})"


def _explain_missing(root: Path, path: Path, encoder_hash: str, prompts_hash: str, n: int) -> None:
    """No cache at `path`: say whether one for these prompts (other encoder) or this encoder (other prompts) exists."""
    others = []
    for meta_file in sorted(root.glob(f"*/{META}")):
        try:
            others.append((meta_file.parent, json.loads(meta_file.read_text())))
        except (OSError, ValueError):
            continue
    for folder, meta in others:
        if meta.get("prompts_hash") == prompts_hash:
            raise CacheMismatchError(
                f"the cache of these prompts at {folder} was built by another text encoder: cache encoder hash "
                f"{meta.get('encoder_hash')}, this run's encoder hash {encoder_hash}; rebuild with python -m wadi.cache_prompts"
            )
    for folder, meta in others:
        if meta.get("encoder_hash") == encoder_hash:
            raise CacheMismatchError(
                f"the cache of this text encoder at {folder} holds other prompts: cache prompts hash "
                f"{meta.get('prompts_hash')} (n={meta.get('n')}), this run's prompts hash {prompts_hash} (n={n}); "
                "prompt file, seed or max_samples changed? rebuild with python -m wadi.cache_prompts"
            )
    raise FileNotFoundError(
        f"no embedding cache at {path} (encoder hash {encoder_hash[:16]}, prompts hash {prompts_hash[:16]}); "
        "build it with python -m wadi.cache_prompts backbone=... dataset=... cache_dir=..."
    )


class CachedTextEncoder:
    """The embedding cache as the text encoder a module is given (`WaDiModule(text_encoder=...)`): `encode` looks
    prompts up in the cache's extra prompts (the empty prompt, the dataset's sample prompts), so training from a
    cache never loads the real encoder. Only the extras can be encoded; others raise a KeyError naming them."""

    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache
        self.max_length = cache.max_length

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        return self.cache.lookup(prompts)

    def identity(self) -> str:
        return self.cache.encoder_hash

    def __repr__(self) -> str:
        return f"CachedTextEncoder({self.cache!r})"
