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


def call_linear(path: str, module, call: ModelCall | None):
    """The Linear at `path` of this call: from the BaseModel running it (a multi-GPU copy has its own
    modules); `module` (the one the node saw) when the call's BaseModel is unknown."""
    base = getattr(call, "base_model", None)
    diffusion_model = getattr(base, "diffusion_model", None)
    if diffusion_model is not None:
        try:
            return diffusion_model.get_submodule(path)
        except AttributeError:
            pass
    return module


def run_forward(inner, module, x, *args, **kwargs):
    """The forward an object patch wraps: another pack's patch found there (inner), else the module class's
    forward (the instance's forward is the patch itself)."""
    if inner is not None:
        return inner(x, *args, **kwargs)
    return type(module).forward(module, x, *args, **kwargs)


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
        return call_linear(self.path, self.module, call)

    def _run(self, module, x, *args, **kwargs):
        return run_forward(self.inner, module, x, *args, **kwargs)

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


PREFIX = "diffusion_model."


def install_linear_edits(model, patch, targets) -> None:
    """Apply Latent Direction's object patches on a clone: for every layer key of the patch, targets(key)
    gives [(Linear path in the diffusion model, (start, stop) of its q/k/v output columns, token_rows rule)]
    (FamilyAdapter.attention_inputs); one LinearInputEdit per Linear (a chained Apply node adds its edit to
    the one there)."""
    from .direction_patch import install_window_wrappers

    install_window_wrappers(model)
    for key in patch.vectors:
        for path, columns, rows in targets(key):
            name = f"{PREFIX}{path}.forward"
            existing = model.object_patches.get(name)
            if isinstance(existing, LinearInputEdit):
                forward = existing.with_edit(patch, key)
            else:
                forward = LinearInputEdit(path, columns, rows, ((patch, key),), model.get_model_object(f"{PREFIX}{path}"),
                                          inner=existing)
            model.add_object_patch(name, forward)


class LinearInputProbe:
    """An object-patch forward that shows the image rows of a q/k/v Linear's input, (rows, image tokens, d),
    to observer(layer_key, z, sigma, t) (the call's highest sigma and its timestep) and returns the Linear's
    output unchanged (nothing is edited). Runs whatever forward was there (inner: another pack's object
    patch or an Apply edit), so other patches keep working; z is the input as the model passes it (an
    Apply edit on the same Linear adds its shift inside, after the probe has seen z)."""

    def __init__(self, path: str, layer_key: str, token_rows: TokenRows, observer, module, inner=None):
        self.path = path
        self.layer_key = layer_key
        self.token_rows = token_rows
        self.observer = observer
        self.module = module
        self.inner = inner

    def __deepcopy__(self, memo):
        return self

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        call = current_call()
        if call is not None and x.ndim == 3 and call.sigmas:
            top = max(range(len(call.sigmas)), key=call.sigmas.__getitem__)
            self.observer(self.layer_key, x[:, self.token_rows(call, x.shape[1])], call.sigmas[top],
                          call.timesteps[top])
        return run_forward(self.inner, call_linear(self.path, self.module, call), x, *args, **kwargs)


def install_linear_probes(model, observer, keys, targets) -> None:
    """LinearInputProbe on the first q/k/v Linear of each layer key (the others see the same input) of the
    clone `model`; the window wrappers too (they set current_call)."""
    from .direction_patch import install_window_wrappers

    install_window_wrappers(model)
    for key in keys:
        path, _columns, rows = targets(key)[0]
        name = f"{PREFIX}{path}.forward"
        model.add_object_patch(name, LinearInputProbe(path, key, rows, observer, model.get_model_object(f"{PREFIX}{path}"),
                                                      inner=model.object_patches.get(name)))
