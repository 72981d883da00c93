"""A method of one's own in one file: an STPN-style network (Nguyen et al., CVPR 2018).

Nothing in ``src/wtal`` knows this file. A config lists it and names its model:

    wtal train --config configs/thumos14.yaml imports=[examples/stpn.py] model=stpn

and the paper's parts sit on it as on any registered base (``model.base=stpn``). The steps are in
``docs/adding_a_method.md``.

The network, as we read STPN's paper (not checked against an implementation of its authors'; not a
parity-tested baseline): an attention module on each snippet's feature ``x_t``,
``a_t = sigmoid(fc2(relu(fc1(x_t))))``; attention-weighted temporal average pooling
``x_bar = sum_t a_t x_t / T``; a linear classifier on ``x_bar`` trained by multi-label binary
cross-entropy, plus ``beta * sum_t |a_t|``, the sparsity loss on the attention. Localisation reads
the attention and the temporal class activation ``a_t * sigmoid(w_c . x_t + b_c)``. Both streams
are read as one 2048-d feature (the paper trains RGB and flow apart and fuses their scores).

Shapes: B videos, T snippets, D feature width, C action classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.models import ModelConfig, WtalModel, register_model
from wtal.models.base import Enhance


@dataclass
class STPNConfig(ModelConfig):
    name: str = "stpn"
    attention_dim: int = 256  # hidden width of the attention module [STPN]
    sparsity_weight: float = 1e-4  # beta, the weight of the L1 sparsity loss on the attention [STPN]
    topk_r: int = 8  # r of the top-k pooling the paper's parts use on this base, k = max(1, T // r) [ours]

    checks: ClassVar[Mapping[str, Any]] = {
        "counts": ("attention_dim", "topk_r"),
        "non_negative": ("sparsity_weight",),
    }


@register_model("stpn", STPNConfig)
class STPN(WtalModel):
    """Attention module, attention-weighted average pooling, one linear classifier."""

    def __init__(self, cfg: STPNConfig, in_dim: int, num_classes: int, background_row: bool = False):
        super().__init__(cfg, num_classes, background_row)
        self.attention_hidden = nn.Linear(in_dim, cfg.attention_dim)
        self.attention_out = nn.Linear(cfg.attention_dim, 1)
        self.classifier = nn.Linear(in_dim, num_classes + int(background_row))

    @property
    def enhance_width(self) -> int:
        """The snippet features the attention and the classifier read: D channels."""
        return self.classifier.in_features

    def forward(self, features: Tensor, mask: Tensor, enhance: Enhance | None = None) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention [B, T], video_logits [B, C], cas_logits (the
        classifier on each snippet) [B, T, C] (and background_logits [B, T] with the background row)."""
        x = features * mask[..., None]  # [B, T, D]; padding is zero
        if enhance is not None:
            x = enhance(x.transpose(1, 2), x.transpose(1, 2)).transpose(1, 2) * mask[..., None]
        attention = torch.sigmoid(self.attention_out(F.relu(self.attention_hidden(x)))).squeeze(-1) * mask
        pooled = (attention[..., None] * x).sum(1) / mask.sum(1, keepdim=True)  # [B, D]
        video_logits = self.classifier(pooled)[:, : self.num_classes]
        return {"attention": attention, "video_logits": video_logits, **self.split_background_row(self.classifier(x))}

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "cls", "sparsity"}: the per-class binary
        cross-entropy of the pooled logits, and the attention's L1 norm per video (mean over B)."""
        cls = F.binary_cross_entropy_with_logits(outputs["video_logits"], labels)
        sparsity = outputs["attention"].sum(1).mean()
        return {"total": cls + self.cfg.sparsity_weight * sparsity, "cls": cls, "sparsity": sparsity}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]; cas [B, T, C]: attention x sigmoid of each snippet's class logits;
        video_scores [B, C]: sigmoid of the pooled logits (STPN classifies the pooled feature, so
        ``video_topk_divisor`` is not read). Padded positions are 0."""
        attention = outputs["attention"]
        return {
            "attention": attention,
            "cas": attention[..., None] * torch.sigmoid(outputs["cas_logits"]),
            "video_scores": torch.sigmoid(outputs["video_logits"]),
        }

