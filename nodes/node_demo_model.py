"""Node "Load Shapes Demo Model": the shapes-world demo checkpoint shipped with the pack (or one like it).

Outputs MODEL, CLIP, VAE in CheckpointLoaderSimple's order, so it replaces Load Checkpoint in any graph.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..sae_math.errors import NodeInputError
from ..sae_patches import demo_model
from .node_directions import CATEGORY

log = logging.getLogger("self_attention_edit")

EMBEDDED = "shapes-world demo (embedded)"


def _choices() -> list[str]:
    import folder_paths

    return [EMBEDDED] + [n for n in folder_paths.get_filename_list("checkpoints") if n.endswith(".safetensors")]


class LoadShapesDemoModel(io.ComfyNode):
    DISPLAY = "Load Shapes Demo Model"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_LoadShapesDemoModel",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=(
                "A small SD1.x-architecture model trained on the shapes world (one coloured circle, square, "
                "triangle or cross on a white, gray or black background; 64x64 px), shipped with the pack so "
                "that every workflow shows real edits on any machine, CPU included. Prompts: 'a red circle on a "
                "white background' (colours red, green, blue, yellow, purple, orange). Outputs replace Load "
                "Checkpoint's."),
            inputs=[
                io.Combo.Input("checkpoint", options=_choices(), default=EMBEDDED,
                               tooltip="The embedded demo model, or a demo-format file from models/checkpoints "
                                       "(trained by tools/train_shapes.py; ordinary checkpoints load with Load "
                                       "Checkpoint)."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, checkpoint) -> io.NodeOutput:
        if checkpoint == EMBEDDED:
            path, sha = demo_model.EMBEDDED_PATH, demo_model.EMBEDDED_SHA256
            if not path.is_file():
                raise NodeInputError(cls.DISPLAY, "checkpoint", checkpoint,
                                     f"the embedded file {path} is missing: reinstall the pack")
        else:
            import folder_paths

            path, sha = folder_paths.get_full_path_or_raise("checkpoints", checkpoint), None
        try:
            model, clip, vae = demo_model.load_demo_checkpoint(path, expected_sha256=sha)
        except ValueError as e:
            raise NodeInputError(cls.DISPLAY, "checkpoint", checkpoint, str(e)) from e
        return io.NodeOutput(model, clip, vae)


DEMO_MODEL_NODES = [LoadShapesDemoModel]
