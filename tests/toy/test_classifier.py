"""The toy attribute classifier: layout of its outputs, loss masking, save/load, and a training smoke test."""

from __future__ import annotations

import pytest
import torch

from wadi.toy.classifier import (
    ToyClassifier,
    classifier_loss,
    load_classifier,
    num_parameters,
    save_classifier,
    scene_correct,
    train_classifier,
)
from wadi.toy.world import COLORS, NO_LABEL, NONE_SHAPE, POSITIONS, SHAPES, render, sample_scene, stack_labels


@pytest.fixture(scope="module")
def batch():
    scenes = [sample_scene(s) for s in range(16)]
    return render(scenes), stack_labels(scenes)


def test_size_budget(tmp_path):
    model = ToyClassifier()
    assert num_parameters(model) < 1_000_000
    save_classifier(model, tmp_path)
    assert (tmp_path / "classifier.safetensors").stat().st_size <= 2 * 1024**2


def test_output_layout(batch):
    images, _ = batch
    model = ToyClassifier().eval()
    logits = model(images)
    assert logits["shape"].shape == (16, len(POSITIONS), len(SHAPES) + 1)
    assert logits["color"].shape == (16, len(POSITIONS), len(COLORS))
    assert logits["size"].shape == (16, len(POSITIONS), 2)
    assert model.features(images).shape == (16, model.num_features)
    with pytest.raises(ValueError, match=r"\(N, 3, 64, 64\)"):
        model(images[:, :, :32, :32])


def test_predict_marks_empty_slots():
    model = ToyClassifier().eval()
    with torch.no_grad():
        head = model.heads["shape"]
        head.weight.zero_()
        bias = torch.zeros(len(POSITIONS), len(SHAPES) + 1)
        bias[:, NONE_SHAPE] = 10.0  # every slot empty ...
        bias[2, 1] = 20.0  # ... except a square at the top
        head.bias.copy_(bias.flatten())
    pred = model.predict(torch.zeros(3, 3, 64, 64), batch_size=2)
    expected = torch.full((3, len(POSITIONS)), NONE_SHAPE)
    expected[:, 2] = 1
    assert torch.equal(pred["shape"], expected)
    assert (pred["color"][:, [0, 1, 3, 4]] == NO_LABEL).all() and (pred["color"][:, 2] != NO_LABEL).all()
    assert (pred["size"][:, 2] != NO_LABEL).all()


def test_loss_ignores_colour_and_size_of_empty_slots(batch):
    images, labels = batch
    model = ToyClassifier()
    logits = model(images)
    empty = labels["shape"] == NONE_SHAPE
    assert empty.any()
    changed = {k: v.clone() for k, v in logits.items()}
    changed["color"][empty] += torch.randn_like(changed["color"][empty]) * 5
    assert torch.allclose(classifier_loss(logits, labels), classifier_loss(changed, labels))
    changed["color"][~empty] += 5 * torch.randn_like(changed["color"][~empty])
    assert not torch.allclose(classifier_loss(logits, labels), classifier_loss(changed, labels))


def test_scene_correct_by_construction():
    labels = stack_labels([sample_scene(s) for s in range(4)])
    pred = {k: v.clone() for k, v in labels.items()}
    assert scene_correct(pred, labels).all()
    occupied = (labels["shape"][1] != NONE_SHAPE).nonzero()[0, 0]
    pred["color"][1, occupied] = (labels["color"][1, occupied] + 1) % len(COLORS)
    pred["shape"][3, :] = NONE_SHAPE
    assert scene_correct(pred, labels).tolist() == [True, False, True, False]


def test_loss_falls_in_a_few_steps(batch):
    images, labels = batch
    torch.manual_seed(0)
    model = ToyClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = classifier_loss(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_train_classifier_runs_end_to_end():
    model = train_classifier(steps=2, batch_size=8, device="cpu", eval_size=8, log_every=0)
    assert not model.training
    assert set(model.heldout_metrics) >= {
        "scene_accuracy",
        "shape_accuracy",
        "color_accuracy",
        "size_accuracy",
    }


def test_save_load_round_trip(tmp_path, batch):
    images, _ = batch
    model = ToyClassifier().eval()
    model.heldout_metrics = {"scene_accuracy": 0.5}
    save_classifier(model, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf")
    assert loaded.heldout_metrics == {"scene_accuracy": 0.5}
    with torch.no_grad():
        assert torch.allclose(model.features(images), loaded.features(images), atol=2e-2)


def test_missing_or_corrupt_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="classifier.json"):
        load_classifier(tmp_path / "nowhere")
    save_classifier(ToyClassifier(), tmp_path)
    weights = tmp_path / "classifier.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="classifier.safetensors"):
        load_classifier(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="classifier.safetensors"):
        load_classifier(tmp_path)
    save_classifier(ToyClassifier(), tmp_path)
    (tmp_path / "classifier.json").write_text("{not json")
    with pytest.raises(ValueError, match="classifier.json"):
        load_classifier(tmp_path)
