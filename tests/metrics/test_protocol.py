"""The evaluation protocol: crop/resize on known images, caption selection, reference folder handling."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from wadi.metrics.protocol import (
    center_crop_square,
    list_reference_images,
    load_captions,
    protocol_images,
    protocol_resize,
    split_for_rank,
    tensor_to_uint8,
)


def _index_image(w: int, h: int) -> Image.Image:
    """Pixel (y, x) = (x, y, 0): a crop's offsets can be read back from its values."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[..., 0] = np.arange(w)[None, :]
    arr[..., 1] = np.arange(h)[:, None]
    return Image.fromarray(arr)


def test_center_crop_by_hand():
    crop = np.asarray(center_crop_square(_index_image(5, 3)))  # 5 wide, 3 high -> columns 1..3
    assert crop.shape == (3, 3, 3)
    assert crop[0, :, 0].tolist() == [1, 2, 3]
    assert crop[:, 0, 1].tolist() == [0, 1, 2]
    crop = np.asarray(center_crop_square(_index_image(4, 7)))  # rows (7 - 4) / 2 = 1.5 -> round() = 2
    assert crop[:, 0, 1].tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize("size", [(5, 3), (3, 5), (4, 7), (8, 5), (640, 480), (480, 427), (6, 6)])
def test_center_crop_matches_torchvision(size):
    """GigaGAN / DMD2 crop with torchvision's center_crop(img, min(img.size)) (BigGAN's CenterCropLongEdge)."""
    img = _index_image(*size)
    ours = np.asarray(center_crop_square(img))
    theirs = np.asarray(TF.center_crop(img, min(img.size)))
    np.testing.assert_array_equal(ours, theirs)


def test_protocol_resize_removes_the_long_edge_margins():
    """A 768 x 512 image, red in its central 512 x 512 square and blue outside -> all red at 256 px."""
    arr = np.zeros((512, 768, 3), np.uint8)
    arr[..., 2] = 255
    arr[:, 128:640] = (255, 0, 0)
    out = protocol_resize(arr, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert (out == np.array([255, 0, 0], np.uint8)).all()


@pytest.mark.parametrize("resize_filter", ["lanczos", "bicubic"])
def test_protocol_resize_equals_the_reference_pipeline(resize_filter):
    """Equal to GigaGAN's `resize_and_center_crop`: crop with torchvision, then PIL resize with the filter."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (300, 411, 3), dtype=np.uint8)
    filt = {"lanczos": Image.LANCZOS, "bicubic": Image.BICUBIC}[resize_filter]
    img = Image.fromarray(arr)
    expected = np.asarray(TF.center_crop(img, min(img.size)).resize((256, 256), filt))
    np.testing.assert_array_equal(protocol_resize(arr, 256, resize_filter), expected)
    np.testing.assert_array_equal(protocol_resize(img, 256, resize_filter), expected)


def test_protocol_resize_keeps_a_square_image_at_the_target_size_and_a_constant_image_constant():
    arr = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    np.testing.assert_array_equal(protocol_resize(arr, 256), arr)
    flat = np.full((512, 512, 3), 77, np.uint8)
    assert (protocol_resize(flat, 256) == 77).all()
    with pytest.raises(ValueError, match="resize_filter"):
        protocol_resize(arr, 256, "cubic")


def test_generated_images_are_rounded_then_put_through_the_same_pipeline():
    x = (
        torch.tensor([0.0, 0.5 / 255 - 1e-4, 0.5 / 255 + 1e-4, 1.0, 1.5, -0.2])
        .view(1, 1, 1, 6)
        .expand(1, 3, 1, 6)
    )
    assert tensor_to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 1, 255, 255, 0]
    images = torch.rand(2, 3, 40, 64, generator=torch.Generator().manual_seed(0))
    out = protocol_images(images, 32)
    expected = np.stack([protocol_resize(a, 32) for a in tensor_to_uint8(images)])
    np.testing.assert_array_equal(out, expected)
    assert out.shape == (2, 32, 32, 3)


# ---------------------------------------------------------------------------------------------- captions


def _coco_json(path, n_images=20, per_image=5):
    images = [{"id": 100 + i, "file_name": f"COCO_val2014_{100 + i:012d}.jpg"} for i in range(n_images)]
    anns, aid = [], 0
    for i in range(n_images):
        for j in range(per_image):
            anns.append({"id": aid, "image_id": 100 + i, "caption": f"  image {i}\ncaption {j} "})
            aid += 1
    anns.append({"id": aid, "image_id": 999, "caption": "   "})  # an image whose only caption is empty
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


def test_coco_captions_one_per_image_deterministic_and_nested(tmp_path):
    path = _coco_json(tmp_path / "captions_val2014.json")
    prompts = load_captions(path, n=12, seed=0)
    assert len(prompts) == 12
    assert len({p.image_id for p in prompts}) == 12  # one caption per image
    assert all(p.caption.startswith(f"image {p.image_id - 100} caption ") for p in prompts)
    assert all("  " not in p.caption and "\n" not in p.caption for p in prompts)
    assert [p.seed for p in prompts] == list(range(12))
    assert prompts[0].file_name == f"COCO_val2014_{prompts[0].image_id:012d}.jpg"
    assert load_captions(path, n=12, seed=0) == prompts  # deterministic
    assert load_captions(path, n=5, seed=0) == prompts[:5]  # a smaller subset is a prefix
    everything = load_captions(path, seed=0)
    assert len(everything) == 20 and 999 not in {p.image_id for p in everything}
    other = load_captions(path, n=12, seed=1)
    assert [p.seed for p in other] == list(range(1, 13))
    assert [p.caption for p in other] != [p.caption for p in prompts]  # the seed picks other captions/images
    # not simply the first caption of the first images
    assert {p.caption.split()[-1] for p in everything} != {"0"}
    assert [p.image_id for p in everything] != sorted(p.image_id for p in everything)


def test_text_captions_in_file_order(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a cat\n\n   \na  dog on a   mat\nthird\n")
    prompts = load_captions(path, n=2, seed=5)
    assert [(p.caption, p.seed) for p in prompts] == [("a cat", 5), ("a dog on a mat", 6)]


def test_bad_captions_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="eval.captions.*nope.json"):
        load_captions(tmp_path / "nope.json")
    (tmp_path / "empty.txt").write_text("\n  \n\t\n")
    with pytest.raises(ValueError, match="no usable"):
        load_captions(tmp_path / "empty.txt")
    (tmp_path / "empty.json").write_text(
        json.dumps({"images": [], "annotations": [{"image_id": 1, "caption": ""}]})
    )
    with pytest.raises(ValueError, match="no usable"):
        load_captions(tmp_path / "empty.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_captions(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a COCO captions JSON"):
        load_captions(tmp_path / "list.json")
    path = _coco_json(tmp_path / "few.json", n_images=3)
    with pytest.raises(ValueError, match="3 usable captions.*n_samples=10"):
        load_captions(path, n=10)


# ---------------------------------------------------------------------------------------------- reference


def test_reference_folder_skips_and_counts_non_images(tmp_path, caplog):
    root = tmp_path / "val"
    (root / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.JPEG"):
        Image.new("RGB", (8, 6)).save(root / name)
    (root / "notes.txt").write_text("x")
    (root / "annotations.json").write_text("{}")
    (root / ".DS_Store").write_bytes(b"\0")
    with caplog.at_level(logging.WARNING):
        ref = list_reference_images(root)
    assert [p.relative_to(root).as_posix() for p in ref.files] == ["a.jpg", "b.png", "sub/c.JPEG"]
    assert ref.skipped == 3
    assert "skipped 3 non-image" in caplog.text
    assert len(list_reference_images(root, n=2).files) == 2
    with pytest.raises(ValueError, match="holds 3 images but n_reference=4.*3 non-image"):
        list_reference_images(root, n=4)
    with pytest.raises(FileNotFoundError, match="eval.reference_dir"):
        list_reference_images(tmp_path / "missing")
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        list_reference_images(tmp_path / "none")


def test_rank_split_is_a_partition():
    for n, world in [(10, 3), (7, 2), (4, 4), (5, 1)]:
        parts = [split_for_rank(n, r, world) for r in range(world)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        split_for_rank(4, 2, 2)
