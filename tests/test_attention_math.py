"""Pure per-call math of the attention patches (no ComfyUI needed): row tiling and the direction delta."""

import pytest
import torch

from sae_math import attention_rows, direction_math


@pytest.mark.parametrize(("rows", "unet_rows", "tiles"), [(4, 4, 1), (16, 4, 4), (6, 2, 3)])
def test_tiles_per_unet_row_counts_the_split(rows, unet_rows, tiles):
    """HyperTile-style splits give rows = UNet rows x tiles; no original_shape means no split."""
    assert attention_rows.tiles_per_unet_row(rows, (unet_rows, 320, 8, 8), "Node") == tiles
    assert attention_rows.tiles_per_unet_row(rows, None, "Node") == 1


@pytest.mark.parametrize(("rows", "unet_rows"), [(6, 4), (3, 0)])
def test_tiles_per_unet_row_names_node_and_counts_when_it_cannot_follow(rows, unet_rows):
    with pytest.raises(ValueError, match=rf"^Self-Attention Swap: self-attention has {rows} rows for {unet_rows} UNet"):
        attention_rows.tiles_per_unet_row(rows, (unet_rows, 4, 8, 8), "Self-Attention Swap")


def test_direction_delta_is_alpha_times_mean_token_norm_times_direction():
    """Relative scale: alpha * (mean over tokens of ||z_token||) * n, per row; absolute: alpha * n."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((3, 10, 16), generator=gen, dtype=torch.float64)
    n = torch.nn.functional.normalize(torch.randn(16, generator=gen, dtype=torch.float64), dim=0)
    alphas = torch.tensor([0.5, 0.0, -0.25])
    expected = torch.stack([a * z[r].norm(dim=-1).mean() * n for r, a in enumerate(alphas.tolist())])[:, None, :]
    delta = direction_math.direction_delta(z, n.float(), alphas, scale="token_norm")
    assert delta.shape == (3, 1, 16) and delta.dtype == torch.float64
    torch.testing.assert_close(delta, expected, rtol=1e-6, atol=1e-7)  # n went through float32
    absolute = direction_math.direction_delta(z, n.float(), alphas, scale="absolute")
    torch.testing.assert_close(absolute, (alphas.double()[:, None] * n)[:, None, :], rtol=1e-6, atol=1e-7)


def test_direction_delta_relative_to_spread_is_alpha_times_rms_along_n():
    """Spread scale: alpha * sqrt(mean over the row's tokens of (z . n)^2) * n, per row: it does not depend on
    z's components orthogonal to n, and a whitened input (unit RMS along n) gets the paper's alpha * n. The
    node's three options map to the three modes; the two old flags (True/False) still mean what they did."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn((3, 12, 16), generator=gen, dtype=torch.float64)
    n = torch.nn.functional.normalize(torch.randn(16, generator=gen, dtype=torch.float64), dim=0)
    alphas = torch.tensor([0.5, 0.0, -2.0])
    rms = (z @ n).square().mean(dim=-1).sqrt()
    delta = direction_math.direction_delta(z, n.float(), alphas, scale="spread")
    torch.testing.assert_close(delta, (alphas.double() * rms)[:, None, None] * n, rtol=1e-6, atol=1e-7)
    orthogonal = z - 3.0 * torch.randn(16, generator=gen, dtype=torch.float64)  # any shift ...
    orthogonal = orthogonal - (orthogonal @ n)[..., None] * n + (z @ n)[..., None] * n  # ... off n
    torch.testing.assert_close(direction_math.direction_delta(orthogonal, n.float(), alphas, scale="spread"), delta)
    assert set(direction_math.SCALE_MODES.values()) == {"token_norm", "absolute", "spread"}
    assert direction_math.SCALES[:2] == ("relative to token norm", "absolute (paper)")  # saved workflows
    torch.testing.assert_close(direction_math.direction_delta(z, n.float(), alphas, True),
                               direction_math.direction_delta(z, n.float(), alphas, "token_norm"))
    with pytest.raises(ValueError, match="unknown alpha scale"):
        direction_math.direction_delta(z, n.float(), alphas, "bogus")


def test_direction_delta_on_half_precision_does_not_overflow():
    """fp16 activations whose sum of squares exceeds fp16's range (65504) still get a finite, correct scale."""
    z = torch.full((2, 4, 64), 100.0, dtype=torch.float16)  # each token norm 800, sum of squares 640000
    n = torch.zeros(64)
    n[0] = 1.0
    delta = direction_math.direction_delta(z, n, torch.tensor([0.1, 1.0]), scale="token_norm")
    assert delta.dtype == torch.float16 and torch.isfinite(delta).all()
    assert delta[:, 0, 0].tolist() == [80.0, 800.0]
