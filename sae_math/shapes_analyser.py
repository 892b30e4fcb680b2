"""Read the factors of a shapes-world image back from its pixels: no learned weights, pure numpy/scipy.

Steps (image: uint8 or float RGB, (H, W, 3), values 0-255):
  1. background: the palette background nearest to the median of the border pixels;
  2. foreground: pixels farther than FOREGROUND_DISTANCE from it; the shape's colour is the palette colour
     nearest to the median of the most saturated half of them;
  3. coverage alpha per pixel: the projection of (pixel - background) onto (colour - background), in [0, 1];
  4. for each shape hypothesis: size from the coverage's area (known area / h^2 per shape), centre from its
     centroid (the triangle's centroid sits h/3 below its box centre), then the shape is rendered there
     and compared with alpha; the hypothesis with the smallest mismatch wins.
  5. cleanliness: one connected foreground component (specks under MIN_SPECK pixels ignored), a template
     mismatch below CLEAN_MISMATCH of the shape's area, and few pixels that are neither background, the
     shape's colour nor a mix of the two.

On the generator's own images it recovers colour, shape and background exactly, the centre within a small
fraction of a pixel and the size within 1% (tests/test_shapes_world.py); on a model's images the same
numbers are a measurement, with `mismatch`, `stray` and `components` saying how clean the picture is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import shapes_world as world

FOREGROUND_DISTANCE = 40.0  # RGB distance from the background that makes a pixel foreground
MIN_SPECK = 4  # connected foreground regions smaller than this many pixels are ignored as noise
CLEAN_MISMATCH = 0.25  # sum |alpha - template| / template area, above it the shape is not clean
STRAY_DISTANCE = 45.0  # RGB distance from the background-to-colour segment that makes a pixel stray
CLEAN_STRAY = 0.02  # share of stray pixels above which the image is not clean


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None when no foreground was found
    shape: str | None
    cx: float  # pixels (nan without a shape)
    cy: float
    half_extent: float
    mismatch: float  # sum |alpha - template| / template area
    stray: float  # share of pixels off the background-colour segment
    components: int  # connected foreground regions of MIN_SPECK pixels or more
    colour_distance: float  # RGB distance of the measured colour from the palette colour it was read as
    background_distance: float

    @property
    def clean(self) -> bool:
        """Exactly one shape, drawn like the world draws it."""
        return (self.shape is not None and self.components == 1 and self.mismatch < CLEAN_MISMATCH
                and self.stray < CLEAN_STRAY)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["clean"] = self.clean
        return d


def _nearest(palette: dict[str, tuple[int, int, int]], rgb: np.ndarray) -> tuple[str, float]:
    names = list(palette)
    colours = np.asarray([palette[n] for n in names], dtype=np.float64)
    d = np.linalg.norm(colours - rgb[None, :], axis=1)
    i = int(np.argmin(d))
    return names[i], float(d[i])


def _components(mask: np.ndarray) -> int:
    from scipy import ndimage

    labels, count = ndimage.label(mask)
    if count == 0:
        return 0
    sizes = np.bincount(labels.ravel())[1:]
    return int(np.sum(sizes >= MIN_SPECK))


def analyse(image: np.ndarray) -> Reading:
    """The factors of one image (H, W, 3) with values 0-255."""
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] != img.shape[1]:
        raise ValueError(f"expected a square RGB image (S, S, 3), got shape {img.shape}")
    size = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg_name, bg_distance = _nearest(world.BACKGROUNDS, np.median(border, axis=0))
    bg = np.asarray(world.BACKGROUNDS[bg_name], dtype=np.float64)

    distance = np.linalg.norm(img - bg, axis=2)
    fg = distance > FOREGROUND_DISTANCE
    nan = float("nan")
    if fg.sum() < MIN_SPECK:
        return Reading(bg_name, None, None, nan, nan, nan, 1.0, 0.0, 0, nan, bg_distance)

    # The most distinct half of the foreground: fully covered pixels, not the anti-aliased rim.
    fg_pixels, fg_distance = img[fg], distance[fg]
    core = fg_pixels[fg_distance >= np.median(fg_distance)]
    colour_name, colour_distance = _nearest(world.COLOURS, np.median(core, axis=0))
    fgc = np.asarray(world.COLOURS[colour_name], dtype=np.float64)

    axis = fgc - bg
    t = np.einsum("hwc,c->hw", img - bg, axis) / float(axis @ axis)
    alpha = np.clip(t, 0.0, 1.0)
    off_segment = np.linalg.norm(img - (bg + alpha[..., None] * axis), axis=2)
    stray = float(np.mean(off_segment > STRAY_DISTANCE))

    area = alpha.sum()
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5  # pixel centres
    mx, my = float((alpha * xs).sum() / area), float((alpha * ys).sum() / area)

    best = None
    for shape in world.SHAPES:
        h = float(np.sqrt(area / world.AREA_OVER_H2[shape]))
        cy = my - h / 3 if shape == "triangle" else my  # triangle: centroid is h/3 below the box centre
        template = world.coverage(shape, size, mx, cy, h)
        mismatch = float(np.abs(alpha - template).sum() / max(template.sum(), 1e-9))
        if best is None or mismatch < best[0]:
            best = (mismatch, shape, mx, cy, h)
    mismatch, shape, cx, cy, h = best
    return Reading(bg_name, colour_name, shape, cx, cy, h, mismatch, stray, _components(alpha > 0.5),
                   colour_distance, bg_distance)


def analyse_batch(images: np.ndarray) -> list[Reading]:
    """Readings of a batch (N, S, S, 3); float images in [0, 1] (ComfyUI's IMAGE) are scaled to 0-255."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 and arr.max() <= 1.0 + 1e-6:
        arr = arr * 255.0
    return [analyse(a) for a in arr]
