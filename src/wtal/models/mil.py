"""Multiple-instance learning baseline: the k-max MIL loss of W-TALC (Paul et al., ECCV 2018) alone.

Network: embedding (a conv over time, kernel 1 = W-TALC's per-snippet fully connected
layer, + ReLU + dropout) -> classifier over the C action classes (no background
channel) -> class activation logits ``S`` [B, T, C].

Loss: ``L_mil``, the cross-entropy of softmax(top-k mean of ``S`` over the real
snippets) against the multi-hot labels normalised to sum 1, k = max(1, T_real // r),
r = 8 (W-TALC's code rounds T / 8 up; we share the repository's floor). W-TALC's
co-activity similarity loss is left out: this is the MIL-only baseline.

Scores: MIL has no attention. ``cas`` is the softmax of S over the C action classes
(``cas_activation="softmax"``, default) or sigmoid(S) per class (``"sigmoid"``).
``attention`` is the class-agnostic actionness max_c cas[t, c] of these normalised
scores, which localization thresholds (after its per-video min-max normalisation).
Softmax has no background class, so its max is >= 1/C everywhere, high where one class
dominates; sigmoid lets a snippet be low for every class but its level is untrained
(the softmax loss ignores a shared logit offset). On the tiny preset (300 steps,
lr 1e-3, seeds 0-2, best-test avg mAP) softmax gave 54.8 / 51.8 / 45.7 and sigmoid
49.6 / 50.0 / 41.0, hence the default.

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.models.registry import ModelConfig, register_model


@dataclass
class MILConfig(ModelConfig):
    name: str = "mil"
    embed_dim: int = 2048  # width H of the embedding (W-TALC: D -> D fully connected) [W-TALC]
    kernel_size: int = 1  # temporal kernel of the embedding conv, odd (1: per-snippet FC) [W-TALC]
    dropout: float = 0.7  # dropout after the embedding [W-TALC]
    topk_r: int = 8  # k-max pooling, k = max(1, T_real // topk_r) [W-TALC]
    cas_activation: str = "softmax"  # per-snippet class scores: softmax over the C classes | sigmoid [ours]

    checks: ClassVar[Mapping[str, Any]] = {
        "counts": ("embed_dim", "kernel_size", "topk_r"),
        "probabilities": ("dropout",),
        "choices": {"cas_activation": ("sigmoid", "softmax")},
    }

    def validate(self, source: str = "config", prefix: str = "model") -> None:
        """The declared checks, and an odd kernel size."""
        super().validate(source, prefix)
        if self.kernel_size % 2 == 0:
            self.fail(source, "kernel_size", "an odd integer (the output keeps the input length)", prefix)


@register_model("mil", MILConfig)
class MIL(WtalModel):
    """Embedding + C-way classifier trained with the k-max multiple-instance loss alone."""

    def __init__(self, cfg: MILConfig, in_dim: int, num_classes: int, background_row: bool = False):
        super().__init__(cfg, num_classes, background_row)
        self.embed = nn.Conv1d(in_dim, cfg.embed_dim, cfg.kernel_size, padding=cfg.kernel_size // 2)
        self.classifier = nn.Conv1d(cfg.embed_dim, num_classes + int(background_row), 1)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def enhance_width(self) -> int:
        """The embedding: H channels."""
        return self.classifier.in_channels

    def forward(self, features: Tensor, mask: Tensor, enhance: Enhance | None = None) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> cas_logits S [B, T, C] (and background_logits [B, T] with
        the background row), embedding [B, T, H]; enhance: maps the embedding [B, H, T] (and the same
        before its dropout) to what the classifier and ``embedding`` then read."""
        m = mask[:, None, :].to(features.dtype)  # [B, 1, T]; zeroed padding never reaches a real snippet
        clean = F.relu(self.embed(features.transpose(1, 2) * m))  # [B, H, T]
        e = self.dropout(clean)
        if enhance is not None:
            e = enhance(e, clean)
        return {**self.split_background_row(self.classifier(e).transpose(1, 2)), "embedding": e.transpose(1, 2)}

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "mil"} scalars."""
        mil = video_cross_entropy(topk_mean(outputs["cas_logits"], mask, self.cfg.topk_r), labels)
        return {"total": mil, "mil": mil}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """cas [B, T, C]: softmax over classes (or sigmoid) of S; attention [B, T]: max over classes
        of cas (MIL has no attention); video_scores [B, C]: softmax of the top-k mean of S
        (k = max(1, T_real // video_topk_divisor)). Padded positions are 0."""
        s = outputs["cas_logits"]
        m = mask.to(s.dtype)
        cas = (torch.softmax(s, -1) if self.cfg.cas_activation == "softmax" else torch.sigmoid(s)) * m[..., None]
        return {
            "attention": cas.amax(-1),
            "cas": cas,
            "video_scores": torch.softmax(topk_mean(s, mask, video_topk_divisor), -1),
        }
