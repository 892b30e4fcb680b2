"""The shapes world: one filled, anti-aliased shape on a plain background, every factor known.

Pure numpy, no ComfyUI. A scene is a pure function of (seed, index): the same image on every machine (the
factors come from numpy's PCG64 seeded with [seed, index]; the rendering is elementwise float64 arithmetic).
The demo model is trained on these images and the factor analyser (shapes_analyser) reads them back.

Geometry, in pixels of an image `size` wide (y grows downwards), for centre (cx, cy) and half-extent h:
  circle    radius h
  square    |x - cx| <= h and |y - cy| <= h
  triangle  upright, apex (cx, cy - h), base from (cx - h, cy + h) to (cx + h, cy + h)
  cross     a plus sign: two 2h x 2h/3 bars through the centre
Every shape's bounding box is the square of half-side h around (cx, cy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
}
# Half-extent as a fraction of the image width, drawn uniformly.
SIZE_RANGE = (0.14, 0.28)
# Area of each shape over h^2 (h = half-extent): what the analyser inverts to read the size.
AREA_OVER_H2 = {"circle": np.pi, "square": 4.0, "triangle": 2.0, "cross": 20.0 / 9.0}
# Anti-aliasing: coverage is the mean over SUPERSAMPLE x SUPERSAMPLE points per pixel.
SUPERSAMPLE = 4
# Bumped whenever the images of a (seed, index) change; recorded in the model's metadata.
DATA_VERSION = "shapes-world-1"


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float  # centre, pixels
    cy: float
    half_extent: float  # pixels

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def all_captions() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background), in a fixed order (72 of them)."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in BACKGROUNDS]


def parse_caption(text: str) -> tuple[str, str, str]:
    """(colour, shape, background) of a caption of this world; ValueError for any other text."""
    words = text.strip().split()
    if (len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background"
            or words[1] not in COLOURS or words[2] not in SHAPES or words[5] not in BACKGROUNDS):
        raise ValueError(f"not a shapes-world caption: {text!r}")
    return words[1], words[2], words[5]


def sample_scene(seed: int, index: int, size: int, factors: tuple[str, str, str] | None = None) -> Scene:
    """The scene number `index` of stream `seed`: uniform factors, size and position (shape inside).

    `factors` fixes (colour, shape, background); position and size still come from (seed, index).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    c = rng.integers(len(COLOURS))
    s = rng.integers(len(SHAPES))
    b = rng.integers(len(BACKGROUNDS))
    frac = rng.uniform(*SIZE_RANGE)
    u, v = rng.uniform(0.0, 1.0, size=2)
    h = frac * size
    cx = h + u * (size - 2 * h)
    cy = h + v * (size - 2 * h)
    if factors is None:
        factors = (list(COLOURS)[c], SHAPES[s], list(BACKGROUNDS)[b])
    return Scene(*factors, cx=float(cx), cy=float(cy), half_extent=float(h))


def _sample_points(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample coordinates, shape (size*SS, size*SS) each: pixel i covers [i, i+1)."""
    ss = SUPERSAMPLE
    t = (np.arange(size * ss, dtype=np.float64) + 0.5) / ss
    return np.meshgrid(t, t, indexing="xy")  # x varies along columns, y along rows


def shape_mask(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, h: float) -> np.ndarray:
    """Boolean inside-test of `shape` at points (x, y)."""
    dx, dy = x - cx, y - cy
    if shape == "circle":
        return dx * dx + dy * dy <= h * h
    if shape == "square":
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if shape == "triangle":
        # Between apex (dy = -h) and base (dy = +h); half-width grows linearly from 0 to h.
        return (dy <= h) & (np.abs(dx) <= (dy + h) / 2)
    if shape == "cross":
        arm = h / 3
        return ((np.abs(dx) <= h) & (np.abs(dy) <= arm)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= h))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def coverage(shape: str, size: int, cx: float, cy: float, h: float) -> np.ndarray:
    """Fraction of each pixel inside the shape, float64 (size, size) in [0, 1]."""
    x, y = _sample_points(size)
    inside = shape_mask(shape, x, y, cx, cy, h).astype(np.float64)
    ss = SUPERSAMPLE
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def render(scene: Scene, size: int) -> np.ndarray:
    """The scene as uint8 RGB (size, size, 3)."""
    alpha = coverage(scene.shape, size, scene.cx, scene.cy, scene.half_extent)[..., None]
    bg = np.asarray(BACKGROUNDS[scene.background], dtype=np.float64)
    fg = np.asarray(COLOURS[scene.colour], dtype=np.float64)
    return np.rint(bg * (1.0 - alpha) + fg * alpha).astype(np.uint8)


def image(seed: int, index: int, size: int) -> tuple[np.ndarray, Scene]:
    """Image and scene number `index` of stream `seed`."""
    scene = sample_scene(seed, index, size)
    return render(scene, size), scene


def batch(seed: int, start: int, count: int, size: int) -> tuple[np.ndarray, list[Scene]]:
    """Images start..start+count-1 as uint8 (count, size, size, 3) and their scenes."""
    scenes = [sample_scene(seed, i, size) for i in range(start, start + count)]
    return np.stack([render(s, size) for s in scenes]), scenes
