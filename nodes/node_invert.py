"""Node "Invert Latent (DDIM)": a real image's latent -> noise, and the trajectory the swap pins the
source to. Math in inversion.py."""

from __future__ import annotations

from comfy_api.latest import io

from ..sae_math.errors import NodeInputError
from ..sae_patches.families import adapter_for
from ..sae_patches.inversion import NODE, install_flow_start, invert
from .node_directions import CATEGORY

# The socket the swap's `inversion` input takes (an inversion.Inversion).
InversionType = io.Custom("SAE_INVERSION")


class InvertLatent(io.ComfyNode):
    DISPLAY = NODE

    @classmethod
    def define_schema(cls):
        import comfy.samplers

        return io.Schema(
            node_id="SAEdit_InvertLatent",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description="DDIM inversion (rectified-flow models such as Flux: the flow ODE run backwards): from the "
                        "image latent to noise, recording the path. Sample forward with euler, the same steps and "
                        "scheduler, add_noise disabled. On a flow model sample with this node's 'model' output (or "
                        "through Self-Attention Swap with the inversion): a flow sampler with add_noise disabled "
                        "otherwise starts from zeros, not from the inverted latent.",
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive", tooltip="Source prompt for the inversion (FPE: empty prompt)."),
                io.Latent.Input("latent", tooltip="VAE-encoded image(s)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Must equal the forward sampler's steps."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                               tooltip="Must equal the forward sampler's scheduler."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01, optional=True,
                               tooltip="Guidance during inversion. 1 (FPE, default) inverts with the prompt alone; "
                                       "above 1 needs a negative and drifts more from the image."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt; only used (and required) when cfg is not 1."),
            ],
            outputs=[io.Latent.Output(display_name="noise"), InversionType.Output(display_name="inversion"),
                     io.Model.Output(display_name="model",
                                     tooltip="The model to sample the inverted latent with (add_noise disabled). "
                                             "Rectified-flow models (Flux, SD3, Qwen-Image, Z-Image): a copy that "
                                             "starts the sampler at the inverted latent; other models: the input "
                                             "model unchanged.")],
        )

    @classmethod
    def execute(cls, model, positive, latent, steps, scheduler, cfg=1.0, negative=None):
        adapter_for(model, cls.DISPLAY, "inversion")
        if cfg != 1.0 and negative is None:
            raise NodeInputError(cls.DISPLAY, "negative", "not connected",
                                 f"cfg = {cfg} needs a negative prompt: connect one, or set cfg to 1 (FPE's choice)")
        noise, inv = invert(model, positive, latent["samples"], steps, scheduler, cfg, negative)
        out = {k: v for k, v in latent.items() if k not in ("samples", "batch_index")}
        out["samples"] = noise
        # A flow sampler starts at sigma_max * noise + (1 - sigma_max) * latent, zeros at sigma_max = 1 with
        # add_noise disabled: the copy's FlowStartFromLatent passes the latent as the noise then.
        start = model.clone()
        if not install_flow_start(start):
            start = model
        return io.NodeOutput(out, inv, start)


INVERT_NODES = [InvertLatent]
