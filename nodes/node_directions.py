"""Nodes: "Compute Attention Eigendirections", "Save Attention Directions", "Load Attention Directions"."""

from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..sae_math.directions import AttnDirections
from ..sae_math.errors import NodeInputError
from ..sae_math.layers import CUSTOM_LIST_HELP, LAYER_PRESETS
from ..sae_patches.families import adapter_for
from ..sae_patches.weights import compute_directions, solve_device

log = logging.getLogger("self_attention_edit")

AttnDirectionsType = io.Custom("ATTN_DIRECTIONS")
DIRECTIONS_FOLDER = "attention_directions"
CATEGORY = "self-attention edit"


class ComputeAttentionEigendirections(io.ComfyNode):
    DISPLAY = "Compute Attention Eigendirections"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_ComputeEigendirections",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=(
                "Editing directions from the weights alone: for each selected self-attention layer, the top-k "
                "eigenvectors of C = Wq^T Wq + Wk^T Wk + Wv^T Wv, computed from the weights this MODEL samples "
                "with (LoRA included). Eigenvalues descending; each vector's largest coordinate is positive."),
            inputs=[
                io.Model.Input("model", tooltip="The model whose self-attention weights (with its LoRAs) define the directions."),
                io.Combo.Input("layers", options=list(LAYER_PRESETS), default="middle block",
                               tooltip="Which self-attention layers. 'middle block' is the UNet bottleneck (h-space); "
                                       "'custom list' reads custom_layers."),
                io.Int.Input("top_k", default=8, min=1, max=4096,
                             tooltip="How many directions per layer (the k largest eigenvalues)."),
                io.String.Input("custom_layers", default="", multiline=False,
                                tooltip="Used when layers is 'custom list': " + CUSTOM_LIST_HELP),
            ],
            outputs=[AttnDirectionsType.Output(display_name="directions")],
        )

    @classmethod
    def validate_inputs(cls, layers, top_k, custom_layers=""):
        if layers == "custom list" and not custom_layers.strip():
            return f"{cls.DISPLAY}: input 'custom_layers' is empty but layers is 'custom list'; {CUSTOM_LIST_HELP}"
        return True

    @classmethod
    def execute(cls, model, layers, top_k, custom_layers="") -> io.NodeOutput:
        import comfy.model_management
        import comfy.utils

        adapter = adapter_for(model, cls.DISPLAY, "directions")
        bar = comfy.utils.ProgressBar(1)

        def on_layer(i, n):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(i, n)

        try:
            directions = compute_directions(model, layers, custom_layers, top_k, on_layer=on_layer, adapter=adapter)
        except ValueError as e:
            raise NodeInputError(cls.DISPLAY, "layers" if layers != "custom list" else "custom_layers",
                                 layers if layers != "custom list" else custom_layers, str(e)) from e
        log.info("computed %d directions on %d layers (%s, solved on %s)", directions.k, len(directions.layers),
                 directions.model_family, solve_device(model))
        return io.NodeOutput(directions, ui={"sae_spectrum": [directions.summary()]})


def register_folder() -> None:
    """models/attention_directions and output/attention_directions both feed the loader."""
    import folder_paths

    for base in (folder_paths.models_dir, folder_paths.get_output_directory()):
        path = os.path.join(base, DIRECTIONS_FOLDER)
        if path not in folder_paths.folder_names_and_paths.get(DIRECTIONS_FOLDER, ([], set()))[0]:
            folder_paths.add_model_folder_path(DIRECTIONS_FOLDER, path)
    folder_paths.folder_names_and_paths[DIRECTIONS_FOLDER] = (
        folder_paths.folder_names_and_paths[DIRECTIONS_FOLDER][0], {".safetensors"})


class SaveAttentionDirections(io.ComfyNode):
    DISPLAY = "Save Attention Directions"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_SaveDirections",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="Write directions to output/attention_directions/<prefix>_00001_.safetensors (with metadata) "
                        "to share them like a LoRA; the loader lists them at once.",
            inputs=[
                AttnDirectionsType.Input("directions", tooltip="Directions from Compute Attention Eigendirections."),
                io.String.Input("filename_prefix", default="attention_directions/directions",
                                tooltip="Path under ComfyUI's output folder, without extension."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, directions, filename_prefix) -> io.NodeOutput:
        import folder_paths

        out_dir = folder_paths.get_output_directory()
        full_dir, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        os.makedirs(full_dir, exist_ok=True)
        filename = f"{name}_{counter:05}_.safetensors"
        directions.save(os.path.join(full_dir, filename))
        return io.NodeOutput(ui={"sae_saved": [{"filename": filename, "subfolder": subfolder, "type": "output"}]})


class LoadAttentionDirections(io.ComfyNode):
    DISPLAY = "Load Attention Directions"

    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="SAEdit_LoadDirections",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="Read a directions .safetensors from models/attention_directions or output/attention_directions.",
            inputs=[
                io.Combo.Input("file", options=folder_paths.get_filename_list(DIRECTIONS_FOLDER),
                               tooltip="A file written by Save Attention Directions."),
            ],
            outputs=[AttnDirectionsType.Output(display_name="directions")],
        )

    @classmethod
    def fingerprint_inputs(cls, file):
        import folder_paths

        path = folder_paths.get_full_path(DIRECTIONS_FOLDER, file)
        return os.path.getmtime(path) if path else file

    @classmethod
    def execute(cls, file) -> io.NodeOutput:
        import folder_paths

        path = folder_paths.get_full_path(DIRECTIONS_FOLDER, file)
        if path is None:
            raise NodeInputError(cls.DISPLAY, "file", file, "no such file in models/attention_directions or "
                                 "output/attention_directions")
        try:
            directions = AttnDirections.load(path)
        except ValueError as e:
            raise NodeInputError(cls.DISPLAY, "file", file, f"{e}; choose a file written by Save Attention "
                                 "Directions, or compute the directions again") from e
        return io.NodeOutput(directions, ui={"sae_spectrum": [directions.summary()]})
