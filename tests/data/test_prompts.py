"""Prompt files (JourneyDB JSONL, COCO captions JSON, text) and the resumable prompt stream."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from wadi.data.prompts import (
    MalformedPromptWarning,
    PromptStream,
    detect_format,
    load_prompts,
    normalize_prompt,
    pass_of_batch,
    prompts_identity,
)

FIXTURES = Path(__file__).parent / "fixtures"
JOURNEYDB = FIXTURES / "journeydb_train_anno.jsonl"
COCO = FIXTURES / "captions_train2014.json"
TEXT = FIXTURES / "prompts.txt"

# What the hand-written fixtures hold, in file order, after normalisation and de-duplication.
JOURNEYDB_PROMPTS = [
    "A corgi in an astronaut suit floats in space with Earth behind it.",
    "A watercolor painting of a lighthouse standing against a stormy sea.",
    "A steaming bowl of ramen under studio lighting.",
    "A weathered old fisherman in a knitted cap looks into the camera.",
    "A red fox curled up in fresh snow at dawn.",
    "A futuristic city made of glass reflecting a pink sunset.",
]
COCO_PROMPTS = [
    "A restaurant has modern wooden tables and chairs.",
    "A man preparing desserts in a kitchen covered in frosting.",
    "A long restaurant table with rattan rounded back chairs.",
    "a long table with a plant on top of it surrounded with wooden chairs",
]
TEXT_PROMPTS = [
    "a photo of a cat sitting on a windowsill at sunset",
    "an astronaut riding a horse, digital art",
    "a bowl of ramen, studio lighting",
    "a watercolor painting of a lighthouse in a storm",
]


def load_warned(path, **kwargs) -> tuple[list[str], list[str]]:
    """load_prompts, returning the prompts and the MalformedPromptWarning messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prompts = load_prompts(path, **kwargs)
    return prompts, [str(w.message) for w in caught if issubclass(w.category, MalformedPromptWarning)]


# ------------------------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    "path, fmt, expected, bad, first",
    [
        (JOURNEYDB, "journeydb", JOURNEYDB_PROMPTS, 4, "line 5"),
        (COCO, "coco", COCO_PROMPTS, 2, "annotation 3"),
        (TEXT, "text", TEXT_PROMPTS, 1, "line 7"),
    ],
)
def test_parsers_on_real_format_samples(path, fmt, expected, bad, first):
    """Each format: malformed entries skipped and counted in ONE warning naming file, count and first bad."""
    for format in (fmt, "auto"):
        prompts, messages = load_warned(path, format=format, shuffle=False)
        assert prompts == expected
        assert len(messages) == 1
        assert str(path) in messages[0]
        assert f"skipped {bad} malformed" in messages[0]
        assert f"first at {first}" in messages[0]


def test_journeydb_uses_task2_caption_not_midjourney_prompt():
    prompts, _ = load_warned(JOURNEYDB, format="journeydb", shuffle=False)
    assert not any("--ar" in p or "--v" in p for p in prompts)


def test_gzip_detected_by_content(tmp_path):
    gz = tmp_path / "train_anno.jsonl.gz"
    gz.write_bytes(gzip.compress(JOURNEYDB.read_bytes()))
    prompts, messages = load_warned(gz, shuffle=False)
    assert detect_format(gz) == "journeydb"
    assert prompts == JOURNEYDB_PROMPTS and len(messages) == 1
    # a gzip file without the .gz suffix is still read
    hidden = tmp_path / "captions.json"
    hidden.write_bytes(gzip.compress(COCO.read_bytes()))
    assert load_warned(hidden, shuffle=False)[0] == COCO_PROMPTS


def test_generic_jsonl_and_sniffing(tmp_path):
    lines = [{"caption": "a red  circle"}, {"prompt": "a blue square"}, {"text": "a star"}, {"other": "x"}]
    path = tmp_path / "prompts.data"  # unknown extension: sniffed from the first lines
    path.write_text("\n".join(json.dumps(x) for x in lines))
    assert detect_format(path) == "jsonl"
    prompts, messages = load_warned(path, shuffle=False)
    assert prompts == ["a red circle", "a blue square", "a star"]
    assert "skipped 1 malformed" in messages[0] and "first at line 4" in messages[0]
    plain = tmp_path / "prompts.data2"
    plain.write_text("just a prompt\nanother one\n")
    assert detect_format(plain) == "text"
    pretty = tmp_path / "coco.data"
    pretty.write_text(json.dumps(json.loads(COCO.read_text()), indent=2))
    assert detect_format(pretty) == "coco"
    assert load_warned(pretty, shuffle=False)[0] == COCO_PROMPTS


def test_clean_file_gives_no_warning(tmp_path):
    path = tmp_path / "clean.txt"
    path.write_text("one\ntwo\n\nthree\n")
    prompts, messages = load_warned(path, shuffle=False)
    assert prompts == ["one", "two", "three"] and messages == []


def test_normalise_and_deduplicate_keep_first(tmp_path):
    assert normalize_prompt("  a\tb \n c  ") == "a b c"
    path = tmp_path / "dups.txt"
    path.write_text("b  x\na\nb x\n  a \nc\nA\n")
    assert load_prompts(path, shuffle=False) == ["b x", "a", "c", "A"]  # exact match: case is kept


# ------------------------------------------------------------------------------------------- shuffle / subsample
@pytest.fixture
def many_prompts(tmp_path) -> Path:
    path = tmp_path / "many.txt"
    path.write_text("\n".join(f"prompt number {i}" for i in range(200)))
    return path


def test_shuffle_is_deterministic_by_seed(many_prompts):
    ordered = load_prompts(many_prompts, shuffle=False)
    a, b = load_prompts(many_prompts, seed=3), load_prompts(many_prompts, seed=3)
    c = load_prompts(many_prompts, seed=4)
    assert a == b
    assert a != c and a != ordered
    assert sorted(a) == sorted(ordered) == sorted(c)


def test_max_samples_subsamples_after_dedupe_and_shuffle(many_prompts):
    full = load_prompts(many_prompts, seed=1)
    sub = load_prompts(many_prompts, seed=1, max_samples=10)
    assert sub == full[:10]
    assert sub != load_prompts(many_prompts, shuffle=False)[:10]  # a random subset, not the file's head
    assert load_prompts(many_prompts, shuffle=False, max_samples=3) == [
        f"prompt number {i}" for i in range(3)
    ]
    assert len(load_prompts(many_prompts, max_samples=10_000)) == 200
    with pytest.raises(ValueError, match="max_samples"):
        load_prompts(many_prompts, max_samples=0)


# ------------------------------------------------------------------------------------------- bad input
def test_missing_file_names_file_and_format(tmp_path):
    path = tmp_path / "nope" / "train_anno.jsonl"
    with pytest.raises(FileNotFoundError, match="train_anno.jsonl") as err:
        load_prompts(path, format="journeydb")
    assert "Task2" in str(err.value)


@pytest.mark.parametrize("fmt", ["journeydb", "coco", "text"])
def test_empty_source_is_an_error_naming_file(tmp_path, fmt):
    path = tmp_path / f"empty_{fmt}.src"
    path.write_text({"journeydb": '{"Task1": {}}\n\n', "coco": '{"annotations": []}', "text": "\n  \n"}[fmt])
    with pytest.raises(ValueError, match=f"empty_{fmt}.src") as err:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_prompts(path, format=fmt)
    assert fmt in str(err.value)


def test_coco_structure_errors_name_file(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"annotations": [')
    with pytest.raises(ValueError, match="broken.json.*not valid JSON"):
        load_prompts(broken, format="coco")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"images": []}')
    with pytest.raises(ValueError, match='wrong.json has no "annotations"'):
        load_prompts(wrong)


def test_directory_truncated_gzip_and_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="not a file"):
        load_prompts(tmp_path)
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(gzip.compress(JOURNEYDB.read_bytes())[:200])
    with pytest.raises(OSError, match="cut.jsonl.gz"):
        load_prompts(truncated)
    with pytest.raises(ValueError, match="unknown prompt format 'csv'"):
        load_prompts(TEXT, format="csv")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_names_file(tmp_path):
    path = tmp_path / "secret.txt"
    shutil.copy(TEXT, path)
    path.chmod(0)
    with pytest.raises(OSError, match="secret.txt"):
        load_prompts(path)


def test_prompts_identity_depends_on_order_and_boundaries():
    assert prompts_identity(["a", "b"]) == prompts_identity(["a", "b"])
    assert prompts_identity(["a", "b"]) != prompts_identity(["b", "a"])
    assert prompts_identity(["ab", "c"]) != prompts_identity(["a", "bc"])


# ------------------------------------------------------------------------------------------- stream
def take(stream: PromptStream, k: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(k)]


def test_stream_is_deterministic_and_seeded():
    prompts = [f"p{i}" for i in range(23)]
    a = take(PromptStream(prompts, 4, seed=7), 12)
    b = take(PromptStream(prompts, 4, seed=7), 12)
    c = take(PromptStream(prompts, 4, seed=8), 12)
    assert [x["prompt"] for x in a] == [x["prompt"] for x in b]
    assert [x["prompt"] for x in a] != [x["prompt"] for x in c]
    for item in a:
        assert item["prompt"] == [prompts[i] for i in item["index"].tolist()]
        assert item["index"].dtype == torch.long and item["index"].shape == (4,)


@pytest.mark.parametrize("n, batch, world", [(12, 2, 3), (10, 2, 3), (7, 4, 2), (5, 4, 3)])
def test_rank_shards_are_disjoint_and_cover_each_pass_once(n, batch, world):
    """Ranks' parts of global batch k tile positions [k*B*W, (k+1)*B*W); every pass is a permutation."""
    prompts = [f"p{i}" for i in range(n)]
    batches = 3 * n  # enough global batches for >= 3 full passes
    streams = [PromptStream(prompts, batch, seed=1, rank=r, world_size=world) for r in range(world)]
    sequence = []  # the endless sequence, rebuilt from the ranks in global order
    for k in range(batches):
        for s in streams:
            sequence += s.batch(k)["index"].tolist()
    passes = len(sequence) // n
    assert passes >= 3
    for p in range(passes):
        assert sorted(sequence[p * n : (p + 1) * n]) == list(range(n))
    orders = {tuple(sequence[p * n : (p + 1) * n]) for p in range(passes)}
    assert n < 6 or len(orders) > 1  # each pass is its own permutation


def test_resume_equals_tail_of_uninterrupted_stream():
    prompts = [f"p{i}" for i in range(37)]
    for rank in (0, 1):
        full = take(PromptStream(prompts, 5, seed=2, rank=rank, world_size=2), 20)
        resumed = take(PromptStream(prompts, 5, seed=2, start_batch=13, rank=rank, world_size=2), 7)
        for a, b in zip(full[13:], resumed):
            assert a["prompt"] == b["prompt"] and torch.equal(a["index"], b["index"])
            assert a["pass"] == b["pass"] and a["batch"] == b["batch"]


def test_pass_boundaries():
    n, batch, world = 10, 3, 2  # 6 positions per global batch: passes start in batches 0, 1, 3, 5, 6, ...
    stream = PromptStream([f"p{i}" for i in range(n)], batch, world_size=world)
    assert [stream.batch(k)["pass"] for k in range(7)] == [0, 0, 1, 1, 2, 3, 3]
    assert [pass_of_batch(k, n, batch, world) for k in range(7)] == [0, 0, 1, 1, 2, 3, 3]
    # batch 1 of rank 0 covers positions 6..8 (pass 0); rank 1 covers 9 (pass 0) and 10, 11 (pass 1)
    r1 = PromptStream([f"p{i}" for i in range(n)], batch, rank=1, world_size=world).indices(1).tolist()
    assert r1[0] == stream.permutation(0)[9].item()
    assert r1[1:] == stream.permutation(1)[:2].tolist()


def test_dataloader_workers_do_not_duplicate_batches():
    prompts = [f"p{i}" for i in range(29)]
    stream = PromptStream(prompts, 3, seed=5, start_batch=4)
    expected = [x["index"].tolist() for x in take(stream, 9)]
    for workers in (0, 2):
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        it = iter(loader)
        got = [next(it)["index"].tolist() for _ in range(9)]
        del it
        assert got == expected


def test_stream_bad_input():
    with pytest.raises(ValueError, match="at least one prompt"):
        PromptStream([], 2)
    with pytest.raises(ValueError, match="rank 2"):
        PromptStream(["a"], 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        PromptStream(["a"], 0)
