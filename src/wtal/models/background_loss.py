"""The whole-video background loss with background-gradient reinforcement (docs/method.md).

It forces the whole video (scores pooled over every real snippet: their mean, or the base's top-k)
to the background channel, the last of [B, T, C+1] scores, against the base's own foreground loss.
``reading`` says how lambda reinforces its gradient: A multiplies the loss's gradient by lambda; B
takes the value against the target ``[y, 1]`` (the video's classes and background) with the
pure-background gradient; C forces each snippet
(lambda x the per-snippet cross-entropy); D multiplies by lambda only the gradient that reaches the
background channel. Under A and C, lambda scales the gradient exactly as ``bg_weight`` does, so only
their product matters. The model adds ``ramp * bg_weight * L_bg`` to its base's loss, ``ramp`` rising
linearly from 0 to 1 over the first ``bg_warmup`` of training and, with ``bg_anneal``, falling back
to 0 over its last part. ``bg_balance="gradnorm"`` rescales,
each step, the loss's gradient at the forced scores to ``ramp * bg_weight`` times the norm of the
base loss's gradient at the same scores (its direction kept).

Shapes: B videos, T snippets, C action classes; ``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wtal.losses import grad_norm_to, masked_mean, scale_grad, topk_mean, video_cross_entropy
from wtal.models.registry import ConfigChecks

BACKGROUND_CHOICES = {
    "bg_input": ("cas", "cas_fg"),
    "bg_pool": ("mean", "topk"),
    "reading": ("A", "B", "C", "D"),
    "bg_balance": ("none", "gradnorm"),
}


@dataclass
class BackgroundLossConfig(ConfigChecks):
    """The background loss's settings (``model.*`` keys of the paper's model)."""

    bg_loss: bool = True  # whole-video background loss on (false: without it) [ours]
    bg_input: str = "cas"  # scores forced to background: cas (the classifier's) | cas_fg (attention-suppressed) [ours]
    bg_pool: str = "mean"  # background pooling over real snippets: mean | topk (the base's top-k ratio) [ours]
    reading: str = "A"  # reinforcement: A grad-scale | B [y, 1] value, bg gradient | C per snippet | D bg channel [ours]
    lam: float = 1.0  # reinforcement lambda (A, C: gradient-equivalent to bg_weight * lam; D: bg channel only) [ours]
    bg_balance: str = "none"  # none | gradnorm: bg gradient at the forced scores = bg_weight x the base's [ours]
    bg_weight: float = 0.03  # weight of the background loss (reports/README.md: where it was measured) [ours]
    bg_warmup: float = 0.5  # fraction of training over which bg_weight ramps up linearly from 0 [ours]
    bg_anneal: float = 0.0  # fraction of training at its end over which bg_weight falls linearly to 0 (0: none) [ours]

    def validate(self, source: str = "config", prefix: str = "model") -> None:
        self.check(
            source,
            prefix=prefix,
            choices=BACKGROUND_CHOICES,
            positive=("lam",),
            non_negative=("bg_weight",),
            flags=("bg_loss",),
        )
        for key in ("bg_warmup", "bg_anneal"):
            if not 0 <= getattr(self, key) <= 1:
                self.fail(source, key, "a fraction in [0, 1]", prefix)

    def ramp(self, progress: float) -> float:
        """The weight's share at ``progress`` (the fraction of training done): rising 0 -> 1 over the
        first ``bg_warmup``, falling 1 -> 0 over the last ``bg_anneal`` (the lower of the two)."""
        rise = min(1.0, progress / self.bg_warmup) if self.bg_warmup > 0 else 1.0
        fall = min(1.0, (1.0 - progress) / self.bg_anneal) if self.bg_anneal > 0 else 1.0
        return min(rise, fall)


def forced_scores(parts: list[Tensor], base_total: Tensor, weight: float, cfg: BackgroundLossConfig) -> Tensor:
    """The scores to force, [B, T, C+1]: ``parts`` (outputs of the base) concatenated; under
    ``bg_balance="gradnorm"`` with a gradient scaled to ``weight`` times the norm of ``base_total``'s
    gradient at ``parts``."""
    forced = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
    if cfg.bg_balance == "gradnorm" and forced.requires_grad:
        grads = torch.autograd.grad(base_total, parts, retain_graph=True, allow_unused=True)
        base_norm = sum((g.square().sum() for g in grads if g is not None), forced.new_zeros(())).sqrt()
        forced = grad_norm_to(forced, weight * base_norm)
    return forced


def background_loss(s: Tensor, labels: Tensor, mask: Tensor, cfg: BackgroundLossConfig, topk_ratio: int) -> Tensor:
    """Whole video as background under ``cfg.reading``: s [B, T, C+1], labels [B, C] -> scalar;
    ``topk_ratio`` is the base's r (``bg_pool="topk"``: k = max(1, T // r))."""
    if cfg.reading == "C":
        per_snippet = -torch.log_softmax(s, -1)[..., -1]  # [B, T], CE toward background
        return cfg.lam * masked_mean(per_snippet, mask).mean()

    def pool(z: Tensor) -> Tensor:  # [B, T, C+1] -> [B, C+1]
        return masked_mean(z, mask) if cfg.bg_pool == "mean" else topk_mean(z, mask, topk_ratio)

    background = torch.zeros_like(s[:, 0])  # [B, C+1] = [0, ..., 0, 1]
    background[:, -1] = 1
    if cfg.reading == "A":
        return video_cross_entropy(pool(scale_grad(s, cfg.lam)), background)
    if cfg.reading == "D":
        s = torch.cat([s[..., :-1], scale_grad(s[..., -1:], cfg.lam)], -1)
        return video_cross_entropy(pool(s), background)
    pooled = pool(s)
    pure = video_cross_entropy(pooled, background)
    with_background = torch.cat([labels, labels.new_ones(labels.shape[0], 1)], 1)  # [y, 1]
    bas_loss = video_cross_entropy(pooled, with_background)
    return bas_loss.detach() + pure - pure.detach()  # value of [y, 1], gradient of [0, 1]
