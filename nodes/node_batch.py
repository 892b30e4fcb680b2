"""Small batch helpers for sweeps: identical-noise latent batches and an image grid."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..sae_math.errors import NodeInputError
from .node_directions import CATEGORY


class RepeatLatentSameNoise(io.ComfyNode):
    DISPLAY = "Repeat Latent (same noise)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_RepeatLatentSameNoise",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="Repeats a latent N times with one shared batch_index, so the sampler gives every copy the "
                        "same noise: feed it to an alpha sweep (Apply Latent Direction's alpha_sweep).",
            inputs=[
                io.Latent.Input("latent", tooltip="A latent with batch size 1."),
                io.Int.Input("amount", default=5, min=1, max=256, tooltip="Batch size = number of alphas."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, latent, amount):
        samples = latent["samples"]
        if samples.shape[0] != 1:
            raise NodeInputError(cls.DISPLAY, "latent", f"batch {samples.shape[0]}", "give a latent of batch size 1")
        index = (latent.get("batch_index") or [0])[0]
        out = {k: v for k, v in latent.items() if k not in ("samples", "batch_index")}
        out["samples"] = samples.repeat(amount, *([1] * (samples.ndim - 1)))
        out["batch_index"] = [index] * amount
        return io.NodeOutput(out)


class ImageGrid(io.ComfyNode):
    DISPLAY = "Image Grid"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_ImageGrid",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="Lays a batch of images out as one grid image, row by row (e.g. one row per direction, "
                        "one column per alpha).",
            inputs=[
                io.Image.Input("images"),
                io.Int.Input("columns", default=5, min=1, max=256, tooltip="Images per row."),
                io.Int.Input("gap", default=4, min=0, max=64, tooltip="White pixels between images."),
            ],
            outputs=[io.Image.Output(display_name="grid")],
        )

    @classmethod
    def execute(cls, images, columns, gap):
        n, h, w, c = images.shape  # IMAGE is (batch, height, width, channels)
        rows = -(-n // columns)
        grid = torch.ones((1, rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, c), dtype=images.dtype)
        for i in range(n):
            r, col = divmod(i, columns)
            grid[0, r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = images[i]
        return io.NodeOutput(grid)


BATCH_NODES = [RepeatLatentSameNoise, ImageGrid]
