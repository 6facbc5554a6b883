"""The training objective on relaxed codes t = tanh(logits) of the two views of each image.

InfoNCE over the batch and a queue of past codes (many negatives), KoLeo (spreads codes apart),
the hash terms that make t binary-friendly (quantisation, bit balance, bit decorrelation), and an
optional supervised cross-entropy on labelled images; ``total_loss`` weighs them by the config.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from encoders.train_config import TrainConfig


def info_nce(z1: torch.Tensor, z2: torch.Tensor, queue: torch.Tensor | None, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE: each view's positive is its partner; other views (+ queue) are negatives."""
    z = torch.cat([z1, z2])
    n = z1.shape[0]
    sim = z @ z.T / tau
    sim.fill_diagonal_(float("-inf"))
    if queue is not None and len(queue):
        sim = torch.cat([sim, z @ queue.T / tau], dim=1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def koleo(z: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Kozachenko-Leonenko differential-entropy estimator (negated): pushes nearest neighbours apart."""
    with torch.no_grad():
        d = z @ z.T
        d.fill_diagonal_(-2)
        nn_idx = d.argmax(dim=1)
    dist = (z - z[nn_idx]).norm(dim=1)
    return -torch.log(dist + eps).mean()


def hash_terms(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(quantisation, bit balance, decorrelation) on relaxed codes t in (-1, 1)."""
    quant = (t.abs() - 1).pow(2).mean()
    balance = t.mean(0).pow(2).mean()
    c = t - t.mean(0)
    cov = c.T @ c / max(1, t.shape[0] - 1)
    std = cov.diagonal().clamp(min=1e-6).sqrt()
    corr = cov / (std[:, None] * std[None, :])
    off = corr - torch.diag(corr.diagonal())
    decor = off.pow(2).sum() / (t.shape[1] * (t.shape[1] - 1))
    return quant, balance, decor


def total_loss(t: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor,
               queue: torch.Tensor | None, clf: torch.nn.Module | None,
               cfg: TrainConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted objective -> (loss, {"nce", "koleo", "quant", "balance", "decor", "sup"}).

    ``t`` holds both views' codes (first half, second half), ``z1``/``z2`` their normalised halves
    and ``y`` the labels of the pairs (-1 unlabelled); the supervised term needs ``clf``.
    """
    l_nce = info_nce(z1, z2, queue, cfg.temperature)
    l_ko = koleo(torch.cat([z1, z2]))
    quant, balance, decor = hash_terms(t)
    loss = l_nce + cfg.w_koleo * l_ko + cfg.w_quant * quant + cfg.w_balance * balance + cfg.w_decor * decor
    l_sup = torch.zeros((), device=t.device)
    yy = torch.cat([y, y]).to(t.device)
    if clf is not None and (yy >= 0).any():
        l_sup = F.cross_entropy(clf(t[yy >= 0]), yy[yy >= 0])
        loss = loss + cfg.w_supervised * l_sup
    return loss, {"nce": l_nce, "koleo": l_ko, "quant": quant, "balance": balance, "decor": decor, "sup": l_sup}
