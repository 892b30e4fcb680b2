"""Node: "Apply Latent Direction (timestep window)"."""

from __future__ import annotations

from comfy_api.latest import io

from ..sae_math.direction_math import SCALE_MODES, SCALES, check_alpha, parse_alphas
from ..sae_math.errors import NodeInputError
from ..sae_math.layers import CUSTOM_LIST_HELP, LayerInfo, select_layers
from ..sae_patches.direction_patch import LatentDirectionPatch
from ..sae_patches.families import adapter_for
from ..sae_patches.weights import model_family
from .node_directions import CATEGORY, AttnDirectionsType


def check_window(node: str, start: float, end: float) -> str | None:
    if not (0.0 <= start < end <= 1.0):
        return (f"{node}: input 'window_start'/'window_end' = {start!r}/{end!r}: the window must satisfy "
                "0 <= start < end <= 1 (fractions of T; the paper uses 0.5 to 0.8)")
    return None


class ApplyLatentDirection(io.ComfyNode):
    DISPLAY = "Apply Latent Direction (timestep window)"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="SAEdit_ApplyLatentDirection",
            display_name=cls.DISPLAY,
            category=CATEGORY,
            description=(
                "Adds alpha * direction to the self-attention input of the directions' layers (q, k and v all "
                "see it) while window_start*T < t < window_end*T, converted to sigma through the schedule "
                "the model samples with (any sampler, any schedule: SD, LCM, EDM, flow); logs a warning when "
                "no model evaluation of a run falls inside. Chain several to combine directions. Returns a "
                "patched copy; the input MODEL is unchanged."),
            inputs=[
                io.Model.Input("model", tooltip="Model to patch (a copy is patched)."),
                AttnDirectionsType.Input("directions", tooltip="From Compute/Load Attention Directions."),
                io.Int.Input("index", default=0, min=0, max=4095,
                             tooltip="Which eigen-direction: 0 is the largest eigenvalue."),
                io.Float.Input("alpha", default=0.2, min=-10.0, max=10.0, step=0.01,
                               tooltip="Edit strength. Relative scale: a fraction of the mean token norm; on the "
                                       "demo model edits show from about |alpha| = 2 and break near 4 "
                                       "(docs/semantic.md); start small on other checkpoints."),
                io.Float.Input("window_start", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Edit only while t > window_start * T, i.e. until ComfyUI's percent "
                                       "1 - window_start of sampling (0: to the end)."),
                io.Float.Input("window_end", default=0.8, min=0.0, max=1.0, step=0.01,
                               tooltip="Edit only while t < window_end * T, i.e. from ComfyUI's percent "
                                       "1 - window_end of sampling on (1: from the start)."),
                io.Combo.Input("alpha_scale", options=list(SCALES), default=SCALES[0],
                               tooltip="'relative to token norm': alpha times each image's mean token norm. "
                                       "'absolute (paper)': Z + alpha * n literally. 'relative to spread along n': "
                                       "alpha times the RMS of the input along n (alpha standard deviations, the "
                                       "paper's reading under its whitening assumption)."),
                io.String.Input("layers", default="", optional=True,
                                tooltip="Optional subset of the directions' layers (empty = all). " + CUSTOM_LIST_HELP),
                io.String.Input("alpha_sweep", default="", optional=True,
                                tooltip="Optional list of alphas, one per latent batch element (e.g. "
                                        "'-0.4, -0.2, 0, 0.2, 0.4' or 'linspace(-0.4, 0.4, 9)'); overrides alpha. "
                                        "Use a batch with identical noise to render a sweep in one run."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def validate_inputs(cls, alpha=0.2, window_start=0.5, window_end=0.8, alpha_sweep="", **_):
        try:
            check_alpha(alpha)
        except ValueError as e:
            return f"{cls.DISPLAY}: input 'alpha' = {alpha!r}: {e}"
        problem = check_window(cls.DISPLAY, window_start, window_end)
        if problem:
            return problem
        if alpha_sweep and alpha_sweep.strip():
            try:
                parse_alphas(alpha_sweep)
            except ValueError as e:
                return f"{cls.DISPLAY}: input 'alpha_sweep' = {alpha_sweep!r}: {e}"
        return True

    @classmethod
    def execute(cls, model, directions, index, alpha, window_start, window_end, alpha_scale,
                layers="", alpha_sweep="") -> io.NodeOutput:
        adapter = adapter_for(model, cls.DISPLAY, "apply")
        patch = build_direction_patch(model, directions, index, alpha, window_start, window_end, alpha_scale,
                                      layers, alpha_sweep, adapter=adapter)
        m = model.clone()
        adapter.install_direction(m, patch)
        return io.NodeOutput(m)


def build_direction_patch(model, directions, index, alpha, window_start, window_end, alpha_scale,
                          layers="", alpha_sweep="", adapter=None) -> LatentDirectionPatch:
    """Check every input against the model and build the patch (raises NodeInputError)."""
    node = ApplyLatentDirection.DISPLAY
    try:
        alphas = parse_alphas(alpha_sweep) if alpha_sweep and alpha_sweep.strip() else (check_alpha(alpha),)
    except ValueError as e:
        raise NodeInputError(node, "alpha_sweep" if alpha_sweep else "alpha", alpha_sweep or alpha, str(e)) from e
    problem = check_window(node, window_start, window_end)
    if problem:
        raise ValueError(problem)
    if alpha_scale not in SCALES:
        raise NodeInputError(node, "alpha_scale", alpha_scale, f"choose one of {', '.join(SCALES)}")

    adapter = adapter if adapter is not None else adapter_for(model, node, "apply")
    present = {x.key: x for x in adapter.layers()}
    mismatched = [f"{x.key} (width {x.width})" for x in directions.layers
                  if x.key not in present or present[x.key].width != x.width]
    if mismatched:
        raise NodeInputError(node, "directions", directions.model_family,
                             f"these layers do not exist with the same width in this model: {', '.join(mismatched)}; "
                             "compute the directions on this model (or one of its family)")
    family = model_family(model)
    if "unknown" not in (family, directions.model_family) and family != directions.model_family:
        # Same layer names and widths across families (SD1.5 and SD2.x share them) do not make the
        # directions meaningful: they are eigenvectors of other weights.
        raise NodeInputError(node, "directions", directions.model_family,
                             f"these directions were computed on a {directions.model_family} model but this model "
                             f"is {family}; compute the directions on this model (Compute Attention Eigendirections)")
    if index >= directions.k:
        raise NodeInputError(node, "index", index, f"only {directions.k} directions per layer were computed; "
                             f"use 0..{directions.k - 1} or raise top_k in Compute Attention Eigendirections")

    chosen = list(directions.layers)
    if layers and layers.strip():
        infos = [LayerInfo(x.key, "", x.width, x.level) for x in directions.layers]
        try:
            keys = {x.key for x in select_layers(infos, "custom list", layers)}
        except ValueError as e:
            raise NodeInputError(node, "layers", layers, str(e)) from e
        chosen = [x for x in chosen if x.key in keys]

    # The window stays in fractions of T: it is converted to sigma at sampling time, through the
    # model_sampling then in force (a ModelSampling node after this one changes it; direction_window).
    return LatentDirectionPatch(
        vectors={x.key: x.vectors[index].float().clone() for x in chosen},
        alphas=alphas,
        start=window_start,
        end=window_end,
        scale=SCALE_MODES[alpha_scale],
        fallback_sampling=model.get_model_object("model_sampling"),
    )
