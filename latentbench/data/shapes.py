"""``shapes`` / ``shapes:<n_train>:<n_val>``: procedurally drawn, labeled colour images at any resolution.

Ten classes, one shape per image: circle, square, triangle, diamond (a rhombus, narrower
than it is tall), star (5 points), cross, ring, hexagon, ellipse, crescent. Each image has a
random shape colour, centre, size and rotation, on a textured background: a linear gradient
between two random colours plus one of nothing, stripes, a soft checkerboard or smooth
noise. Image ``i`` of a split is drawn from ``np.random.default_rng([SPLIT_SEEDS[split], i])``,
so it does not depend on batch size, workers or resolution (the scene is laid out in units
of the image side; only the pixel grid changes). Label = ``i % 10``, so the classes are
balanced. Images are drawn on access (about 5 ms each at 256x256 on one core): the mask is drawn with
PIL ImageDraw at 2x and box-downsampled for anti-aliasing. Defaults: 5,000 train, 1,000 val.
"""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from latentbench.data.info import SplitNotFoundError, content_fingerprint, dataset_info
from latentbench.data.transforms import to_tensor

SHAPE_CLASSES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon", "ellipse", "crescent")
SPLIT_SEEDS = {"train": 0, "val": 1}
DEFAULT_SIZES = {"train": 5000, "val": 1000}
GENERATOR_VERSION = "shapes-v1"  # bump whenever the drawing code changes: it defines the content
SUPERSAMPLE = 2
N_PROBE = 4  # images rendered into the fingerprint, to catch drawing changes across library versions


def _ngon(n: int, radius: float = 1.0, aspect: float = 1.0, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """(n, 2) vertices of a regular n-gon (or an ellipse for large n) inside the unit circle."""
    t = 2 * np.pi * np.arange(n) / n + np.pi / 2
    return np.stack([radius * aspect * np.cos(t) + offset[0], radius * np.sin(t) + offset[1]], axis=1)


def _star() -> np.ndarray:
    """(10, 2) vertices of a five-pointed star."""
    radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    t = 2 * np.pi * np.arange(10) / 10 + np.pi / 2
    return np.stack([radii * np.cos(t), radii * np.sin(t)], axis=1)


def _cross(half_width: float = 0.3) -> np.ndarray:
    """(12, 2) vertices of a plus sign with arms of half-width ``half_width``, reach 0.95."""
    a, w = 0.95, half_width
    return np.array([(w, a), (w, w), (a, w), (a, -w), (w, -w), (w, -a),
                     (-w, -a), (-w, -w), (-a, -w), (-a, w), (-w, w), (-w, a)])


# Each class: (filled polygons, hole polygons) in unit coordinates (inside the unit circle).
SHAPES = {
    "circle": ([_ngon(64)], []),
    "square": ([_ngon(4)], []),
    "triangle": ([_ngon(3)], []),
    "diamond": ([np.array([(0, 1), (0.55, 0), (0, -1), (-0.55, 0)])], []),
    "star": ([_star()], []),
    "cross": ([_cross()], []),
    "ring": ([_ngon(64)], [_ngon(64, radius=0.55)]),
    "hexagon": ([_ngon(6)], []),
    "ellipse": ([_ngon(64, aspect=0.55)], []),
    "crescent": ([_ngon(64)], [_ngon(64, radius=0.85, offset=(0.45, 0.1))]),
}


@functools.lru_cache(maxsize=8)
def _coords(resolution: int) -> np.ndarray:
    """(R,) float32 pixel-centre coordinates in units of the image side, centred on 0."""
    return (np.arange(resolution, dtype=np.float32) + 0.5) / resolution - 0.5


def _background(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """(R, R, 3) uint8 background: a two-colour gradient plus a random luminance texture."""
    c = _coords(resolution)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    # Python floats (math.cos) keep the arrays float32; numpy float64 scalars would promote them.
    t = np.clip(c[None, :] * math.cos(angle) + c[:, None] * math.sin(angle) + 0.5, 0, 1)  # (R, R)
    image = t[:, :, None] * (c1 - c0) + c0  # (R, R, 3)
    image += _texture(rng, c)[:, :, None]
    np.clip(image, 0, 255, out=image)
    return (image + 0.5).astype(np.uint8)


def _texture(rng: np.random.Generator, c: np.ndarray) -> np.ndarray:
    """(R, R) float32 luminance texture: none, stripes, soft checkerboard or smooth noise."""
    kind = rng.integers(4)
    amplitude, freq = rng.uniform(10, 40), rng.uniform(3, 10)
    phase, angle = (float(v) for v in rng.uniform(0, 2 * np.pi, 2))  # Python floats: stay float32
    if kind == 1:  # sin(a x + b y + p) = sin(a x + p) cos(b y) + cos(a x + p) sin(b y): two outer products
        ax, by = 2 * np.pi * freq * math.cos(angle) * c + phase, 2 * np.pi * freq * math.sin(angle) * c
        return amplitude * (np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax)))
    if kind == 2:
        waves = np.outer(np.sin(2 * np.pi * freq * c), np.sin(2 * np.pi * freq * c + phase))
        return amplitude * np.tanh(4 * waves)
    if kind == 3:
        coarse = Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32))
        return amplitude * np.asarray(coarse.resize((len(c), len(c)), resample=Image.BICUBIC))
    return np.zeros((len(c), len(c)), dtype=np.float32)


def _mask(rng: np.random.Generator, shape: str, resolution: int) -> Image.Image:
    """Mode "L" anti-aliased coverage mask of a randomly placed, scaled and rotated shape."""
    radius = rng.uniform(0.18, 0.32)
    centre = rng.uniform(radius + 0.03, 1 - radius - 0.03, 2)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    side = resolution * SUPERSAMPLE
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    fills, holes = SHAPES[shape]
    for polygon, value in [(p, 255) for p in fills] + [(p, 0) for p in holes]:
        points = (polygon @ rot.T * radius + centre) * side  # (V, 2) in supersampled pixels
        draw.polygon([tuple(p) for p in points], fill=value)
    return canvas.reduce(SUPERSAMPLE)


def render_shape_image(split_seed: int, index: int, resolution: int) -> np.ndarray:
    """Draw image ``index`` of the split seeded ``split_seed``, of class SHAPE_CLASSES[index % 10].

    Args:
        split_seed: the split's entry in SPLIT_SEEDS.
        index: image index within the split.
        resolution: side length in pixels.

    Returns:
        uint8 array (resolution, resolution, 3).
    """
    rng = np.random.default_rng([split_seed, index])
    background = _background(rng, resolution)
    colour = rng.uniform(0, 255, 3)
    if np.abs(colour - background.mean(axis=(0, 1))).sum() < 150:  # keep the shape visible
        colour = 255 - colour
    mask = _mask(rng, SHAPE_CLASSES[index % len(SHAPE_CLASSES)], resolution)
    fill = Image.new("RGB", mask.size, tuple(int(round(v)) for v in colour))
    return np.asarray(Image.composite(fill, Image.fromarray(background), mask))


class ShapesDataset(Dataset):
    """One split of the procedural shapes; ``ds[i]`` is ``(x, y)`` with x (3, R, R) in [-1, 1]."""

    def __init__(self, source: str, split: str, resolution: int, size: int, limit: int | None = None):
        """Describe ``size`` images of ``split`` (the first ``limit`` of them if given) in ``info``."""
        if split not in SPLIT_SEEDS:
            raise SplitNotFoundError("shapes", split, list(SPLIT_SEEDS))
        self.seed = SPLIT_SEEDS[split]
        self.resolution = resolution
        self.n = size if limit is None else min(size, limit)
        self.targets = [i % len(SHAPE_CLASSES) for i in range(self.n)]
        self.info = dataset_info(
            source, split, resolution, n=self.n, class_names=list(SHAPE_CLASSES), fingerprint=self._fingerprint(split),
            preprocessing=GENERATOR_VERSION, limit=limit, split_seed=self.seed,
        )

    def _fingerprint(self, split: str) -> str:
        """Hash of the generator version, the seeds of every image and a few rendered images."""
        probes = [render_shape_image(self.seed, i, self.resolution).tobytes() for i in range(min(self.n, N_PROBE))]
        seeds = (f"{GENERATOR_VERSION}:{self.seed}:{i}".encode() for i in range(self.n))
        return content_fingerprint(
            (hashlib.sha256(s).digest() for s in seeds), self.targets, split=split, resolution=self.resolution,
            preprocessing=GENERATOR_VERSION, class_names=SHAPE_CLASSES,
            extra={"probe_sha256": hashlib.sha256(b"".join(probes)).hexdigest()},
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} images")
        return to_tensor(render_shape_image(self.seed, i, self.resolution)), self.targets[i]
