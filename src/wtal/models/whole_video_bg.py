"""Forcing the whole video as background (Li et al., ACM MM 2022), as reconstructed in docs/method.md.

Network: embedding -> temporal enhancement network (TEN: base branch + temporal
continuity branch) -> attention ``a`` and class scores ``S`` with a background
channel (last); attention-suppressed scores ``S_fg = a * (S - min S) + min S``, the
minimum taken over the C+1 classes of each snippet (``suppress_min="class"``, what
the CO2-Net code does) or over the real snippets of each channel (``"time"``).

Loss: ``L_fg + beta * L_bg + alpha * L_norm`` where ``L_fg`` is the cross-entropy
of top-k pooled ``S_fg`` against ``normalize([y, 0])``, ``L_bg`` forces the whole
video (``S`` pooled over every real snippet) to the background class with
background gradient reinforcement (``reading`` A, B or C), and ``L_norm`` is the
mean attention.

What we measured while choosing the defaults (synthetic THUMOS14 and tiny presets):
* under readings A and C, lambda multiplies the background gradient exactly as beta
  does, so only the product beta * lambda matters; reading B ignores lambda and its
  backward is reading A's at lambda = 1, so it trains exactly as A with lambda = 1
  (only the logged loss value differs);
* the competition has a collapse mode: once the background force beats the
  foreground force, the attention saturates (all 0 or all 1) and localization
  fails. beta = 1 collapsed at every lambda, beta >= 0.1 collapsed on the thumos14
  preset; beta = 0.03 ramped in over the first half of training (``bg_warmup``)
  did not, and beat the model without the background loss in that run;
* alpha = 0.8 (CO2-Net's scale) drove the attention to 0 even without the
  background loss; alpha = 0.1 did not.
The ablation report (reports/thumos14_synthetic_report, 3 seeds, demo cut) kept these:
the background loss helps with the full TEN (+4.6 ± 1.9 avg mAP), lambda > 1 does
not (lambda 5 and 10 collapse), reading C is ahead of A by +3.7 ± 2.4 (within 2
standard errors, so A stays the default).

Shapes: B videos, T snippets, D feature width, C action classes,
H ``embed_dim``; ``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import masked_mean, masked_min, scale_grad, topk_mean, video_cross_entropy
from wtal.models.base import WtalModel
from wtal.models.registry import ModelConfig, register_model

NEGATIVE_SLOPE = 0.2  # LeakyReLU slope [base: CO2-Net]
DILATIONS = (1, 2, 4)  # continuity="dilated": a stack of k=3 convs with these dilations

_CHOICES = {
    "ten": ("both", "base", "continuity"),
    "continuity": ("local_affinity", "dilated", "nonlocal"),
    "fusion": ("sum", "concat"),
    "bg_pool": ("mean", "topk"),
    "reading": ("A", "B", "C"),
    "suppress_min": ("class", "time"),
    "bg_input": ("cas", "cas_fg"),
}


@dataclass
class WholeVideoBgConfig(ModelConfig):
    name: str = "whole_video_bg"
    embed_dim: int = 2048  # width H of the embedding and the TEN [base]
    attention_dim: int = 512  # hidden width of the attention head [base]
    dropout: float = 0.7  # dropout after the embedding and before the classifier [base]
    attention_dropout: float = 0.5  # dropout inside the attention head [base]
    ten: str = "both"  # TEN branches: both | base | continuity [ours]
    continuity: str = "local_affinity"  # continuity branch: local_affinity | dilated | nonlocal [ours]
    window: int = 2  # local_affinity: neighbours with |t - j| <= window [ours]
    tau: float = 0.1  # temperature of the affinity softmax (local_affinity, nonlocal) [ours]
    fusion: str = "sum"  # ten=both: sum of the branches | concat (1x1 conv over both) [ours]
    suppress_min: str = "class"  # min S in S_fg: class (per snippet, CO2-Net code) | time (method.md) [ours]
    topk_r: int = 7  # top-k pooling, k = max(1, T_real // topk_r): 7 THUMOS14, 5 ActivityNet [base]
    bg_loss: bool = True  # whole-video background loss on (false: ablation B0) [ours]
    bg_input: str = "cas"  # scores forced to background: cas (S) | cas_fg (S_fg) [ours]
    bg_pool: str = "mean"  # background pooling of S over real snippets: mean | topk (topk_r) [ours]
    reading: str = "A"  # reinforcement: A grad-scale | B BaS-Net value, bg gradient | C per snippet [ours]
    lam: float = 1.0  # reinforcement lambda (A, C; B ignores it): gradient-equivalent to beta * lam [ours]
    alpha: float = 0.1  # weight of the attention sparsity loss (0.8 at CO2-Net scale collapsed it here) [ours]
    beta: float = 0.03  # weight of the background loss; >= 0.1 collapsed the attention here [ours]
    bg_warmup: float = 0.5  # fraction of training over which beta ramps up linearly from 0 [ours]

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``model.<field>`` for a bad choice or range."""
        self.check(
            source,
            choices=_CHOICES,
            counts=("embed_dim", "attention_dim", "window", "topk_r"),
            positive=("tau", "lam"),
            non_negative=("alpha", "beta"),
            probabilities=("dropout", "attention_dropout"),
            flags=("bg_loss",),
        )
        if not 0 <= self.bg_warmup <= 1:
            self.fail(source, "bg_warmup", "a fraction in [0, 1]")


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _conv(conv: nn.Conv1d, x: Tensor, m: Tensor) -> Tensor:
    """x [B, H, T], m [B, 1, T] float: zero padded snippets so they never reach a real one."""
    return conv(x * m)


@register_model("whole_video_bg", WholeVideoBgConfig)
class WholeVideoBackground(WtalModel):
    """Embedding + TEN + attention + (C+1)-way classifier, trained with the whole video as background."""

    def __init__(self, cfg: WholeVideoBgConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        h = cfg.embed_dim
        self.embed = nn.Conv1d(in_dim, h, 3, padding=1)
        self.base = nn.Conv1d(h, h, 3, padding=1) if cfg.ten != "continuity" else None
        self.dilated = self.phi = None
        if cfg.ten != "base" and cfg.continuity == "dilated":
            self.dilated = nn.ModuleList(nn.Conv1d(h, h, 3, padding=d, dilation=d) for d in DILATIONS)
        elif cfg.ten != "base":
            self.phi = nn.Conv1d(h, h, 1)
        self.fuse = nn.Conv1d(2 * h, h, 1) if cfg.ten == "both" and cfg.fusion == "concat" else None
        self.attention_hidden = nn.Conv1d(h, cfg.attention_dim, 3, padding=1)
        self.attention_out = nn.Conv1d(cfg.attention_dim, 1, 1)
        self.classifier = nn.Conv1d(h, num_classes + 1, 1)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention_dropout = nn.Dropout(cfg.attention_dropout)

    def _continuity(self, e: Tensor, mask: Tensor, m: Tensor) -> Tensor:
        """Temporal continuity branch: e [B, H, T] -> [B, H, T]."""
        if self.dilated is not None:
            for conv in self.dilated:
                e = _act(_conv(conv, e, m))
            return e
        unit = F.normalize(e * m, dim=1)  # [B, H, T]
        logits = torch.bmm(unit.transpose(1, 2), unit) / self.cfg.tau  # [B, T(t), T(j)] cosine affinity
        t = torch.arange(e.shape[2], device=e.device)
        allowed = mask[:, None, :]  # only real neighbours j
        if self.cfg.continuity == "local_affinity":
            allowed = allowed & ((t[:, None] - t[None, :]).abs() <= self.cfg.window)
        allowed = allowed | torch.eye(len(t), dtype=torch.bool, device=e.device)  # keeps padded rows finite
        affinity = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        return torch.bmm(self.phi(e), affinity.transpose(1, 2))  # Cc_t = sum_j A[t, j] phi(E_j)

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention [B, T], cas_logits S and cas_fg_logits S_fg
        [B, T, C+1], embedding and fused TEN features [B, T, H]."""
        m = mask[:, None, :].to(features.dtype)  # [B, 1, T]
        e = self.dropout(_act(_conv(self.embed, features.transpose(1, 2), m)))  # [B, H, T]
        branches = []
        if self.base is not None:
            branches.append(_act(_conv(self.base, e, m)))
        if self.cfg.ten != "base":
            branches.append(self._continuity(e, mask, m))
        if len(branches) == 1:
            f = branches[0]
        elif self.fuse is not None:
            f = self.fuse(torch.cat(branches, 1))
        else:
            f = branches[0] + branches[1]
        hidden = self.attention_dropout(_act(_conv(self.attention_hidden, f, m)))
        attention = torch.sigmoid(self.attention_out(hidden)).squeeze(1)  # [B, T]
        s = self.classifier(self.dropout(f)).transpose(1, 2)  # [B, T, C+1]
        if self.cfg.suppress_min == "class":
            s_min = s.amin(-1, keepdim=True)  # [B, T, 1]: a -> 0 makes a snippet class-neutral
        else:
            s_min = masked_min(s, mask)[:, None, :]  # [B, 1, C+1], over real snippets only
        s_fg = attention[..., None] * (s - s_min) + s_min
        return {
            "attention": attention,
            "cas_logits": s,
            "cas_fg_logits": s_fg,
            "embedding": e.transpose(1, 2),
            "ten_features": f.transpose(1, 2),
        }

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "fg", "bg", "norm"} scalars."""
        cfg = self.cfg
        s = outputs["cas_logits"]
        actions_only = torch.cat([labels, labels.new_zeros(labels.shape[0], 1)], 1)  # [y, 0]
        fg = video_cross_entropy(topk_mean(outputs["cas_fg_logits"], mask, cfg.topk_r), actions_only)
        s_bg = s if cfg.bg_input == "cas" else outputs["cas_fg_logits"]
        bg = self._background_loss(s_bg, labels, mask) if cfg.bg_loss else s.new_zeros(())
        norm = masked_mean(outputs["attention"], mask).mean()
        ramp = min(1.0, self.progress / cfg.bg_warmup) if cfg.bg_warmup > 0 else 1.0
        total = fg + ramp * cfg.beta * bg + cfg.alpha * norm
        return {"total": total, "fg": fg, "bg": bg, "norm": norm}

    def _background_loss(self, s: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Whole video as background, with the configured gradient reinforcement; s [B, T, C+1]."""
        cfg = self.cfg
        if cfg.reading == "C":
            per_snippet = -torch.log_softmax(s, -1)[..., -1]  # [B, T], CE toward background
            return cfg.lam * masked_mean(per_snippet, mask).mean()

        def pool(z: Tensor) -> Tensor:  # [B, T, C+1] -> [B, C+1]
            return masked_mean(z, mask) if cfg.bg_pool == "mean" else topk_mean(z, mask, cfg.topk_r)

        background = torch.zeros_like(s[:, 0])  # [B, C+1] = [0, ..., 0, 1]
        background[:, -1] = 1
        if cfg.reading == "A":
            return video_cross_entropy(pool(scale_grad(s, cfg.lam)), background)
        pooled = pool(s)
        pure = video_cross_entropy(pooled, background)
        with_background = torch.cat([labels, labels.new_ones(labels.shape[0], 1)], 1)  # [y, 1]
        bas_loss = video_cross_entropy(pooled, with_background)
        return bas_loss.detach() + pure - pure.detach()  # value of [y, 1], gradient of [0, 1]

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]; cas [B, T, C]: softmax of S_fg over all C+1 channels, action channels;
        video_scores [B, C]: softmax over the C action channels of the top-k mean of S_fg
        (k = max(1, T_real // video_topk_divisor)). The background channel, high everywhere after
        training, never enters video scores. Padded positions are 0."""
        m = mask.to(outputs["attention"].dtype)
        s_fg = outputs["cas_fg_logits"]
        actions = s_fg[..., :-1]
        return {
            "attention": outputs["attention"] * m,
            "cas": torch.softmax(s_fg, -1)[..., :-1] * m[..., None],
            "video_scores": torch.softmax(topk_mean(actions, mask, video_topk_divisor), -1),
        }
