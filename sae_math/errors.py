"""One shape for every user-facing error: which node, which input, what value, what to do."""


# Advice for a MODEL without UNet self-attention (the family adapters, sae_patches/families, now say which
# families are supported; kept for modules that still name the UNet requirement).
NOT_SD_UNET = ("this model has no UNet self-attention layers (it is not an SD1.x, SD2.x or SDXL UNet); "
               "connect the MODEL of an SD1.x, SD2.x or SDXL checkpoint")


def model_name(model) -> str:
    """What to call a MODEL in an error: its ComfyUI model class (e.g. 'Flux', 'SDXL')."""
    return type(getattr(model, "model", model)).__name__


class NodeInputError(ValueError):
    def __init__(self, node: str, input_name: str, value, advice: str):
        self.node, self.input_name, self.value = node, input_name, value
        shown = value if isinstance(value, (int, float, str)) else type(value).__name__
        super().__init__(f"{node}: input '{input_name}' = {shown!r}: {advice}")
