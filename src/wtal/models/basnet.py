"""Background Suppression Network, BaS-Net (Lee et al., AAAI 2020).

Network: a filtering module (conv k=1 -> LeakyReLU -> conv k=1 -> sigmoid) gives the
foreground attention ``a`` [B, T]; one CAS module (two k=3 convs + LeakyReLU, dropout,
a bias-free k=1 classifier over C+1 classes, background last) scores the features
in the base branch (``S_base``) and the attention-weighted features ``a * X`` in the
suppression branch (``S_supp``): the two branches share every weight.

Loss: ``L_base + L_supp + alpha * L_norm``. ``L_base`` is the cross-entropy of the top-k
pooled ``S_base`` against normalize([y, 1]) (every untrimmed video holds background),
``L_supp`` that of ``S_supp`` against normalize([y, 0]) (the attention has to filter the
background out); k = max(1, T_real // 8). ``L_norm`` is the L1 norm of the attention
over the real snippets, averaged over videos, alpha = 1e-4. The paper writes
categorical cross-entropy, which we use; the authors' code applies BCELoss to the
softmax probabilities instead.

Scores come from the suppression branch: softmax over the C+1 channels, action
channels kept, and the attention.

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import masked_mean, topk_mean, video_cross_entropy
from wtal.models.base import WtalModel
from wtal.models.registry import ModelConfig, register_model

NEGATIVE_SLOPE = 0.01  # LeakyReLU slope (PyTorch's default, as in the authors' code) [BaS-Net]


@dataclass
class BaSNetConfig(ModelConfig):
    name: str = "basnet"
    embed_dim: int = 2048  # width H of the two k=3 convs of the CAS module [BaS-Net]
    attention_dim: int = 512  # hidden width of the filtering module [BaS-Net]
    dropout: float = 0.7  # dropout before the classifier [BaS-Net]
    topk_r: int = 8  # top-k pooling, k = max(1, T_real // topk_r) [BaS-Net]
    alpha: float = 1e-4  # weight of the L1 norm of the attention [BaS-Net]

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``model.<field>`` for a bad choice or range."""
        self.check(
            source,
            counts=("embed_dim", "attention_dim", "topk_r"),
            probabilities=("dropout",),
            non_negative=("alpha",),
        )


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


@register_model("basnet", BaSNetConfig)
class BaSNet(WtalModel):
    """Filtering module + one (C+1)-way CAS module applied to the features and to a * features."""

    def __init__(self, cfg: BaSNetConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        h = cfg.embed_dim
        self.filter_hidden = nn.Conv1d(in_dim, cfg.attention_dim, 1)
        self.filter_out = nn.Conv1d(cfg.attention_dim, 1, 1)
        self.cas_conv1 = nn.Conv1d(in_dim, h, 3, padding=1)
        self.cas_conv2 = nn.Conv1d(h, h, 3, padding=1)
        self.classifier = nn.Conv1d(h, num_classes + 1, 1, bias=False)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)

    def classify(self, x: Tensor, m: Tensor) -> Tensor:
        """The shared CAS module: x [B, D, T], m [B, 1, T] float -> logits [B, T, C+1].

        Inputs of each k=3 conv are zeroed on padding so padded snippets never reach real ones."""
        y = _act(self.cas_conv1(x * m))
        y = _act(self.cas_conv2(y * m))
        return self.classifier(self.dropout(y)).transpose(1, 2)

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention [B, T] (0 on padding), base_logits and
        supp_logits [B, T, C+1]."""
        m = mask[:, None, :].to(features.dtype)  # [B, 1, T]
        x = features.transpose(1, 2) * m  # [B, D, T]
        attention = torch.sigmoid(self.filter_out(_act(self.filter_hidden(x)))) * m  # [B, 1, T]
        return {
            "attention": attention.squeeze(1),
            "base_logits": self.classify(x, m),
            "supp_logits": self.classify(x * attention, m),
        }

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "base", "supp", "norm"} scalars."""
        r = self.cfg.topk_r
        ones, zeros = labels.new_ones(labels.shape[0], 1), labels.new_zeros(labels.shape[0], 1)
        base = video_cross_entropy(topk_mean(outputs["base_logits"], mask, r), torch.cat([labels, ones], 1))
        supp = video_cross_entropy(topk_mean(outputs["supp_logits"], mask, r), torch.cat([labels, zeros], 1))
        attention = outputs["attention"]
        norm = (masked_mean(attention, mask) * mask.sum(1).to(attention.dtype)).mean()  # L1 over real snippets
        total = base + supp + self.cfg.alpha * norm
        return {"total": total, "base": base, "supp": supp, "norm": norm}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]; cas [B, T, C]: softmax of S_supp over the C+1 channels, action channels;
        video_scores [B, C]: the same for the top-k mean of S_supp (k = max(1, T_real //
        video_topk_divisor)). Padded positions are 0."""
        s = outputs["supp_logits"]
        m = mask.to(s.dtype)
        return {
            "attention": outputs["attention"] * m,
            "cas": torch.softmax(s, -1)[..., :-1] * m[..., None],
            "video_scores": torch.softmax(topk_mean(s, mask, video_topk_divisor), -1)[:, :-1],
        }
