"""The text-embedding cache: round trip, resume, refusal of a foreign cache, the stream reading it, the CLI."""

from __future__ import annotations

import json
import pickle
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

import wadi.data.cache as cache_mod
from wadi.data.cache import (
    CacheMismatchError,
    EmbeddingCache,
    backbone_encoder_hash,
    build_cache,
    encoder_identity,
    text_encoder_files_identity,
)
from wadi.data.prompts import PromptStream, prompts_identity

PROMPTS = [f"prompt {i} " + " ".join(["word"] * (i % 5)) for i in range(23)]


class FakeEncoder(nn.Module):
    """A tiny deterministic text encoder in the TextEncoderLike shape.

    Tokens are crc32 word ids + EOS, padded with a pad id whose embedding is NOT zero (as with T5/CLIP), and
    each position mixes in the mean of the valid tokens (context), so rows depend on the whole prompt.
    `fail_on_call` raises KeyboardInterrupt on that encode call (a run killed mid-way).
    """

    PAD, EOS = 0, 1

    def __init__(
        self, max_length=8, dim=6, use_mask=True, dtype=torch.float32, seed=0, scale=1.0, left_pad=False
    ):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.max_length, self.use_mask, self.out_dtype, self.scale = max_length, use_mask, dtype, scale
        self.left_pad = left_pad
        self.embed = nn.Parameter(torch.randn(64, dim, generator=g))
        self.pos = nn.Parameter(torch.randn(max_length, dim, generator=g))
        self.calls = 0
        self.fail_on_call: int | None = None

    def tokens(self, prompt: str) -> list[int]:
        ids = [2 + zlib.crc32(w.encode()) % 62 for w in prompt.split()][: self.max_length - 1] + [self.EOS]
        pad = [self.PAD] * (self.max_length - len(ids))
        return pad + ids if self.left_pad else ids + pad

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor | None]:
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated kill")
        ids = torch.tensor([self.tokens(p) for p in prompts])
        mask = (ids != self.PAD).long()
        x = self.embed[ids] + self.pos
        context = (x * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]
        embeds = (self.scale * (x + context)).to(self.out_dtype)
        return embeds, (mask if self.use_mask else None)

    def identity(self) -> str:
        return encoder_identity(self, None, max_length=self.max_length, use_mask=self.use_mask)


def build(tmp_path: Path, encoder: FakeEncoder, prompts=PROMPTS, **kw) -> Path:
    kw = {"batch_size": 4, "shard_size": 5, "progress": False, **kw}
    return build_cache(prompts, encoder, tmp_path / "cache", **kw)


def open_cache(tmp_path: Path, encoder: FakeEncoder, prompts=PROMPTS) -> EmbeddingCache:
    return EmbeddingCache.open(tmp_path / "cache", encoder.identity(), prompts)


# ------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize(
    "use_mask, compact, left_pad",
    [(False, True, False), (True, False, False), (True, True, False), (True, True, True)],
)
def test_round_trip_equals_on_the_fly_bitwise_fp32(tmp_path, use_mask, compact, left_pad):
    enc = FakeEncoder(use_mask=use_mask, left_pad=left_pad)
    path = build(tmp_path, enc, dtype="float32", compact=compact)
    cache = open_cache(tmp_path, enc)
    index = torch.tensor([22, 0, 7, 5, 4, 19, 7])  # across shards, repeated, out of order
    embeds, mask = cache[index]
    want_embeds, want_mask = enc.encode([PROMPTS[i] for i in index])
    assert embeds.dtype == torch.float32 and embeds.shape == (7, 8, 6)
    if not use_mask:
        assert mask is None
        assert torch.equal(embeds, want_embeds)
        return
    assert torch.equal(mask, want_mask) and mask.dtype == want_mask.dtype
    valid = want_mask.bool()
    assert torch.equal(embeds[valid], want_embeds[valid])
    if compact:  # padded positions are not stored: they read back as zeros
        assert (embeds[~valid] == 0).all() and (want_embeds[~valid] != 0).all()
    else:
        assert torch.equal(embeds, want_embeds)
    assert len(list(path.glob("shard-*.safetensors"))) == 5  # 23 prompts / 5 per shard


def test_layout_and_meta(tmp_path):
    enc = FakeEncoder()
    path = build(tmp_path, enc, extra_prompts=["a sample prompt"])
    assert path.name == f"{enc.identity()[:16]}-{prompts_identity(PROMPTS)[:16]}"
    meta = json.loads((path / "meta.json").read_text())
    assert meta["encoder_hash"] == enc.identity() and meta["prompts_hash"] == prompts_identity(PROMPTS)
    assert (meta["n"], meta["max_length"], meta["dim"], meta["dtype"]) == (23, 8, 6, "float32")
    assert (meta["shard_size"], meta["num_shards"], meta["completed"], meta["complete"]) == (
        5,
        5,
        [0, 1, 2, 3, 4],
        True,
    )
    assert meta["extra_prompts"] == ["", "a sample prompt"]
    assert sorted(p.name for p in path.iterdir()) == [
        "extra.safetensors",
        "meta.json",
        *[f"shard-{i:05d}.safetensors" for i in range(5)],
    ]


def test_half_precision_storage_equals_cast(tmp_path):
    enc = FakeEncoder(use_mask=False)
    build(tmp_path, enc, dtype="fp16")
    embeds, _ = open_cache(tmp_path, enc)[list(range(23))]
    assert embeds.dtype == torch.float16
    assert torch.equal(embeds, enc.encode(PROMPTS)[0].half())


def test_default_dtype_is_the_encoders(tmp_path):
    enc = FakeEncoder(dtype=torch.bfloat16)
    build(tmp_path, enc, compact=False)
    cache = open_cache(tmp_path, enc)
    assert cache.dtype == torch.bfloat16
    assert torch.equal(cache[[3, 4]][0], enc.encode(PROMPTS[3:5])[0])


def test_extra_prompts_and_null(tmp_path):
    enc = FakeEncoder()
    build(tmp_path, enc, extra_prompts=["a red circle", "a blue square"])
    cache = open_cache(tmp_path, enc)
    assert cache.has_null
    null, null_mask = cache.null()
    want, want_mask = enc.encode([""])
    assert torch.equal(null, want) and torch.equal(null_mask, want_mask)  # extras are stored in full
    embeds, _ = cache.lookup(["a blue square", "a red circle"])
    assert torch.equal(embeds, enc.encode(["a blue square", "a red circle"])[0])
    with pytest.raises(KeyError, match="a green star"):
        cache.lookup(["a green star"])


# ------------------------------------------------------------------------------------------- resume
def test_resume_after_deleting_the_last_shard(tmp_path):
    enc = FakeEncoder()
    path = build(tmp_path, enc, compact=False)
    first = {p.name: p.read_bytes() for p in path.glob("shard-*")}
    (path / "shard-00004.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete.*4 of 5"):
        open_cache(tmp_path, enc)
    enc.calls = 0
    build(tmp_path, enc, compact=False)
    assert enc.calls == 1 + 1  # the extras, then the 3 prompts of the last shard (batch 4) - nothing else
    again = {p.name: p.read_bytes() for p in path.glob("shard-*")}
    assert sorted(again) == sorted(first)
    assert all(again[name] == first[name] for name in first if name != "shard-00004.safetensors")  # untouched
    embeds, _ = open_cache(tmp_path, enc)[list(range(23))]
    assert torch.equal(embeds, enc.encode(PROMPTS)[0])


def test_resume_after_a_kill_midway(tmp_path, monkeypatch):
    """Killed while renaming shard 2 into place: a temp file is left, meta says incomplete; a rerun finishes."""
    enc = FakeEncoder()
    replace = cache_mod.os.replace

    def dying_replace(src, dst):
        if str(dst).endswith("shard-00002.safetensors"):
            raise KeyboardInterrupt("killed")
        replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, enc)
    monkeypatch.setattr(cache_mod.os, "replace", replace)
    path = next((tmp_path / "cache").iterdir())
    assert list(path.glob(".shard-00002.safetensors.tmp-*"))
    meta = json.loads((path / "meta.json").read_text())
    assert meta["completed"] == [0, 1] and not meta["complete"]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        open_cache(tmp_path, enc)

    enc.calls = 0
    build(tmp_path, enc)
    assert enc.calls == 1 + 2 + 2 + 1  # extras + shards 2, 3, 4 (5, 5, 3 prompts in batches of 4)
    assert not list(path.glob(".*tmp*"))
    embeds, mask = open_cache(tmp_path, enc)[list(range(23))]
    want, want_mask = enc.encode(PROMPTS)
    assert torch.equal(mask, want_mask) and torch.equal(embeds[mask.bool()], want[want_mask.bool()])


def test_encoder_interrupted_then_resumed(tmp_path):
    enc = FakeEncoder()
    enc.fail_on_call = 5  # extras, shard 0 (2 calls), shard 1 (2 calls): dies in shard 1's second batch
    with pytest.raises(KeyboardInterrupt):
        build(tmp_path, enc)
    enc.fail_on_call, enc.calls = None, 0
    build(tmp_path, enc)
    assert enc.calls == 1 + 4 * 2 - 1  # extras + shards 1..4 (shard 4 has 3 prompts: one batch)
    assert open_cache(tmp_path, enc)[[6]][1] is not None


def test_foreign_or_corrupt_shard_is_rewritten(tmp_path):
    enc = FakeEncoder()
    path = build(tmp_path, enc)
    good = {k: v.clone() for k, v in load_file(path / "shard-00001.safetensors").items()}
    (path / "shard-00001.safetensors").write_bytes(b"garbage")
    (path / "shard-00003.safetensors").write_bytes(
        (path / "shard-00002.safetensors").read_bytes()
    )  # wrong rows
    enc.calls = 0
    build(tmp_path, enc)
    assert enc.calls == 1 + 2 + 2
    again = load_file(path / "shard-00001.safetensors")
    assert again.keys() == good.keys() and all(torch.equal(again[k], good[k]) for k in good)
    embeds, _ = open_cache(tmp_path, enc)[list(range(10, 15))]  # shard 3 holds its own rows again
    assert torch.equal(embeds, enc.encode(PROMPTS[10:15])[0] * enc.encode(PROMPTS[10:15])[1][..., None])


def test_rerun_with_other_settings_is_refused(tmp_path):
    enc = FakeEncoder()
    path = build(tmp_path, enc)
    with pytest.raises(CacheMismatchError, match=r"shard_size: cache 5 vs now 7") as err:
        build(tmp_path, enc, shard_size=7)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------- refusal
def test_cache_of_another_encoder_is_refused_naming_both_hashes(tmp_path):
    ours, theirs = FakeEncoder(seed=0), FakeEncoder(seed=1)
    path = build(tmp_path, theirs)
    assert ours.identity() != theirs.identity()
    for where in (tmp_path / "cache", path):  # the cache root, or the cache folder itself
        with pytest.raises(CacheMismatchError, match="another text encoder") as err:
            EmbeddingCache.open(where, ours.identity(), PROMPTS)
        assert theirs.identity() in str(err.value) and ours.identity() in str(err.value)


def test_cache_of_other_prompts_is_refused_naming_both_hashes(tmp_path):
    enc = FakeEncoder()
    path = build(tmp_path, enc)
    other = PROMPTS[::-1]
    for where in (tmp_path / "cache", path):
        with pytest.raises(CacheMismatchError, match="other prompts") as err:
            EmbeddingCache.open(where, enc.identity(), other)
        assert prompts_identity(PROMPTS) in str(err.value) and prompts_identity(other) in str(err.value)
    with pytest.raises(CacheMismatchError, match="other prompts"):
        PromptStream(other, 2, cache=open_cache(tmp_path, enc))


def test_no_cache_at_all(tmp_path):
    with pytest.raises(FileNotFoundError, match="wadi.cache_prompts"):
        EmbeddingCache.open(tmp_path, "e" * 64, PROMPTS)


def test_non_finite_half_precision_is_an_error_naming_the_prompt(tmp_path):
    enc = FakeEncoder(scale=1e6)  # beyond float16's range (65504)
    with pytest.raises(ValueError, match="prompt 0 .*not finite when stored as float16"):
        build(tmp_path, enc, dtype="float16", extra_prompts=())
    nan = FakeEncoder()
    with torch.no_grad():
        nan.embed[:] = float("nan")
    with pytest.raises(ValueError, match="text encoder output for prompt 0 .*not finite in float32"):
        build(tmp_path, nan)
    with pytest.raises(ValueError, match="cache dtype 'int8' unknown"):
        build(tmp_path, FakeEncoder(), dtype="int8")


def test_index_out_of_range(tmp_path):
    enc = FakeEncoder()
    build(tmp_path, enc)
    with pytest.raises(IndexError, match=r"\[0, 23\)"):
        open_cache(tmp_path, enc)[[23]]


# ------------------------------------------------------------------------------------------- identity
def test_encoder_identity_tracks_weights_settings_and_tokenizer():
    from wadi.testing import word_tokenizer

    a, b = FakeEncoder(seed=0), FakeEncoder(seed=0)
    assert a.identity() == b.identity()
    with torch.no_grad():
        b.embed[3, 1] = torch.nextafter(b.embed[3, 1], torch.tensor(10.0))  # one ulp
    assert a.identity() != b.identity()
    assert encoder_identity(a, max_length=8) != encoder_identity(a, max_length=9)
    assert encoder_identity(a.half()) != encoder_identity(FakeEncoder(seed=0))  # dtype matters
    t1, t2 = word_tokenizer(max_length=16), word_tokenizer(max_length=16)
    assert encoder_identity(a, t1) == encoder_identity(a, t2)
    assert encoder_identity(a, t1) != encoder_identity(a, word_tokenizer(["other", "words"], max_length=16))
    assert encoder_identity(a, t1) != encoder_identity(a, word_tokenizer(max_length=12))


def test_files_identity(tmp_path):
    root = tmp_path / "model"
    for sub in ("text_encoder", "tokenizer"):
        (root / sub).mkdir(parents=True)
        (root / sub / "a.bin").write_bytes(b"weights of " + sub.encode())
    (root / "unet").mkdir()
    first = text_encoder_files_identity(root, max_length=77)
    (root / "unet" / "x.bin").write_bytes(b"not part of the text encoder")
    (root / "tokenizer" / ".cache").mkdir()
    (root / "tokenizer" / ".cache" / "lock").write_text("hub metadata")
    assert text_encoder_files_identity(root, max_length=77) == first
    assert text_encoder_files_identity(root, max_length=120) != first
    (root / "text_encoder" / "a.bin").write_bytes(b"weights of text_encodeR")
    assert text_encoder_files_identity(root, max_length=77) != first
    with pytest.raises(FileNotFoundError, match="missing is not a directory"):
        text_encoder_files_identity(tmp_path / "model", subfolders=("text_encoder", "tokenizer", "missing"))


# ------------------------------------------------------------------------------------------- stream + cache
def test_stream_yields_cached_embeddings(tmp_path):
    enc = FakeEncoder()
    build(tmp_path, enc, dtype="float32", compact=False)
    cache = open_cache(tmp_path, enc)
    stream = PromptStream(PROMPTS, 4, seed=3, start_batch=2, rank=1, world_size=2, cache=cache)
    it = iter(stream)
    for _ in range(8):  # 8 batches x 4 prompts x 2 ranks > 2 passes over 23 prompts
        item = next(it)
        want, want_mask = enc.encode(item["prompt"])
        assert torch.equal(item["prompt_embeds"], want) and torch.equal(item["prompt_mask"], want_mask)
        assert torch.equal(item["null_embeds"], enc.encode([""])[0])
        assert item["null_embeds"].shape == (1, 8, 6) and item["null_mask"].shape == (1, 8)


def test_stream_with_cache_through_dataloader_workers(tmp_path):
    enc = FakeEncoder(use_mask=False)
    build(tmp_path, enc, dtype="float32")
    cache = open_cache(tmp_path, enc)
    cache[[0, 7]]  # open some handles: the cache must still pickle for workers
    pickle.loads(pickle.dumps(cache))
    stream = PromptStream(PROMPTS, 3, seed=1, cache=cache)
    loader = iter(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    for k in range(6):
        item = next(loader)
        assert item["batch"] == k and item["prompt_mask"] is None
        assert torch.equal(item["prompt_embeds"], enc.encode(item["prompt"])[0])


def test_compact_storage_keeps_pixart_output_identical(tmp_path):
    """Zeroed padded positions change nothing in PixArt: masked keys get -10000 before the softmax."""
    from wadi.testing import tiny_pixart

    torch.manual_seed(0)
    model = tiny_pixart(cross_dim=6).eval()
    enc = FakeEncoder()
    build(tmp_path, enc, dtype="float32", compact=True)
    stored, mask = open_cache(tmp_path, enc)[[1, 9, 14]]
    full, _ = enc.encode([PROMPTS[i] for i in (1, 9, 14)])
    assert not torch.equal(stored, full)
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 990])
    extra = {"resolution": None, "aspect_ratio": None}
    with torch.no_grad():
        out_full = model(x, full, t, added_cond_kwargs=extra, encoder_attention_mask=mask).sample
        out_stored = model(x, stored, t, added_cond_kwargs=extra, encoder_attention_mask=mask).sample
    assert torch.equal(out_full, out_stored)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_builds_the_cache_training_reads(tmp_path, tiny_pixart_dir):
    """`python -m wadi.cache_prompts` on the composed config: the cache equals the real T5 encoder's output."""
    from hydra import compose, initialize_config_dir

    from wadi.backbones.text import load_text_encoder
    from wadi.cache_prompts import _with_default_overrides, cache_prompts
    from wadi.config import CONF_DIR

    words = ["a red circle at the left", "a small blue square", "the big star", "a cat", "a dog photo"]
    source = tmp_path / "prompts.txt"
    source.write_text("\n".join(words))
    overrides = [
        f"backbone.pretrained={tiny_pixart_dir}",
        "backbone.text_max_length=16",
        "backbone.use_text_mask=true",
        "dataset=text",
        f"dataset.source={source}",
        "dataset.sample_prompts=[a cat]",
        "dataset.grammar=null",  # free text on a tiny T5 (the toy recipe asks for toy captions)
        f"++cache_dir={tmp_path / 'cache'}",
        "++cache_shard_size=2",
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    path = cache_prompts(cfg)

    from wadi.data.prompts import load_prompts

    prompts = load_prompts(source, format="text", seed=int(cfg.seed))
    encoder = load_text_encoder(tiny_pixart_dir, 16, True)
    training_hash = backbone_encoder_hash(cfg.backbone)  # as training computes it: from files, no encoder
    cache = EmbeddingCache.open(tmp_path / "cache", training_hash, prompts)
    assert cache.path == path and len(cache) == 5 and cache.has_null
    embeds, mask = cache[list(range(5))]
    want, want_mask = encoder.encode(prompts)
    assert torch.equal(mask, want_mask)
    assert torch.equal(embeds[mask.bool()], want[want_mask.bool()])
    assert torch.equal(cache.lookup(["a cat"])[0], encoder.encode(["a cat"])[0])
    assert _with_default_overrides(["hydra.run.dir=x"]) == [
        "hydra.run.dir=x",
        "hydra.output_subdir=null",
        "hydra/job_logging=stdout",
    ]


def test_cli_without_cache_dir_says_so():
    from hydra import compose, initialize_config_dir

    from wadi.cache_prompts import cache_prompts
    from wadi.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["dataset=toy"])
    with pytest.raises(ValueError, match="cache_dir"):
        cache_prompts(cfg)
