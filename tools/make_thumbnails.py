"""Template-browser thumbnails: example_workflows/<name>.jpg from the images the main job wrote.

    scripts/run-examples.sh --out DIR        # renders every example workflow (summary.json lists the files)
    $SAE_VENV/bin/python tools/make_thumbnails.py DIR [--readme docs/demo-edits.png]

ComfyUI's template browser shows <name>.jpg beside example_workflows/<name>.json. Each thumbnail holds the
workflow's images side by side (source | target, original | edited; the explorer's sweep grid as it is),
fitted into SIZE x SIZE on a dark background, as a JPEG kept under MAX_BYTES. The main job's default model is
the shapes-world demo model, so these are real edits (the README shows them).

Workflows that need other weights (extra.sae_requires: the Flux ones, the SD1.5 / SDXL twins) cannot be
rendered here: their
thumbnails are schematics of the graph, labelled as such ("schematic, not a render"), written by

    $SAE_VENV/bin/python tools/make_thumbnails.py --schematic
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
    "direction_explorer": ["rows: directions 0, 1, 2 · columns: alpha -4 … 4"],
    "direction_with_swap": ["source", "edited, layout held"],
    "prompt_edit_swap": ["source prompt", "target prompt"],
    "real_image_edit": ["reconstruction", "edit"],
    "single_direction_edit": ["original", "edited"],
}
# The README's picture (--readme): the demo workflows' thumbnails in a row, in the order the README describes.
README_ORDER = ("direction_explorer", "prompt_edit_swap", "real_image_edit", "single_direction_edit",
                "direction_with_swap")
README_GAP = 5


def readme_strip(canvases: dict[str, Image.Image]) -> Image.Image:
    """The README_ORDER canvases side by side, README_GAP white pixels apart."""
    row = [canvases[name] for name in README_ORDER]
    strip = Image.new("RGB", (sum(c.width for c in row) + README_GAP * (len(row) - 1), max(c.height for c in row)),
                      (255, 255, 255))
    x = 0
    for c in row:
        strip.paste(c, (x, 0))
        x += c.width + README_GAP
    return strip


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


# The node chain each schematic thumbnail draws (the workflow's main path, left to right, top to bottom).
SCHEMATIC = {
    "flux_direction_edit": ["UNET / DualCLIP / VAE loaders", "Compute Attention Eigendirections",
                            "Apply Latent Direction", "KSampler (original | edited)"],
    "flux_prompt_edit_swap": ["UNET / DualCLIP / VAE loaders", "Source/Target Cond. + FluxGuidance",
                              "Self-Attention Swap", "KSampler on the pairs"],
    "flux_real_image_edit": ["LoadImage / VAEEncode", "Invert Latent (flow ODE)",
                             "Self-Attention Swap (pinned source)", "KSamplerAdvanced, no added noise"],
    # the SD1.5 / SDXL twins of the demo workflows (keyed by the demo workflow's name)
    "direction_explorer": ["Load Checkpoint", "Compute Attention Eigendirections", "Apply Latent Direction x3",
                           "KSampler (alpha -0.4 .. 0.4) -> grid"],
    "single_direction_edit": ["Load Checkpoint", "Compute Attention Eigendirections", "Apply Latent Direction",
                              "KSampler (original | edited)"],
    "prompt_edit_swap": ["Load Checkpoint", "Source/Target Conditioning", "Self-Attention Swap (FPE layers)",
                         "KSampler on the pairs"],
    "real_image_edit": ["LoadImage / ImageScale / VAEEncode", "Invert Latent (DDIM)",
                        "Self-Attention Swap (pinned source)", "KSamplerAdvanced, no added noise"],
    "direction_with_swap": ["Load Checkpoint", "Apply Latent Direction (0 | 0.3)", "Self-Attention Swap",
                            "KSampler on the pairs"],
}
TWIN_FAMILIES = {"_sd15": "SD1.5", "_sdxl": "SDXL"}


def family_of(stem: str) -> tuple[str, str]:
    """(the family's name, the workflow's name without the family) of a workflow needing other weights."""
    for suffix, family in TWIN_FAMILIES.items():
        if stem.endswith(suffix):
            return family, stem.removesuffix(suffix)
    return "Flux.1", stem


def schematic(title: str, steps: list[str], size: int = SIZE, family: str = "Flux.1") -> Image.Image:
    """A labelled diagram of a workflow's node chain: clearly not a picture the workflow made."""
    canvas = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    small, big = ImageFont.load_default(size=11), ImageFont.load_default(size=14)
    draw.text((size // 2, 12), title, fill=(235, 235, 235), font=big, anchor="mt")
    box_h, gap, top = 30, 14, 40
    for i, text in enumerate(steps):
        y = top + i * (box_h + gap)
        draw.rounded_rectangle((14, y, size - 14, y + box_h), radius=6, outline=(110, 160, 230), width=2,
                               fill=(36, 44, 58))
        draw.text((size // 2, y + box_h // 2), text, fill=(220, 220, 220), font=small, anchor="mm")
        if i + 1 < len(steps):
            draw.line((size // 2, y + box_h, size // 2, y + box_h + gap), fill=(110, 160, 230), width=2)
    draw.text((size // 2, size - 10), f"schematic, not a render (needs {family} weights)", fill=(240, 180, 90),
              font=small, anchor="mb")
    return canvas


def write_schematics(dest: Path = REPO / "example_workflows") -> list[str]:
    """<name>.jpg for every workflow in dest that needs weights this machine lacks (extra.sae_requires)."""
    written = []
    for path in sorted(dest.glob("*.json")):
        wf = json.loads(path.read_text())
        if not wf.get("extra", {}).get("sae_requires"):
            continue
        family, name = family_of(path.stem)
        title = f"{family} · " + name.removeprefix("flux_").replace("_", " ")
        steps = SCHEMATIC.get(name, [n["type"] for n in wf["nodes"] if n["type"] != "Note"][:5])
        size = save_small_jpeg(schematic(title, steps, family=family), dest / f"{path.stem}.jpg")
        sys.stderr.write(f"[thumbnails] {path.stem}.jpg: schematic, {size / 1000:.1f} kB\n")
        written.append(path.stem)
    return written


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, nargs="?",
                    help="folder written by scripts/run-examples.sh (holds summary.json)")
    ap.add_argument("--dest", type=Path, default=REPO / "example_workflows")
    ap.add_argument("--schematic", action="store_true",
                    help="(re)write the schematic thumbnails of the workflows that need other weights")
    ap.add_argument("--readme", type=Path, default=None,
                    help="also write the README's picture (the demo thumbnails in a row) to this PNG")
    args = ap.parse_args(argv)
    if args.schematic:
        write_schematics(args.dest)
    if args.out is None:
        if not args.schematic:
            ap.error("give the run folder, or --schematic")
        return 0
    summary = json.loads((args.out / "summary.json").read_text())
    canvases = {}
    for name, entry in summary["workflows"].items():
        if not (args.dest / f"{name}.json").is_file():
            continue
        files = sorted(entry["images"], key=lambda f: ("_target" in f, f))  # the server lists them in any order
        images = [Image.open(args.out / f) for f in files]
        canvases[name] = compose(images, LABELS.get(name, ()))
        size = save_small_jpeg(canvases[name], args.dest / f"{name}.jpg")
        sys.stderr.write(f"[thumbnails] {name}.jpg: {len(images)} image(s), {size / 1000:.1f} kB\n")
    if args.readme:
        readme_strip(canvases).save(args.readme, optimize=True)
        sys.stderr.write(f"[thumbnails] {args.readme}: {', '.join(README_ORDER)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
