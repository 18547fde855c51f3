"""Prompt files for distillation, and the endless, resumable stream of prompt batches built on them.

Distillation needs prompts only (no images). Sources, chosen by `format`:
- `journeydb`: JourneyDB's train annotations, one JSON object per line, the caption in `obj["Task2"]["Caption"]`
  (the captions the WaDi paper trains on; the Midjourney `prompt` field of the same lines is not used).
- `jsonl`: any other JSON-lines file whose objects carry a `caption`, `prompt` or `text` string (first found).
- `coco`: COCO captions JSON (`captions_train2014.json`: {"images": [...], "annotations": [{"caption"}, ...]}).
- `text`: one prompt per line; blank lines are skipped.
- `auto`: by extension (.jsonl / .json / .txt, optionally .gz) and, where that is ambiguous, the first lines.
Any of them may be gzip-compressed (detected from the file's first bytes).

Every prompt is whitespace-normalised, exact duplicates are dropped (first occurrence kept), the list is
shuffled by `seed` and cut to `max_samples`. Malformed lines are skipped and reported in one warning.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

FORMATS = ("journeydb", "jsonl", "coco", "text")
EXPECTED = {
    "journeydb": 'JSON lines with a "Task2": {"Caption": ...} object per line (JourneyDB train annotations)',
    "jsonl": 'JSON lines with a "caption", "prompt" or "text" string per line',
    "coco": 'COCO captions JSON ({"annotations": [{"caption": ...}, ...]}, captions_train2014.json layout)',
    "text": "plain text, one prompt per line",
}
JSONL_KEYS = ("caption", "prompt", "text")
_PEEK_LINES = 100


def _toy_caption(prompt: str) -> bool:
    from wadi.toy.world import parse_caption

    try:
        parse_caption(prompt)
    except ValueError:
        return False
    return True


# name -> (is this prompt in the grammar, what the grammar is): `load_prompts(grammar=...)`, `dataset.grammar`
GRAMMARS = {
    "toy": (
        _toy_caption,
        "in the toy grammar: 'a <small|large> <color> <shape> at the <position>', up to three joined by ' and '",
    ),
}


class MalformedPromptWarning(UserWarning):
    """Some lines/entries of a prompt file were skipped (one warning per file, with the count)."""


def normalize_prompt(text: str) -> str:
    """Collapse every run of whitespace (newlines, tabs, repeated spaces) to one space and strip the ends."""
    return " ".join(text.split())


@dataclass
class _Parsed:
    prompts: list[str] = field(default_factory=list)
    bad: int = 0
    first_bad: int | None = None  # 1-based line number (JSONL, text) or 0-based annotation index (COCO)
    unit: str = "line"

    def skip(self, where: int) -> None:
        self.bad += 1
        if self.first_bad is None:
            self.first_bad = where

    def keep(self, text: Any, where: int) -> None:
        """Keep `text` if it is a non-empty string after normalisation, else count `where` as malformed."""
        prompt = normalize_prompt(text) if isinstance(text, str) else ""
        if prompt:
            self.prompts.append(prompt)
        else:
            self.skip(where)


def _open(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it starts with the gzip magic number (whatever its name)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, stripped line) for every non-blank line."""
    with _open(path) as f:
        for number, raw in enumerate(f, start=1):
            line = raw.strip()
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
                line = line[3:].strip()
            if line:
                yield number, line


def _json_object(line: bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return None
    return obj if isinstance(obj, dict) else None


def _journeydb_caption(obj: dict) -> Any:
    task2 = obj.get("Task2")
    return task2.get("Caption") if isinstance(task2, dict) else None


def _jsonl_caption(obj: dict) -> Any:
    return next((obj[k] for k in JSONL_KEYS if k in obj), None)


def _parse_jsonl(path: Path, caption_of) -> _Parsed:
    parsed = _Parsed()
    for number, line in _lines(path):
        obj = _json_object(line)
        if obj is None:
            parsed.skip(number)
        else:
            parsed.keep(caption_of(obj), number)
    return parsed


def _parse_journeydb(path: Path) -> _Parsed:
    return _parse_jsonl(path, _journeydb_caption)


def _parse_generic_jsonl(path: Path) -> _Parsed:
    return _parse_jsonl(path, _jsonl_caption)


def _parse_coco(path: Path) -> _Parsed:
    with _open(path) as f:
        try:
            data = json.load(f)
        except ValueError as err:
            raise ValueError(
                f"prompt file {path} is not valid JSON ({err}); expected {EXPECTED['coco']}"
            ) from err
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise ValueError(f'prompt file {path} has no "annotations" list; expected {EXPECTED["coco"]}')
    parsed = _Parsed(unit="annotation")
    for i, ann in enumerate(annotations):
        parsed.keep(ann.get("caption") if isinstance(ann, dict) else None, i)
    return parsed


def _parse_text(path: Path) -> _Parsed:
    parsed = _Parsed()
    for number, line in _lines(path):
        try:
            parsed.keep(line.decode("utf-8"), number)
        except UnicodeDecodeError:
            parsed.skip(number)
    return parsed


_PARSERS = {
    "journeydb": _parse_journeydb,
    "jsonl": _parse_generic_jsonl,
    "coco": _parse_coco,
    "text": _parse_text,
}


def _sniff(path: Path) -> str:
    """Guess from the first lines: a JSON object per line (JourneyDB if it has Task2), one COCO object, or text."""
    lines = []
    for _, line in _lines(path):
        lines.append(line)
        if len(lines) >= _PEEK_LINES:
            break
    for line in lines:
        obj = _json_object(line)
        if obj is not None:
            if "annotations" in obj:
                return "coco"
            return "journeydb" if "Task2" in obj else "jsonl"
    if lines and lines[0][:1] in (b"{", b"["):  # pretty-printed JSON: its first line alone is not JSON
        return "coco"
    return "text"


def detect_format(path: str | Path) -> str:
    """The format `auto` resolves to: by extension (.gz ignored), else by the first lines of the file."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    if ext == ".json":
        return "coco"
    if ext == ".txt":
        return "text"
    sniffed = _sniff(path)
    if ext in (".jsonl", ".ndjson") and sniffed not in ("journeydb", "jsonl"):
        return "journeydb"  # unparseable first lines: let the JourneyDB parser count them as malformed
    return sniffed


def deduplicate(prompts: list[str]) -> list[str]:
    """Drop exact repeats, keeping each prompt's first occurrence (and so the file's order)."""
    return list(dict.fromkeys(prompts))


def load_prompts(
    path: str | Path,
    format: str = "auto",
    seed: int = 0,
    max_samples: int | None = None,
    shuffle: bool = True,
    grammar: str | None = None,
) -> list[str]:
    """Normalised, de-duplicated prompts of a file, shuffled by `seed`, at most `max_samples` of them.

    The shuffle comes before the cut so `max_samples` is a uniform random subset; with `shuffle=False` the
    first `max_samples` distinct prompts in file order are kept. Malformed lines are skipped with one
    `MalformedPromptWarning` (file, count, first bad line); a missing, unreadable or empty source raises, and so
    does one whose entries are mostly (more than half) malformed: that is the wrong file or the wrong format.
    `grammar` ("toy": wadi.toy.world's caption grammar) also counts a prompt outside that grammar as malformed.
    """
    if grammar is not None and grammar not in GRAMMARS:
        raise ValueError(
            f"unknown prompt grammar {grammar!r} for {path}; expected null or one of {sorted(GRAMMARS)}"
        )
    if format not in ("auto", *FORMATS):
        raise ValueError(f"unknown prompt format {format!r} for {path}; expected auto or one of {FORMATS}")
    if max_samples is not None and int(max_samples) < 1:
        raise ValueError(f"max_samples must be >= 1 or null, got {max_samples}")
    path = Path(path).expanduser()
    expected = "a prompt file" if format == "auto" else EXPECTED[format]
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist (expected {expected})")
    if not path.is_file():
        raise ValueError(f"prompt source {path} is not a file (expected {expected})")
    try:
        fmt = detect_format(path) if format == "auto" else format
        parsed = _PARSERS[fmt](path)
    except (OSError, EOFError) as err:  # permissions, broken or truncated gzip
        raise OSError(f"cannot read prompt file {path} (expected {expected}): {err}") from err
    expected_what = EXPECTED[fmt]
    if grammar is not None:
        ok, described = GRAMMARS[grammar]
        outside = [p for p in parsed.prompts if not ok(p)]
        if outside:
            parsed.bad += len(outside)
            parsed.prompts = [p for p in parsed.prompts if ok(p)]
            expected_what += f", each prompt {described} (first outside it: {outside[0]!r})"
    total = parsed.bad + len(parsed.prompts)
    if parsed.bad * 2 > total:
        raise ValueError(
            f"prompt file {path}: {parsed.bad} of {total} {parsed.unit}s are malformed (read as {fmt}); expected "
            f"{expected_what}. Is it the right file (and dataset.format)?"
        )
    if parsed.bad:
        warnings.warn(
            MalformedPromptWarning(
                f"{path}: skipped {parsed.bad} malformed {parsed.unit}(s) of {total}"
                + (f" (first at {parsed.unit} {parsed.first_bad})" if parsed.first_bad is not None else "")
                + f"; expected {expected_what}"
            ),
            stacklevel=2,
        )
    prompts = deduplicate(parsed.prompts)
    if not prompts:
        raise ValueError(f"no prompts in {path}: read as {fmt}, expected {expected_what}")
    if shuffle:
        order = np.random.default_rng(int(seed)).permutation(len(prompts))
        prompts = [prompts[i] for i in order]
    return prompts if max_samples is None else prompts[: int(max_samples)]


def prompts_identity(prompts: list[str]) -> str:
    """sha256 of the prompt list in order: the cache stores embeddings by position, so order is identity."""
    h = hashlib.sha256()
    h.update(len(prompts).to_bytes(8, "little"))
    for prompt in prompts:
        data = prompt.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------- stream
def pass_of_batch(batch: int, num_prompts: int, batch_size: int, world_size: int = 1) -> int:
    """The pass over the prompts ("prompt epoch") in which global batch `batch` starts.

    Global batch k covers positions [k*B*W, (k+1)*B*W) of the endless sequence, so it starts in pass
    k*B*W // n; `batch * batch_size * world_size / num_prompts` is the fractional number of epochs done.
    """
    return batch * batch_size * world_size // num_prompts


def _pass_seed(seed: int, pass_index: int) -> int:
    """Independent seeds per (seed, pass): no collisions such as seed*K + pass would have."""
    digest = hashlib.sha256(f"prompt-stream/{seed}/{pass_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class PromptStream(IterableDataset):
    """Infinite, deterministic, resumable stream of prompt batches for distillation.

    Global batch k (k = 0, 1, ...) for rank r of world size W holds prompts at positions
    [k*B*W + r*B, k*B*W + (r+1)*B) of an endless sequence made of passes over the prompt list, each pass
    a permutation seeded by (seed, pass index). Starting at `start_batch` lets a resumed run continue
    exactly where it stopped (the training loop passes the number of completed steps).

    Items: {"prompt": list[str] (B), "index": LongTensor (B,) positions in the prompt list, "pass": int (the
    pass global batch k starts in), "batch": int (k)}; with an `EmbeddingCache` also "prompt_embeds" (B, L, D),
    "prompt_mask" (B, L) or None, and, when the cache holds the empty prompt, "null_embeds" (1, L, D) and
    "null_mask" (1, L) or None. Use `DataLoader(stream, batch_size=None)`. With `num_workers=N` worker i
    yields batches start_batch + i, + i + N, ...; the DataLoader takes them round-robin, so the order is
    the same as with no workers (workers pay off only for cache reads; prompts alone are cheap).
    """

    def __init__(
        self,
        prompts: list[str],
        batch_size: int,
        seed: int = 0,
        start_batch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        cache=None,
    ) -> None:
        if not prompts:
            raise ValueError("PromptStream needs at least one prompt")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if int(start_batch) < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.prompts = list(prompts)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.start_batch = int(start_batch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.cache = cache
        if cache is not None:
            cache.check_prompts(self.prompts)
        self._perms: dict[int, torch.Tensor] = {}

    def permutation(self, pass_index: int) -> torch.Tensor:
        """The order of the prompt list in pass `pass_index` (the last two passes are kept)."""
        if pass_index not in self._perms:
            if len(self._perms) >= 2:
                self._perms.pop(min(self._perms))
            g = torch.Generator().manual_seed(_pass_seed(self.seed, pass_index))
            self._perms[pass_index] = torch.randperm(len(self.prompts), generator=g)
        return self._perms[pass_index]

    def pass_of_batch(self, batch: int) -> int:
        return pass_of_batch(batch, len(self.prompts), self.batch_size, self.world_size)

    def indices(self, batch: int) -> torch.Tensor:
        """Positions in the prompt list of this rank's part of global batch `batch`, (B,) int64."""
        n = len(self.prompts)
        first = (batch * self.world_size + self.rank) * self.batch_size
        positions = torch.arange(first, first + self.batch_size)
        passes, offsets = positions // n, positions % n
        index = torch.empty_like(positions)
        for p in passes.unique().tolist():  # a batch may span several passes when B*W > n
            here = passes == p
            index[here] = self.permutation(p)[offsets[here]]
        return index

    def batch(self, batch: int) -> dict[str, Any]:
        """This rank's part of global batch `batch`."""
        index = self.indices(batch)
        item: dict[str, Any] = {
            "prompt": [self.prompts[i] for i in index.tolist()],
            "index": index,
            "pass": self.pass_of_batch(batch),
            "batch": batch,
        }
        if self.cache is not None:
            item["prompt_embeds"], item["prompt_mask"] = self.cache[index]
            if self.cache.has_null:
                item["null_embeds"], item["null_mask"] = self.cache.null()
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        k = self.start_batch + worker
        while True:
            yield self.batch(k)
            k += workers
