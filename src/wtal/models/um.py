"""Uncertainty Modeling (UM; Lee et al., AAAI 2021), a baseline.

Network: embedding (conv k=3 + ReLU) -> features ``F`` [B, T, H]; classifier (dropout,
1x1 conv, no bias) -> class activation sequence ``S`` [B, T, C] over the C action
classes only. Background is not a class: it is modelled by the feature magnitude
``||F_t||``, which is the method's actionness (the "attention" of our interface is
``min(||F_t|| / margin, 1)``, what UM's inference uses).

Pseudo action / background mining per video (k = max(1, T_real // r)): the ``r_act``
snippets of largest magnitude are pseudo action, the ``r_bkg`` of smallest magnitude
pseudo background; during training a random subset of snippets (``select_dropout``) is
left out of both selections, as in UM's code.

Loss: ``L_cls + alpha * L_um + beta * L_be``.
* ``L_cls``: cross-entropy of softmax(top-k mean of S over time, k from ``r_act``)
  against the normalised label;
* ``L_um`` (uncertainty modelling, the feature-magnitude loss):
  ``(max(0, m - ||mean F_act||) + ||mean F_bkg||)^2`` averaged over videos;
* ``L_be`` (background entropy): cross-entropy of softmax(mean S over the pseudo
  background) against the uniform distribution over the C classes.

Defaults are the THUMOS14 values of the official code (alpha 5e-4, beta 1,
margin 100, r_act 9, r_bkg 4, embedding width 2048, dropout 0.7).

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import topk_mean, video_cross_entropy
from wtal.models.base import WtalModel
from wtal.models.registry import ModelConfig, register_model


@dataclass
class UMConfig(ModelConfig):
    name: str = "um"
    embed_dim: int = 2048  # width H of the embedding (its magnitude is the actionness) [UM]
    dropout: float = 0.7  # dropout before the classifier [UM]
    select_dropout: float = 0.7  # training: fraction of snippets left out of pseudo action/background mining [UM code]
    r_act: int = 9  # pseudo action and top-k class pooling: k = max(1, T_real // r_act) [UM]
    r_bkg: int = 4  # pseudo background: k = max(1, T_real // r_bkg) lowest magnitudes [UM]
    margin: float = 100.0  # magnitude margin m: action magnitudes pushed above it [UM]
    alpha: float = 5e-4  # weight of the feature-magnitude (uncertainty) loss [UM]
    beta: float = 1.0  # weight of the background entropy loss [UM code; 1]

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``model.<field>`` for a bad choice or range."""
        self.check(
            source,
            counts=("embed_dim", "r_act", "r_bkg"),
            probabilities=("dropout", "select_dropout"),
            positive=("margin",),
            non_negative=("alpha", "beta"),
        )


def select_topk(score: Tensor, mask: Tensor, r: int) -> Tensor:
    """Per video, 1/k on the k = max(1, T_real // r) real snippets of largest ``score``, else 0.

    score [B, T], mask [B, T] -> weights [B, T] (each row sums to 1; ties broken by position).
    """
    k = torch.clamp(mask.sum(1) // r, min=1)  # [B]
    order = score.masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    chosen = (rank < k[:, None]) & mask
    return chosen.to(score.dtype) / k[:, None].to(score.dtype)


def magnitude_loss(act_mean: Tensor, bkg_mean: Tensor, margin: float) -> Tensor:
    """UM's feature-magnitude loss: mean over videos of (max(0, m - ||f_act||) + ||f_bkg||)^2.

    act_mean, bkg_mean [B, H]: mean features of the pseudo action / background snippets.
    """
    act = F.relu(margin - act_mean.norm(dim=-1))
    return ((act + bkg_mean.norm(dim=-1)) ** 2).mean()


@register_model("um", UMConfig)
class UncertaintyModeling(WtalModel):
    """Embedding + C-way classifier; feature magnitudes separate action from background."""

    def __init__(self, cfg: UMConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        self.embed = nn.Conv1d(in_dim, cfg.embed_dim, 3, padding=1)
        self.classifier = nn.Conv1d(cfg.embed_dim, num_classes, 1, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> embedding [B, T, H], magnitude and
        attention = min(magnitude / margin, 1) [B, T], cas_logits [B, T, C], act_weights and
        bkg_weights [B, T] (pseudo action / background selections, each row summing to 1)."""
        cfg = self.cfg
        m = mask[:, None, :].to(features.dtype)
        e = F.relu(self.embed(features.transpose(1, 2) * m))  # [B, H, T]
        s = self.classifier(self.dropout(e)).transpose(1, 2)  # [B, T, C]
        magnitude = e.norm(dim=1)  # [B, T]
        keep = mask
        if self.training and cfg.select_dropout > 0:
            keep = mask & (torch.rand_like(magnitude) >= cfg.select_dropout)
        with torch.no_grad():  # the selection is an index, no gradient flows through it
            top = torch.where(mask, magnitude, torch.zeros_like(magnitude)).amax(1, keepdim=True)
            zero = torch.zeros_like(magnitude)
            act_weights = select_topk(torch.where(keep, magnitude, zero), mask, cfg.r_act)
            bkg_weights = select_topk(torch.where(keep, top - magnitude, zero), mask, cfg.r_bkg)
        return {
            "embedding": e.transpose(1, 2),
            "magnitude": magnitude,
            "attention": (magnitude / cfg.margin).clamp(max=1.0),
            "cas_logits": s,
            "act_weights": act_weights,
            "bkg_weights": bkg_weights,
        }

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "cls", "um", "be"} scalars."""
        cfg = self.cfg
        s, f = outputs["cas_logits"], outputs["embedding"]
        cls = video_cross_entropy(topk_mean(s, mask, cfg.r_act), labels)
        act_mean = torch.einsum("bt,bth->bh", outputs["act_weights"], f)
        bkg_mean = torch.einsum("bt,bth->bh", outputs["bkg_weights"], f)
        um = magnitude_loss(act_mean, bkg_mean, cfg.margin)
        bkg_scores = torch.einsum("bt,btc->bc", outputs["bkg_weights"], s)
        be = video_cross_entropy(bkg_scores, torch.ones_like(labels))
        total = cls + cfg.alpha * um + cfg.beta * be
        return {"total": total, "cls": cls, "um": um, "be": be}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T] = min(||F_t|| / margin, 1); cas [B, T, C] = softmax(S) * attention
        (UM's inference CAS); video_scores [B, C]: softmax of the top-k mean of S
        (k = max(1, T_real // video_topk_divisor)). Padded positions are 0."""
        m = mask.to(outputs["attention"].dtype)
        attention = outputs["attention"] * m
        s = outputs["cas_logits"]
        return {
            "attention": attention,
            "cas": torch.softmax(s, -1) * attention[..., None],
            "video_scores": torch.softmax(topk_mean(s, mask, video_topk_divisor), -1),
        }
