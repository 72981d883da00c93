"""The plain network: our embedding, attention head and (C+1)-way classifier, a base for the paper's parts.

``E = Dropout(act(conv_k3(X)))`` [B, H, T]; attention ``a = sigmoid(conv_k1(Dropout(act(conv_k3(F)))))``
and class scores ``S = conv_k1(Dropout(F))`` over C+1 channels (background last), both read from the
features ``F`` (``E``, or what the ``enhance`` hook makes of it); attention-suppressed scores
``S_fg = a * (S - min S) + min S``, the minimum taken over the C+1 classes of each snippet
(``suppress_min="class"``, what the CO2-Net code does) or over the real snippets of each channel
(``"time"``, docs/method.md). Loss ``L_fg + norm_weight * L_norm``: ``L_fg`` is the cross-entropy
of top-k pooled ``S_fg`` against ``normalize([y, 0])``, ``L_norm`` the mean attention.
The network of docs/method.md before the paper's parts; not a published baseline.

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import masked_mean, masked_min, topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.models.registry import ModelConfig, register_model

NEGATIVE_SLOPE = 0.2  # LeakyReLU slope [CO2-Net]


@dataclass
class PlainConfig(ModelConfig):
    name: str = "plain"
    embed_dim: int = 2048  # width H of the embedding [method.md]
    attention_dim: int = 512  # hidden width of the attention head [method.md]
    dropout: float = 0.7  # dropout after the embedding and before the classifier [method.md]
    attention_dropout: float = 0.5  # dropout inside the attention head [method.md]
    suppress_min: str = "class"  # min S in S_fg: class (per snippet, CO2-Net code) | time (method.md) [ours]
    topk_r: int = 7  # top-k pooling, k = max(1, T_real // topk_r): 7 THUMOS14, 5 ActivityNet [method.md]
    norm_weight: float = 0.1  # weight of the attention sparsity loss (CO2-Net's 0.8 closed the attention) [ours]

    has_background: ClassVar[bool] = True
    score_kinds: ClassVar[tuple[str, ...]] = ("cas", "cas_fg")

    checks: ClassVar[Mapping[str, Any]] = {
        "choices": {"suppress_min": ("class", "time")},
        "counts": ("embed_dim", "attention_dim", "topk_r"),
        "non_negative": ("norm_weight",),
        "probabilities": ("dropout", "attention_dropout"),
    }


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def masked_conv(conv: nn.Conv1d, x: Tensor, m: Tensor) -> Tensor:
    """x [B, H, T], m [B, 1, T] float: zero padded snippets so they never reach a real one."""
    return conv(x * m)


@register_model("plain", PlainConfig)
class Plain(WtalModel):
    """Embedding, then attention head and (C+1)-way classifier on its features."""

    def __init__(self, cfg: PlainConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        h = cfg.embed_dim
        self.embed = nn.Conv1d(in_dim, h, 3, padding=1)
        self.attention_hidden = nn.Conv1d(h, cfg.attention_dim, 3, padding=1)
        self.attention_out = nn.Conv1d(cfg.attention_dim, 1, 1)
        self.classifier = nn.Conv1d(h, num_classes + 1, 1)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention_dropout = nn.Dropout(cfg.attention_dropout)

    @property
    def enhance_width(self) -> int:
        """The embedding E: H channels."""
        return self.classifier.in_channels

    def forward(self, features: Tensor, mask: Tensor, enhance: Enhance | None = None) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention [B, T], cas_logits S and cas_fg_logits
        S_fg [B, T, C+1], embedding E and features F (what the heads read) [B, T, H].
        enhance: maps E [B, H, T] (and E before its dropout) to F; None: F = E."""
        m = mask[:, None, :].to(features.dtype)  # [B, 1, T]
        clean = _act(masked_conv(self.embed, features.transpose(1, 2), m))  # [B, H, T]
        e = self.dropout(clean)
        f = e if enhance is None else enhance(e, clean)
        hidden = self.attention_dropout(_act(masked_conv(self.attention_hidden, f, m)))
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
            "features": f.transpose(1, 2),
        }

    def background_scores(self, outputs: dict[str, Tensor], kind: str) -> list[Tensor]:
        """cas: S; cas_fg: S_fg (both [B, T, C+1], background last)."""
        return [outputs["cas_fg_logits"]] if kind == "cas_fg" else super().background_scores(outputs, kind)

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "fg", "norm"} scalars."""
        actions_only = torch.cat([labels, labels.new_zeros(labels.shape[0], 1)], 1)  # [y, 0]
        fg = video_cross_entropy(topk_mean(outputs["cas_fg_logits"], mask, self.cfg.topk_r), actions_only)
        norm = masked_mean(outputs["attention"], mask).mean()
        return {"total": fg + self.cfg.norm_weight * norm, "fg": fg, "norm": norm}

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
