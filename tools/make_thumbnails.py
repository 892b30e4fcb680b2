"""Template-browser thumbnails: example_workflows/<name>.jpg from the images the main job wrote.

    scripts/run-examples.sh --out DIR        # renders every example workflow (summary.json lists the files)
    $SAE_VENV/bin/python tools/make_thumbnails.py DIR

ComfyUI's template browser shows <name>.jpg beside example_workflows/<name>.json. Each thumbnail holds the
workflow's images side by side (source | target, original | edited; the explorer's sweep grid as it is),
fitted into SIZE x SIZE on a dark background, as a JPEG kept under MAX_BYTES. The main job's default model is
the shapes-world demo model, so these are real edits (the README shows them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
SIZE = 256
GAP = 6
MAX_BYTES = 50_000
BACKGROUND = (24, 24, 24)
# What each picture of a workflow is (sources before targets, then in the order the workflow saves them).
LABELS = {
    "direction_explorer": ["rows: directions 0, 1, 2 · columns: alpha -0.4 … 0.4"],
    "direction_with_swap": ["source", "edited, layout held"],
    "prompt_edit_swap": ["source prompt", "target prompt"],
    "real_image_edit": ["reconstruction", "edit"],
    "single_direction_edit": ["original", "edited"],
}


def compose(images: list[Image.Image], labels=(), size: int = SIZE) -> Image.Image:
    """The images in one row (scaled to a common height), centred in a size x size square, a label under
    each (one label for several images: centred under the row)."""
    height = min(im.height for im in images)
    row = [im.convert("RGB").resize((round(im.width * height / im.height), height), Image.LANCZOS) for im in images]
    strip = Image.new("RGB", (sum(im.width for im in row) + GAP * (len(row) - 1), height), BACKGROUND)
    x = 0
    for im in row:
        strip.paste(im, (x, 0))
        x += im.width + GAP
    # Fit the row to the square, leaving room for the labels; small (64 px) pictures are enlarged with
    # nearest-neighbour so they stay sharp.
    scale = min((size - 16) / strip.width, (size - 48) / strip.height)
    resample = Image.NEAREST if scale > 1 else Image.LANCZOS
    strip = strip.resize((max(1, round(strip.width * scale)), max(1, round(strip.height * scale))), resample)
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    x0, y0 = (size - strip.width) // 2, (size - strip.height) // 2
    canvas.paste(strip, (x0, y0))
    if labels:
        draw = ImageDraw.Draw(canvas)
        font = ImageFont.load_default(size=13 if len(labels) > 1 else 11)
        scale = strip.width / (x - GAP)
        centres = [x0 + strip.width / 2] if len(labels) != len(row) else \
            [x0 + (sum(im.width + GAP for im in row[:i]) + row[i].width / 2) * scale for i in range(len(row))]
        for text, cx in zip(labels, centres):
            draw.text((cx, y0 + strip.height + 8), text, fill=(220, 220, 220), font=font, anchor="mt")
    return canvas


def save_small_jpeg(image: Image.Image, path: Path, max_bytes: int = MAX_BYTES) -> int:
    """Highest JPEG quality (85 down to 40) that stays under max_bytes; returns the file size."""
    for quality in range(85, 35, -5):
        image.save(path, "JPEG", quality=quality, optimize=True, progressive=True)
        if path.stat().st_size <= max_bytes:
            break
    return path.stat().st_size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder written by scripts/run-examples.sh (holds summary.json)")
    ap.add_argument("--dest", type=Path, default=REPO / "example_workflows")
    args = ap.parse_args(argv)
    summary = json.loads((args.out / "summary.json").read_text())
    for name, entry in summary["workflows"].items():
        if not (args.dest / f"{name}.json").is_file():
            continue
        files = sorted(entry["images"], key=lambda f: ("_target" in f, f))  # the server lists them in any order
        images = [Image.open(args.out / f) for f in files]
        size = save_small_jpeg(compose(images, LABELS.get(name, ())), args.dest / f"{name}.jpg")
        sys.stderr.write(f"[thumbnails] {name}.jpg: {len(images)} image(s), {size / 1000:.1f} kB\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
