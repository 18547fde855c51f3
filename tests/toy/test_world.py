"""The toy world: determinism, caption grammar, labels, layout and rendering."""

from __future__ import annotations

import itertools

import pytest
import torch

from wadi.toy.world import (
    COLORS,
    HELDOUT_SEEDS,
    NO_LABEL,
    NONE_SHAPE,
    PALETTE,
    POSITIONS,
    RADIUS,
    SCALE_JITTER,
    SHAPES,
    SIZES,
    SLOT_CENTERS,
    TRAIN_SEEDS,
    ToyObject,
    ToyScene,
    ToyWorldDataset,
    caption,
    parse_caption,
    render,
    sample_scene,
    sample_seeds,
    scene_labels,
    stack_labels,
    toy_prompts,
)

SEEDS = list(range(400)) + [HELDOUT_SEEDS[0], HELDOUT_SEEDS[-1], 2**31 - 1]


def test_api_sizes():
    assert len(SHAPES) >= 5 and len(COLORS) >= 6 and SIZES == ("small", "large")
    assert POSITIONS == ("left", "right", "top", "bottom", "center")


def test_same_seed_same_scene_image_and_caption():
    a, b = sample_scene(1234), sample_scene(1234)
    assert a == b and caption(a) == caption(b)
    assert torch.equal(render([a]), render([b]))
    assert sample_scene(1234) != sample_scene(1235)


def test_rendering_is_batch_independent():
    scenes = [sample_scene(s) for s in range(6)]
    together = render(scenes, chunk=4)
    alone = torch.cat([render([s]) for s in scenes])
    assert torch.allclose(together, alone, atol=1e-6)


def test_caption_round_trip_and_layout_over_many_seeds():
    counts, shapes, colors = set(), set(), set()
    for seed in SEEDS:
        scene = sample_scene(seed)
        text = caption(scene)
        assert parse_caption(text).attributes == scene.attributes, text
        slots = [POSITIONS.index(o.position) for o in scene.objects]
        assert slots == sorted(set(slots)), text  # distinct and ordered
        counts.add(len(scene.objects))
        shapes.update(o.shape for o in scene.objects)
        colors.update(o.color for o in scene.objects)
    assert counts == {1, 2, 3} and shapes == set(SHAPES) and colors == set(COLORS)


def test_caption_grammar():
    scene = ToyScene(
        (ToyObject("circle", "red", "large", "left"), ToyObject("square", "blue", "small", "top"))
    )
    assert caption(scene) == "a large red circle at the left and a small blue square at the top"
    # any order, case and spacing parse to the same ordered scene
    again = parse_caption("  A small BLUE square at the top   and a large red circle at the left ")
    assert again.attributes == scene.attributes


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "a huge red circle at the left",
        "a large red circle",
        "a large red circle at the left and a small blue square at the left",
        " and ".join(f"a small red circle at the {p}" for p in POSITIONS[:4]),
        "a large red circle at the left, a small blue square at the top",
    ],
)
def test_bad_caption_raises_naming_it(bad):
    with pytest.raises(ValueError) as err:
        parse_caption(bad)
    assert repr(bad) in str(err.value)


def test_bad_attribute_raises():
    with pytest.raises(ValueError, match="shape='hexagon'"):
        ToyObject("hexagon", "red", "large", "left")
    with pytest.raises(ValueError, match="distinct positions"):
        ToyScene((ToyObject("circle", "red", "large", "top"), ToyObject("star", "red", "large", "left")))


def test_labels_consistent_with_caption():
    for seed in SEEDS[:100]:
        scene = sample_scene(seed)
        labels = scene_labels(scene)
        from_caption = scene_labels(parse_caption(caption(scene)))
        assert all(torch.equal(labels[k], from_caption[k]) for k in labels)
        occupied = {POSITIONS.index(o.position): o for o in scene.objects}
        for slot in range(len(POSITIONS)):
            if slot in occupied:
                o = occupied[slot]
                assert labels["shape"][slot] == SHAPES.index(o.shape)
                assert labels["color"][slot] == COLORS.index(o.color)
                assert labels["size"][slot] == SIZES.index(o.size)
            else:
                assert labels["shape"][slot] == NONE_SHAPE
                assert labels["color"][slot] == labels["size"][slot] == NO_LABEL
    stacked = stack_labels([sample_scene(s) for s in range(5)])
    assert stacked["shape"].shape == (5, len(POSITIONS)) and stacked["shape"].dtype == torch.long


def test_render_shape_and_range():
    scenes = [sample_scene(s) for s in range(16)]
    images = render(scenes)
    assert images.shape == (16, 3, 64, 64) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert render(scenes[:2], resolution=32).shape == (2, 3, 32, 32)
    assert render([]).shape == (0, 3, 64, 64)


def _pixel(image, x, y):
    """The pixel whose centre is nearest to (x, y) in image widths."""
    r = image.shape[-1]
    return image[:, round(y * r - 0.5), round(x * r - 0.5)]


def test_objects_drawn_in_their_slot_with_their_colour():
    """An object's centre shows its colour; empty slots show the background, not a palette colour."""
    for seed in range(60):
        scene = sample_scene(seed)
        image = (render([scene])[0] + 1) / 2
        taken = {o.position: o for o in scene.objects}
        for position, centre in SLOT_CENTERS.items():
            if position in taken:
                px = _pixel(image, centre[0] + taken[position].dx, centre[1] + taken[position].dy)
                assert torch.allclose(px, torch.tensor(taken[position].rgb), atol=0.02), (seed, position)
            else:
                px = _pixel(image, *centre)
                nearest = min(torch.dist(px, torch.tensor(c)) for c in PALETTE.values())
                assert nearest > 0.3, (seed, position)


def _mask(obj, threshold=0.05):
    """Pixels where a white `obj` changes the default background by more than `threshold` of the contrast."""
    image = render([ToyScene((obj,))])[0]
    bg = render([ToyScene((ToyObject("circle", "red", "small", "left", dx=-1.0),))])[0]  # circle off-image
    diff = (image - bg).abs().amax(0)
    return diff > threshold * diff.max()


def test_small_and_large_clearly_different():
    for shape in SHAPES:
        lo, hi = SCALE_JITTER
        biggest_small = _mask(ToyObject(shape, "white", "small", "center", scale=hi), 0.5).sum()
        smallest_large = _mask(ToyObject(shape, "white", "large", "center", scale=lo), 0.5).sum()
        assert smallest_large > 2.2 * biggest_small, shape
    assert RADIUS["large"] * SCALE_JITTER[0] > 1.5 * RADIUS["small"] * SCALE_JITTER[1]


def test_neighbouring_objects_barely_overlap():
    """Worst case: two large objects at the maximum scale, jittered towards each other."""
    hi = SCALE_JITTER[1]
    pairs = [("left", "center"), ("top", "center"), ("left", "top")]
    for shape, other, (a, b) in itertools.product(SHAPES, SHAPES, pairs):
        sa, sb = SLOT_CENTERS[a], SLOT_CENTERS[b]
        step = 1.0 / 64
        toward = [(step if sb[i] > sa[i] else -step if sb[i] < sa[i] else 0.0) for i in range(2)]
        oa = ToyObject(shape, "white", "large", a, dx=toward[0], dy=toward[1], scale=hi)
        ob = ToyObject(other, "white", "large", b, dx=-toward[0], dy=-toward[1], scale=hi)
        assert (_mask(oa) & _mask(ob)).sum() <= 8, (shape, other, a, b)  # anti-aliased rims only


def test_seed_splits_disjoint_and_respected():
    assert TRAIN_SEEDS.stop <= HELDOUT_SEEDS.start and len(HELDOUT_SEEDS) == 10**6
    assert all(s in HELDOUT_SEEDS for s in sample_seeds(200, seed=3, split="heldout"))
    assert all(s in TRAIN_SEEDS for s in sample_seeds(200, seed=3, split="train"))
    with pytest.raises(ValueError, match="'test'"):
        sample_seeds(1, split="test")


def test_toy_prompts_reproducible_streams():
    a = toy_prompts(50, seed=0)
    assert a == toy_prompts(50, seed=0) and a[:10] == toy_prompts(10, seed=0)
    assert a != toy_prompts(50, seed=1)
    assert len(set(a)) > 40  # unlimited prompts: a short stream barely repeats
    for p in a + toy_prompts(20, split="heldout"):
        parse_caption(p)


def test_dataset_items():
    ds = ToyWorldDataset("heldout", size=8)
    item = ds[3]
    scene = sample_scene(HELDOUT_SEEDS[3])
    assert item["caption"] == caption(scene)
    assert torch.equal(item["image"], render([scene])[0])
    assert torch.equal(item["labels"]["shape"], scene_labels(scene)["shape"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["labels"]["color"].shape == (4, 5)
    assert ToyWorldDataset("train", size=4)[0]["caption"] == caption(sample_scene(0))
    with pytest.raises(IndexError):
        ds[8]
    with pytest.raises(ValueError, match="'val'"):
        ToyWorldDataset("val", size=4)
