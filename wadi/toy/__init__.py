"""The toy world shipped with wadi: procedural captioned images (world), an attribute classifier that judges
them (classifier), and the toy teachers built on top (see wadi.toy.pretrain)."""

from wadi.toy.world import (
    COLORS,
    HELDOUT_SEEDS,
    POSITIONS,
    SHAPES,
    SIZES,
    TRAIN_SEEDS,
    ToyObject,
    ToyScene,
    ToyWorldDataset,
    caption,
    parse_caption,
    render,
    sample_scene,
    scene_labels,
    toy_prompts,
)

__all__ = [
    "COLORS",
    "HELDOUT_SEEDS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "TRAIN_SEEDS",
    "ToyObject",
    "ToyScene",
    "ToyWorldDataset",
    "caption",
    "parse_caption",
    "render",
    "sample_scene",
    "scene_labels",
    "toy_prompts",
]
