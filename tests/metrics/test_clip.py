"""CLIP score from a local directory through torchmetrics, reported as cosine (torchmetrics / 100)."""

from __future__ import annotations

import pytest
import torch

from wadi.metrics.clip import CLIP_HF_ID, ClipScorer, clip_score, save_tiny_clip
from wadi.metrics.features import WeightsNotFoundError


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip") / "clip-vit-tiny")


CAPTIONS = ["a cat on a mat", "two dogs", "a red bus on a street", "x"]


def _images(n=4, size=48, seed=0):
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_scores_equal_a_direct_cosine(tiny_clip):
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(tiny_clip, batch_size=3)
    images = _images()
    ours = scorer(images, CAPTIONS)
    assert ours.shape == (4,) and ours.dtype == torch.float32

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    processor = CLIPProcessor.from_pretrained(tiny_clip, backend="pil")
    with torch.no_grad():
        pix = processor(images=list(images), return_tensors="pt")["pixel_values"]
        tok = processor(text=CAPTIONS, return_tensors="pt", padding=True)
        img = model.get_image_features(pixel_values=pix).pooler_output
        txt = model.get_text_features(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).pooler_output
    direct = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(ours, direct, atol=1e-5, rtol=1e-5)
    assert (ours.abs() <= 1).all()


def test_reported_score_is_torchmetrics_divided_by_100(tiny_clip):
    scorer = ClipScorer(tiny_clip)
    images = _images(seed=1)
    per_image = scorer(images, CAPTIONS)
    metric = scorer.metric
    metric.reset()
    metric.update(images, CAPTIONS)
    assert clip_score(per_image) == pytest.approx(float(metric.compute()) / 100, abs=1e-6)
    assert clip_score(torch.tensor([-0.2, 0.1])) == 0.0  # torchmetrics clips the mean at 0
    assert clip_score(torch.tensor([0.3, 0.32])) == pytest.approx(0.31)


def test_captions_must_match_images(tiny_clip):
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        ClipScorer(tiny_clip)(_images(), CAPTIONS[:3])


def test_missing_clip_dir_names_the_hub_id_and_key(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        ClipScorer(tmp_path / "clip-vit-large-patch14")
    msg = str(err.value)
    assert "clip-vit-large-patch14" in msg and CLIP_HF_ID in msg and "eval.clip_path" in msg
    assert "allow_download" in msg


def test_no_private_torchmetrics_api():
    import inspect

    import wadi.metrics.clip as clip

    source = inspect.getsource(clip)
    assert (
        "_clip_score_update" not in source
        and "torchmetrics.functional.multimodal.clip_score import _" not in source
    )


def test_each_score_equals_clipscore_on_that_image_alone(tiny_clip):
    """Per image, the public CLIPScore's accumulated (unclipped) sum over that one image, / 100; a long
    caption is cut as CLIPScore cuts it."""
    scorer = ClipScorer(tiny_clip, batch_size=3)
    images = _images(5, seed=2)
    captions = [*CAPTIONS, "a very long caption " * 30]
    ours = scorer(images, captions)
    metric = scorer.metric
    for i, caption in enumerate(captions):
        metric.reset()
        metric.update(images[i : i + 1], [caption])
        assert float(ours[i]) == pytest.approx(float(metric.score) / 100, abs=1e-6), i
