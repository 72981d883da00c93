"""Masked pooling over time, video-level cross-entropy and a gradient-scaling op.

Shapes: B videos, T snippets (padded), K channels. ``mask`` is ``[B, T]`` bool,
True on real snippets; padded snippets never enter a pooled value or its
gradient. Every video is expected to have at least one real snippet (one
without any pools to 0).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _expand(mask: Tensor, x: Tensor) -> Tensor:
    """mask [B, T] -> [B, T, 1, ...] broadcastable against x [B, T, ...]."""
    return mask.reshape(mask.shape + (1,) * (x.dim() - 2))


def topk_mean(x: Tensor, mask: Tensor, r: int) -> Tensor:
    """Mean of the k largest real values over time, k = max(1, T_real // r) per video.

    x [B, T, ...], mask [B, T] -> [B, ...]; each channel picks its own top k.
    """
    lengths = mask.sum(1)  # [B]
    k = torch.clamp(lengths // r, min=1)  # [B]
    k_max = max(1, x.shape[1] // r)  # bounds every k without a device sync
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
