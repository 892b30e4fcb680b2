"""Apply Latent Direction on DiTs: an object patch on the forward of a q/k/v Linear.

The edit is Z' = Z + alpha * s * n on the image tokens' attention input Z (the Linear's input rows of the
image tokens: on Flux the modulated, normed image tokens), before QK-norm. Since the Linear is affine,
W (z + d) + b = (W z + b) + W d: the patched forward runs the Linear as usual and adds W d to the image rows
of the q/k/v output columns (text rows, reference-image rows and the MLP columns of a fused Linear keep
their values). W d comes from the module's own forward on two extra tokens, [d ; 0] -> (W d + b) - b, so
it uses the very weight the model samples with (LoRA, low-VRAM casts, quantized ops) without reading it.

The patched forward sees no transformer_options: the current model call (sigmas, rows, latent shape) comes
from direction_patch.current_call(), set by the APPLY_MODEL wrapper for the duration of the call. Outside
such a call (another pack calling the model by hand) the Linear runs unedited.

The shared nn.Module is never changed by this code: ModelPatcher.add_object_patch installs the forward while
the clone is loaded and restores the original when it is unloaded.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..sae_math.direction_math import direction_delta
from .direction_patch import ModelCall, current_call

# (call, sequence length) -> slice of the image-token rows of the Linear's input
TokenRows = Callable[[ModelCall, int], slice]


class LinearInputEdit:
    """The forward installed by add_object_patch("diffusion_model.<path>.forward", ...).

    path: the Linear's path inside the diffusion model; columns: (start, stop) of the output features that
    are q, k and v; token_rows: the family's rule for the image rows; edits: ((LatentDirectionPatch, layer
    key), ...) applied in order (chained Apply nodes); module: the Linear as the node saw it (used when the
    call's BaseModel is unknown); inner: another pack's object patch found on the same forward, called in
    place of the class's forward. Immutable (with_edit returns a new one); shared by clones."""

    def __init__(self, path: str, columns: tuple[int, int], token_rows: TokenRows, edits, module, inner=None):
        self.path = path
        self.columns = columns
        self.token_rows = token_rows
        self.edits = tuple(edits)
        self.module = module
        self.inner = inner
        # direction vectors moved to a device, per (id(vector), device): filled on first use
        self._moved: dict = {}

    def __deepcopy__(self, memo):
        return self

    def with_edit(self, patch, layer_key: str) -> LinearInputEdit:
        """A new forward with one more edit (the next chained Apply node)."""
        return LinearInputEdit(self.path, self.columns, self.token_rows, (*self.edits, (patch, layer_key)),
                               self.module, self.inner)

    def _linear(self, call: ModelCall | None):
        """The Linear of this call: from the BaseModel running it (a multi-GPU copy has its own modules)."""
        base = getattr(call, "base_model", None)
        diffusion_model = getattr(base, "diffusion_model", None)
        if diffusion_model is not None:
            try:
                return diffusion_model.get_submodule(self.path)
            except AttributeError:
                pass
        return self.module

    def _run(self, module, x, *args, **kwargs):
        if self.inner is not None:
            return self.inner(x, *args, **kwargs)
        return type(module).forward(module, x, *args, **kwargs)  # the class's forward: the instance's is this object

    def _vector(self, vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        key = (id(vector), like.device, like.dtype)
        moved = self._moved.get(key)
        if moved is None:
            moved = vector.to(device=like.device, dtype=like.dtype)
            self._moved[key] = moved  # one dict assignment: safe under concurrent calls
        return moved

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        call = current_call()
        module = self._linear(call)
        out = self._run(module, x, *args, **kwargs)
        if call is None or x.ndim != 3:
            return out
        rows = x.shape[0]
        image = None
        delta = None
        for patch, layer_key in self.edits:
            direction = patch.vectors.get(layer_key)
            if direction is None:
                continue
            alphas = patch.alphas_for_call(call, rows, x.device)
            if alphas is None:
                continue
            if image is None:
                image = self.token_rows(call, x.shape[1])
                z = x[:, image]  # (rows, image tokens, d): the image tokens' attention input
            # Chained edits add up as chained UNet attn1 patches do: each sees the input the previous shifted.
            d = direction_delta(z if delta is None else z + delta, self._vector(direction, x), alphas, patch.scale)
            delta = d if delta is None else delta + d
        if delta is None:
            return out
        # W d through the module itself: [d ; 0] -> (W d + b, b), (rows + 1, 1, out_features).
        probe = torch.cat([delta, torch.zeros_like(delta[:1])], dim=0)
        both = self._run(module, probe)
        start, stop = self.columns
        shift = both[:rows, :, start:stop] - both[rows:, :, start:stop]
        out[:, image, start:stop] += shift.to(out.dtype)
        return out
