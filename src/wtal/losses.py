"""Masked pooling over time, video-level cross-entropy, the co-activity similarity loss and a
gradient-scaling op.

Shapes: B videos, T snippets (padded), K channels. ``mask`` is ``[B, T]`` bool,
True on real snippets; padded snippets never enter a pooled value or its
gradient. Every video is expected to have at least one real snippet (one
without any pools to 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

COACTIVITY_MARGIN = 0.5  # hinge margin of the co-activity similarity loss [W-TALC, CO2-Net code]
COSINE_EPS = 1e-12  # floor of |u| |v| in a cosine, keeps an all-zero feature finite [ours]


def _expand(mask: Tensor, x: Tensor) -> Tensor:
    """mask [B, T] -> [B, T, 1, ...] broadcastable against x [B, T, ...]."""
    return mask.reshape(mask.shape + (1,) * (x.dim() - 2))


def topk_mean(x: Tensor, mask: Tensor, r: int, ceil: bool = False) -> Tensor:
    """Mean of the k largest real values over time, k = max(1, T_real // r) per video
    (``ceil``: k = max(1, ceil(T_real / r)), W-TALC's rule).

    x [B, T, ...], mask [B, T] -> [B, ...]; each channel picks its own top k.
    """
    lengths = mask.sum(1)  # [B]
    extra = r - 1 if ceil else 0
    k = torch.clamp((lengths + extra) // r, min=1)  # [B]
    k_max = max(1, (x.shape[1] + extra) // r)  # bounds every k without a device sync
    top = x.masked_fill(~_expand(mask, x), float("-inf")).topk(k_max, dim=1).values  # [B, k_max, ...]
    rank = torch.arange(k_max, device=x.device)
    keep = (rank < k[:, None]) & (rank < lengths[:, None])  # [B, k_max]
    top = torch.where(_expand(keep, top), top, torch.zeros((), dtype=x.dtype, device=x.device))
    return top.sum(1) / k.reshape(k.shape + (1,) * (top.dim() - 2)).to(x.dtype)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over the real snippets: x [B, T, ...], mask [B, T] -> [B, ...]."""
    m = _expand(mask, x)
    total = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    count = m.sum(1).clamp(min=1).to(x.dtype)
    return total / count


def masked_min(x: Tensor, mask: Tensor) -> Tensor:
    """Minimum over the real snippets: x [B, T, ...], mask [B, T] -> [B, ...]."""
    m = _expand(mask, x)
    low = torch.where(m, x, torch.full((), float("inf"), dtype=x.dtype, device=x.device)).amin(1)
    return torch.where(torch.isinf(low), torch.zeros_like(low), low)


def video_cross_entropy(logits: Tensor, target: Tensor, eps: float = 0.0) -> Tensor:
    """Cross-entropy of softmax(logits) against the target normalised to sum 1, averaged over videos.

    logits [B, K], target [B, K] non-negative (multi-hot) -> scalar. A target
    row of zeros contributes 0. ``eps`` is added to each row's sum before dividing
    (CO2-Net's code uses 1e-4, so its targets sum to slightly less than 1).
    """
    target = target / (target.sum(-1, keepdim=True) + eps).clamp(min=1e-8)
    return -(target * torch.log_softmax(logits, dim=-1)).sum(-1).mean()


def _cosine_distance(u: Tensor, v: Tensor) -> Tensor:
    """1 - cosine of u and v [P, H, K] over H -> [P, K]."""
    return 1 - (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)).clamp(min=COSINE_EPS)


def co_activity_loss(features: Tensor, logits: Tensor, labels: Tensor, mask: Tensor, pairs: int) -> Tensor:
    """The co-activity similarity loss of W-TALC (also CO2-Net's) over the same-class pairs
    (2i, 2i+1), i < ``pairs``, at the start of the batch.

    features [B, T, H], logits [B, T, K], labels [B, K] multi-hot (0 for a background channel),
    mask [B, T] -> scalar. Per video and channel, attention over its real snippets
    ``A = softmax_t(logits)``; high- and low-attention features ``Hf = X^T A`` and
    ``Lf = X^T (1 - A) / max(T_real - 1, 1)`` [H, K]; with ``d = 1 - cos``:
    ``0.5 [d(Hf_a, Hf_b) - d(Hf_a, Lf_b) + 0.5]_+ + 0.5 [d(Hf_a, Hf_b) - d(Hf_b, Lf_a) + 0.5]_+``
    summed over the pairs' shared channels and divided by their number. Uses
    ``min(pairs, B // 2)`` pairs; 0 when no pair shares a channel (the authors' code divides 0 by 0).
    """
    pairs = min(pairs, features.shape[0] // 2)
    if pairs == 0:
        return logits.new_zeros(())
    n = 2 * pairs
    x, s, y, m = features[:n], logits[:n], labels[:n], mask[:n]
    pad = ~m[..., None]  # [2P, T, 1]
    attention = torch.softmax(s.masked_fill(pad, float("-inf")), dim=1)  # [2P, T, K], 0 on padding
    others = (m.sum(1) - 1).clamp(min=1).to(s.dtype)  # [2P]
    x = x.masked_fill(pad, 0.0)
    high = torch.einsum("bth,btk->bhk", x, attention)  # [2P, H, K]
    low = torch.einsum("bth,btk->bhk", x, (1 - attention).masked_fill(pad, 0.0)) / others[:, None, None]
    high_a, high_b, low_a, low_b = high[0::2], high[1::2], low[0::2], low[1::2]  # [P, H, K]
    d1 = _cosine_distance(high_a, high_b)  # [P, K]
    d2 = _cosine_distance(high_a, low_b)
    d3 = _cosine_distance(high_b, low_a)
    shared = y[0::2] * y[1::2]  # [P, K]
    hinge = 0.5 * F.relu(d1 - d2 + COACTIVITY_MARGIN) + 0.5 * F.relu(d1 - d3 + COACTIVITY_MARGIN)
    return (hinge * shared).sum() / shared.sum().clamp(min=1)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.lam, None


def scale_grad(x: Tensor, lam: float) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``lam`` backward."""
    return _GradScale.apply(x, lam)


class _GradNormTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, norm: Tensor) -> Tensor:
        ctx.save_for_backward(norm)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (norm,) = ctx.saved_tensors
        return grad * (norm / grad.norm().clamp(min=1e-12)), None


def grad_norm_to(x: Tensor, norm: Tensor) -> Tensor:
    """Identity in the forward pass; backward, the incoming gradient rescaled to the norm ``norm``
    (a scalar tensor, detached), its direction kept."""
    return _GradNormTo.apply(x, norm.detach())
