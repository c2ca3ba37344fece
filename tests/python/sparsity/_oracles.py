"""Float64 oracles of SparseGPT (Frantar & Alistarh 2023, Algorithm 1 with N:M groups, as the
IST-DASLab reference states it) and Wanda (Sun et al. 2023), written with plain torch ops and
sharing no code with mopt."""

from __future__ import annotations

import torch


def hessian(xs: list[torch.Tensor]) -> torch.Tensor:
    """H = 2/n sum_t x_t x_t^T over every row of the [tokens, cols] inputs, float64."""
    x = torch.cat([a.double().reshape(-1, a.shape[-1]) for a in xs])
    return 2.0 / x.shape[0] * x.t() @ x


def sparsegpt(w: torch.Tensor, h: torch.Tensor, n: int, m: int, damp: float = 0.1,
              update: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, weight) of SparseGPT on w [rows, cols] with Hessian h, all in float64: dead inputs
    get H_jj = 1, H += damp * mean(diag H) I, U = chol(H^-1) upper; per group of m columns keep
    the n largest w^2 / U_jj^2 of the weights updated so far, propagate (w - q) / U_jj."""
    w = w.double().clone()
    h = h.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    original = w.clone()
    rows, cols = w.shape
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for j in range(cols):
        if j % m == 0:
            err = w[:, j:j + m] ** 2 / torch.diag(u)[j:j + m] ** 2
            keep = torch.topk(err, n, dim=1, largest=True).indices  # ties: any order is valid
            mask[:, j:j + m].scatter_(1, keep, True)
        q = torch.where(mask[:, j], w[:, j], torch.zeros_like(w[:, j]))
        e = (w[:, j] - q) / u[j, j]
        w[:, j:] -= e.unsqueeze(1) * u[j, j:].unsqueeze(0)
        w[:, j] = q
    return mask, (w if update else original * mask)


def wanda(w: torch.Tensor, xs: list[torch.Tensor], n: int, m: int) -> torch.Tensor:
    """Wanda's N:M mask: keep the n largest |W_ij| * ||X_j||_2 of each group of m inputs."""
    x = torch.cat([a.double().reshape(-1, a.shape[-1]) for a in xs])
    score = w.double().abs() * x.norm(dim=0).unsqueeze(0)
    rows, cols = w.shape
    g = score.reshape(rows, cols // m, m)
    keep = torch.topk(g, n, dim=2).indices
    mask = torch.zeros_like(g, dtype=torch.bool).scatter_(2, keep, True)
    return mask.reshape(rows, cols)


def magnitude(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    rows, cols = w.shape
    g = w.double().abs().reshape(rows, cols // m, m)
    keep = torch.topk(g, n, dim=2).indices
    return torch.zeros_like(g, dtype=torch.bool).scatter_(2, keep, True).reshape(rows, cols)


def holds_pattern(w: torch.Tensor, n: int, m: int) -> bool:
    """Every group of m consecutive inputs of a [rows, cols] weight has at most n nonzeros."""
    rows, cols = w.shape
    return bool(((w.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())
