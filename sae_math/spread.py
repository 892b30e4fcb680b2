"""Statistics of the attention input along edit directions: what each alpha scale multiplies alpha by.

For one layer and its probed directions n (unit rows of an (m, d) tensor), accumulated over every model
evaluation it is shown:
  token_norm   mean over rows of the mean token norm ||z|| ('relative to token norm' multiplies by it)
  rms          sqrt(E[(z . n)^2]) over all tokens, rows and evaluations (the paper's whitening: 1)
  std          the standard deviation of z . n over the same (centred: the spread of the coordinate)
  mean         E[z . n]
  row_rms      mean over rows of sqrt(mean over the row's tokens of (z . n)^2): what 'relative to spread
               along n' multiplies alpha by, row by row
z is the self-attention input of the image tokens, (rows, tokens, d): the UNet's attn1 input, a DiT's q/k/v
Linear input rows of the image tokens (text, pad and reference tokens excluded). Pure torch."""

from __future__ import annotations

import torch


class SpreadStatistics:
    """Running sums for one layer; add() once per evaluation, result() at the end."""

    def __init__(self):
        self.count = 0  # tokens seen (rows * tokens summed over evaluations)
        self.rows = 0
        self.evaluations = 0
        self.sum = None  # (m,) float64
        self.sq = None
        self.row_rms = None
        self.token_norm = 0.0

    def add(self, z: torch.Tensor, directions: torch.Tensor) -> None:
        """z: (rows, tokens, d); directions: (m, d) unit rows."""
        z = z.detach().float()
        p = z @ directions.to(z).T  # (rows, tokens, m)
        sums = (p.sum(dim=(0, 1)).double(), p.square().sum(dim=(0, 1)).double(),
                p.square().mean(dim=1).sqrt().sum(dim=0).double())
        if self.sum is None:
            self.sum, self.sq, self.row_rms = (s.cpu() for s in sums)
        else:
            self.sum += sums[0].cpu()
            self.sq += sums[1].cpu()
            self.row_rms += sums[2].cpu()
        self.count += p.shape[0] * p.shape[1]
        self.rows += p.shape[0]
        self.evaluations += 1
        self.token_norm += float(torch.linalg.vector_norm(z, dim=-1).mean(dim=-1).sum())

    def result(self) -> dict:
        """{token_norm, rms (m,), std (m,), mean (m,), row_rms (m,), evaluations, tokens} (lists)."""
        mean = self.sum / self.count
        sq = self.sq / self.count
        return {"token_norm": self.token_norm / self.rows, "rms": sq.sqrt().tolist(),
                "std": (sq - mean.square()).clamp_min(0).sqrt().tolist(), "mean": mean.tolist(),
                "row_rms": (self.row_rms / self.rows).tolist(), "evaluations": self.evaluations,
                "tokens": self.count}
