"""The procedural toy world: captioned 64x64 scenes of 1-3 coloured shapes, deterministic from a seed.

Why: nothing can be downloaded here, so wadi ships a miniature world whose captions fully determine the
attributes of an image. Teachers learn it, students are distilled on its prompts, and an attribute
classifier judges whether a generated image matches its prompt.

Layout (image coordinates in [0, 1], x to the right, y down): five position slots on a plus sign,
``center`` at (0.5, 0.5) and the others SLOT_OFFSET away. Every object sits in its own slot with a small
jitter of position, scale, rotation and colour shade, so the distribution is continuous but the caption
stays unambiguous: "small" and "large" differ by ~1.8x in radius, slots never swap, shades stay far from
the other palette colours, and backgrounds are dark and desaturated so every object colour stands out.

Seeds: TRAIN_SEEDS = [0, 2**31) and HELDOUT_SEEDS = [2**31, 2**31 + 10**6) are disjoint; evaluation uses
held-out seeds only (the scene of a seed is the same on every machine: it comes from Python's
``random.Random(seed)``).
"""

from __future__ import annotations

import colorsys
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
COLORS: tuple[str, ...] = ("red", "yellow", "green", "blue", "purple", "white")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")

NONE_SHAPE = len(SHAPES)  # the shape label of an empty position slot
NO_LABEL = -100  # colour/size label of an empty slot; torch's cross-entropy ignore_index

TRAIN_SEEDS = range(0, 2**31)
HELDOUT_SEEDS = range(2**31, 2**31 + 10**6)
SPLITS = {"train": TRAIN_SEEDS, "heldout": HELDOUT_SEEDS}

PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.12, 0.10),
    "yellow": (0.95, 0.85, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.12, 0.30, 0.95),
    "purple": (0.62, 0.18, 0.85),
    "white": (0.95, 0.95, 0.95),
}
SLOT_OFFSET = 20.5 / 64  # centre-to-centre distance of neighbouring slots
SLOT_CENTERS: dict[str, tuple[float, float]] = {
    "left": (0.5 - SLOT_OFFSET, 0.5),
    "right": (0.5 + SLOT_OFFSET, 0.5),
    "top": (0.5, 0.5 - SLOT_OFFSET),
    "bottom": (0.5, 0.5 + SLOT_OFFSET),
    "center": (0.5, 0.5),
}
RADIUS = {"small": 5.0 / 64, "large": 9.0 / 64}  # nominal radius; jitter keeps them >= 1.6x apart
MAX_OBJECTS = 3

# jitter ranges: small enough that a human never hesitates about an attribute
POSITION_JITTER = 1.0 / 64
SCALE_JITTER = (0.93, 1.06)
ROTATION_JITTER = math.radians(12)
BRIGHTNESS_JITTER = (0.88, 1.05)
TINT_JITTER = 0.04


@dataclass(frozen=True)
class ToyObject:
    """One object: the four captioned attributes plus its (uncaptioned) jitter."""

    shape: str
    color: str
    size: str
    position: str
    dx: float = 0.0  # offset from the slot centre, in image widths
    dy: float = 0.0
    scale: float = 1.0  # multiplies RADIUS[size]
    rotation: float = 0.0  # radians, counter-clockwise
    brightness: float = 1.0  # multiplies the palette colour
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the palette colour

    def __post_init__(self):
        for name, value, allowed in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, COLORS),
            ("size", self.size, SIZES),
            ("position", self.position, POSITIONS),
        ):
            if value not in allowed:
                raise ValueError(f"ToyObject.{name}={value!r}; expected one of {allowed}")

    @property
    def attributes(self) -> tuple[str, str, str, str]:
        """What the caption says about this object: (shape, color, size, position)."""
        return (self.shape, self.color, self.size, self.position)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return tuple(
            min(1.0, max(0.0, c * self.brightness + t)) for c, t in zip(PALETTE[self.color], self.tint)
        )


@dataclass(frozen=True)
class Background:
    """A plain colour (color_b == color_a) or a linear gradient from color_a to color_b along `angle`."""

    color_a: tuple[float, float, float] = (0.2, 0.2, 0.2)
    color_b: tuple[float, float, float] = (0.2, 0.2, 0.2)
    angle: float = 0.0  # gradient direction, radians; image x axis = 0

    @property
    def kind(self) -> str:
        return "plain" if self.color_a == self.color_b else "gradient"


@dataclass(frozen=True)
class ToyScene:
    """1-3 objects at distinct position slots, ordered by POSITIONS index, on a background."""

    objects: tuple[ToyObject, ...]
    background: Background = Background()

    def __post_init__(self):
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"ToyScene needs 1-{MAX_OBJECTS} objects, got {len(self.objects)}")
        slots = [POSITIONS.index(o.position) for o in self.objects]
        if slots != sorted(set(slots)):
            raise ValueError(
                f"ToyScene objects must sit at distinct positions ordered as {POSITIONS}, "
                f"got {[o.position for o in self.objects]}"
            )

    @property
    def attributes(self) -> tuple[tuple[str, str, str, str], ...]:
        return tuple(o.attributes for o in self.objects)


def _muted_color(rng: random.Random) -> tuple[float, float, float]:
    """Dark, desaturated colours: every palette colour (white included) stands out against them."""
    return colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.08, 0.38))


def sample_jitter(rng: random.Random) -> dict[str, object]:
    """One object's pose and appearance jitter (ToyObject fields), drawn from `rng` in a fixed order."""
    return {
        "dx": rng.uniform(-POSITION_JITTER, POSITION_JITTER),
        "dy": rng.uniform(-POSITION_JITTER, POSITION_JITTER),
        "scale": rng.uniform(*SCALE_JITTER),
        "rotation": rng.uniform(-ROTATION_JITTER, ROTATION_JITTER),
        "brightness": rng.uniform(*BRIGHTNESS_JITTER),
        "tint": tuple(rng.uniform(-TINT_JITTER, TINT_JITTER) for _ in range(3)),
    }


def sample_scene(seed: int) -> ToyScene:
    """The scene of `seed`; the same on every machine and Python version (random.Random(int))."""
    rng = random.Random(seed)
    n = rng.randint(1, MAX_OBJECTS)
    slots = sorted(rng.sample(range(len(POSITIONS)), n))
    objects = tuple(
        ToyObject(
            shape=rng.choice(SHAPES),
            color=rng.choice(COLORS),
            size=rng.choice(SIZES),
            position=POSITIONS[slot],
            **sample_jitter(rng),  # after shape, colour, size: the draw order fixes every seed's scene
        )
        for slot in slots
    )
    color_a = _muted_color(rng)
    gradient = rng.random() < 0.5
    color_b = _muted_color(rng) if gradient else color_a
    angle = rng.uniform(0.0, 2 * math.pi) if gradient else 0.0
    return ToyScene(objects, Background(color_a, color_b, angle))


# ---------------------------------------------------------------------------------------------------------
# captions


def caption(scene: ToyScene) -> str:
    """'a large red circle at the left and a small blue square at the top' (objects in POSITIONS order)."""
    return " and ".join(f"a {o.size} {o.color} {o.shape} at the {o.position}" for o in scene.objects)


_OBJECT_RE = re.compile(
    rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) at the ({'|'.join(POSITIONS)})"
)


def parse_caption(text: str) -> ToyScene:
    """Inverse of `caption` for the objects: a ToyScene without jitter on the default background.

    Accepts any object order, case and spacing; raises ValueError naming the text if it is not a caption
    of the toy grammar (unknown words, repeated positions, more than three objects).
    """
    if not isinstance(text, str):
        raise ValueError(f"toy caption must be a string, got {type(text).__name__}: {text!r}")
    parts = " ".join(text.lower().split()).split(" and ")
    matches = [_OBJECT_RE.fullmatch(p) for p in parts]
    bad = [p for p, m in zip(parts, matches) if m is None]
    if bad:
        raise ValueError(
            f"not a toy caption: {text!r} (cannot parse {bad[0]!r}; expected "
            f"'a <size> <color> <shape> at the <position>' joined by ' and ')"
        )
    objects = sorted(
        (ToyObject(shape=m[3], color=m[2], size=m[1], position=m[4]) for m in matches),
        key=lambda o: POSITIONS.index(o.position),
    )
    try:
        return ToyScene(tuple(objects))
    except ValueError as err:
        raise ValueError(f"not a toy caption: {text!r} ({err})") from None


# ---------------------------------------------------------------------------------------------------------
# labels


def scene_labels(scene: ToyScene) -> dict[str, Tensor]:
    """Per POSITIONS slot: 'shape' (NONE_SHAPE where empty), 'color' and 'size' (NO_LABEL where empty).

    Each value is a LongTensor of shape (len(POSITIONS),).
    """
    shape = [NONE_SHAPE] * len(POSITIONS)
    color = [NO_LABEL] * len(POSITIONS)
    size = [NO_LABEL] * len(POSITIONS)
    for o in scene.objects:
        slot = POSITIONS.index(o.position)
        shape[slot] = SHAPES.index(o.shape)
        color[slot] = COLORS.index(o.color)
        size[slot] = SIZES.index(o.size)
    return {"shape": torch.tensor(shape), "color": torch.tensor(color), "size": torch.tensor(size)}


def stack_labels(scenes: Sequence[ToyScene]) -> dict[str, Tensor]:
    """scene_labels of many scenes: each value (N, len(POSITIONS))."""
    per = [scene_labels(s) for s in scenes]
    return {k: torch.stack([p[k] for p in per]) for k in ("shape", "color", "size")}


# ---------------------------------------------------------------------------------------------------------
# rendering: signed distances on a pixel grid, one anti-aliased pixel at every edge


def _sd_box(x: Tensor, y: Tensor, bx: float, by: float) -> Tensor:
    qx, qy = x.abs() - bx, y.abs() - by
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0)


def _sd_circle(x: Tensor, y: Tensor) -> Tensor:
    return torch.sqrt(x * x + y * y) - 0.92


def _sd_square(x: Tensor, y: Tensor) -> Tensor:
    return _sd_box(x, y, 0.8, 0.8)


def _sd_triangle(x: Tensor, y: Tensor) -> Tensor:
    """Equilateral triangle, apex up, circumradius 1.1 (Inigo Quilez, sdEquilateralTriangle)."""
    k = math.sqrt(3.0)
    r = 1.1 * k / 2  # half the side length
    x = x.abs() - r
    y = y + r / k
    fold = x + k * y > 0
    x, y = torch.where(fold, (x - k * y) / 2, x), torch.where(fold, (-k * x - y) / 2, y)
    x = x - x.clamp(-2 * r, 0)
    return -torch.sqrt(x * x + y * y) * torch.sign(y)


def _sd_star(x: Tensor, y: Tensor) -> Tensor:
    """Five-pointed star, point up, outer radius 1.1 (Inigo Quilez, sdStar5)."""
    r, rf = 1.1, 0.45
    k1x, k1y = 0.809016994375, -0.587785252292
    k2x = -k1x
    x = x.abs()
    d = (k1x * x + k1y * y).clamp(min=0)
    x, y = x - 2 * d * k1x, y - 2 * d * k1y
    d = (k2x * x + k1y * y).clamp(min=0)
    x, y = x - 2 * d * k2x, y - 2 * d * k1y
    x = x.abs()
    y = y - r
    bax, bay = -rf * k1y, rf * k1x - 1.0
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(0, r)
    px, py = x - bax * h, y - bay * h
    return torch.sqrt(px * px + py * py) * torch.sign(y * bax - x * bay)


def _sd_cross(x: Tensor, y: Tensor) -> Tensor:
    return torch.minimum(_sd_box(x, y, 0.95, 0.32), _sd_box(x, y, 0.32, 0.95))


# unit-radius signed distances, y axis pointing up; indexed like SHAPES
_SDF = (_sd_circle, _sd_square, _sd_triangle, _sd_star, _sd_cross)


@dataclass
class PackedScenes:
    """Scenes as tensors, so rendering is a handful of batched tensor ops.

    bg: (N, 3, 3) rows color_a, color_b, (cos, sin, 0) of the gradient; objects padded to MAX_OBJECTS:
    shape (N, K) long (-1 where absent), geometry (N, K, 5) = cx, cy, radius, cos, sin; rgb (N, K, 3).
    """

    bg: Tensor
    shape: Tensor
    geometry: Tensor
    rgb: Tensor

    def to(self, device) -> PackedScenes:
        return PackedScenes(*(t.to(device) for t in (self.bg, self.shape, self.geometry, self.rgb)))

    def __getitem__(self, idx) -> PackedScenes:
        return PackedScenes(self.bg[idx], self.shape[idx], self.geometry[idx], self.rgb[idx])

    def __len__(self) -> int:
        return self.shape.shape[0]


def pack(scenes: Sequence[ToyScene]) -> PackedScenes:
    bg, shape, geometry, rgb = [], [], [], []
    for s in scenes:
        b = s.background
        bg.append([b.color_a, b.color_b, (math.cos(b.angle), math.sin(b.angle), 0.0)])
        sh, ge, co = [-1] * MAX_OBJECTS, [[0.0] * 5] * MAX_OBJECTS, [[0.0] * 3] * MAX_OBJECTS
        for k, o in enumerate(s.objects):
            cx, cy = SLOT_CENTERS[o.position]
            sh[k] = SHAPES.index(o.shape)
            ge[k] = [
                cx + o.dx,
                cy + o.dy,
                RADIUS[o.size] * o.scale,
                math.cos(o.rotation),
                math.sin(o.rotation),
            ]
            co[k] = o.rgb
        shape.append(sh)
        geometry.append(ge)
        rgb.append(co)
    return PackedScenes(
        torch.tensor(bg, dtype=torch.float32),
        torch.tensor(shape, dtype=torch.long),
        torch.tensor(geometry, dtype=torch.float32),
        torch.tensor(rgb, dtype=torch.float32),
    )


def render_packed(packed: PackedScenes, resolution: int = 64) -> Tensor:
    """(N, 3, R, R) in [-1, 1] on packed.bg.device. Objects are alpha-composited over the background."""
    device = packed.bg.device
    n, k = packed.shape.shape
    R = resolution
    coords = (torch.arange(R, device=device, dtype=torch.float32) + 0.5) / R  # pixel centres
    gy, gx = coords.view(1, R, 1), coords.view(1, 1, R)

    proj = (gx - 0.5) * packed.bg[:, 2, 0, None, None] + (gy - 0.5) * packed.bg[:, 2, 1, None, None]
    t = (0.5 + proj).clamp(0, 1).unsqueeze(1)  # (N, 1, R, R)
    color_a, color_b = packed.bg[:, 0, :, None, None], packed.bg[:, 1, :, None, None]
    image = color_a + (color_b - color_a) * t  # (N, 3, R, R)

    flat_shape = packed.shape.reshape(-1)
    geo = packed.geometry.reshape(-1, 5)
    alpha = torch.zeros(n * k, R, R, device=device)
    for s, sdf in enumerate(_SDF):
        idx = (flat_shape == s).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        cx, cy, r, cos, sin = (geo[idx, j, None, None] for j in range(5))
        # object frame: unit radius, y up, rotated by -rotation
        u, v = (gx - cx) / r, (cy - gy) / r
        x, y = cos * u + sin * v, -sin * u + cos * v
        dist = sdf(x, y) * r  # in image widths
        alpha[idx] = (0.5 - dist * R).clamp(0, 1)
    alpha = alpha.view(n, k, 1, R, R)
    for j in range(k):
        a = alpha[:, j]
        image = image * (1 - a) + packed.rgb[:, j, :, None, None] * a
    return image * 2 - 1


def render(
    scenes: Sequence[ToyScene], resolution: int = 64, device: str | torch.device = "cpu", chunk: int = 4096
) -> Tensor:
    """Render scenes to a float (N, 3, R, R) tensor in [-1, 1] on `device`, `chunk` scenes at a time."""
    if len(scenes) == 0:
        return torch.zeros(0, 3, resolution, resolution, device=device)
    packed = pack(scenes).to(device)
    return torch.cat([render_packed(packed[i : i + chunk], resolution) for i in range(0, len(packed), chunk)])


# ---------------------------------------------------------------------------------------------------------
# seeds, prompts, dataset


def _split_seeds(split: str) -> range:
    if split not in SPLITS:
        raise ValueError(f"toy split {split!r}; expected one of {tuple(SPLITS)}")
    return SPLITS[split]


def sample_seeds(n: int, seed: int = 0, split: str = "train") -> list[int]:
    """n scene seeds drawn from `split`'s range by a stream named by (split, seed); reproducible."""
    seeds = _split_seeds(split)
    rng = random.Random(f"wadi-toy:{split}:{seed}")
    return [seeds[rng.randrange(len(seeds))] for _ in range(n)]


def toy_prompts(n: int, seed: int = 0, split: str = "train") -> list[str]:
    """n captions of scenes from `split`; different `seed`s give independent streams (unlimited prompts)."""
    return [caption(sample_scene(s)) for s in sample_seeds(n, seed, split)]


class ToyWorldDataset(torch.utils.data.Dataset):
    """Item i is the scene of seed split_range[i]: {'image': (3, R, R) in [-1, 1], 'caption', 'labels'}.

    'labels' is scene_labels(scene): a dict of (len(POSITIONS),) LongTensors; default collation stacks them.
    """

    def __init__(self, split: str = "train", size: int = 10_000, resolution: int = 64):
        self.seeds = _split_seeds(split)
        if not 0 < size <= len(self.seeds):
            raise ValueError(
                f"ToyWorldDataset size={size}; expected 1..{len(self.seeds)} for split {split!r}"
            )
        self.split, self.size, self.resolution = split, size, resolution

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.size:
            raise IndexError(f"ToyWorldDataset index {i} out of range for size {self.size}")
        scene = sample_scene(self.seeds[i])
        return {
            "image": render([scene], self.resolution)[0],
            "caption": caption(scene),
            "labels": scene_labels(scene),
        }
