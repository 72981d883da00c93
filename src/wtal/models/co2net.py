"""Cross-modal Consensus Network (CO2-Net; Hong et al., ACM MM 2021), a baseline.

The feature vector holds RGB in its first half and flow in its second (``in_dim``
must be even; width d = in_dim / 2 per modality). Two cross-modal consensus modules,
one with RGB as the main modality and one with flow: the *other* modality gives local
context ``L = act(conv_k3(other))`` [B, d, T], the main modality global context
``G = act(W mean_t(main))`` [B, d]; their cosine affinity per snippet
``c_t = <G/|G|, L_t/|L_t|>`` makes a channel filter ``sigmoid(L_t * c_t)`` that multiplies
the main features. Each filtered stream has its own attention head (a_rgb, a_flow);
``a = (a_rgb + a_flow) / 2``. The filtered streams, concatenated, go through a 1x1
fusion conv to a (C+1)-way classifier (background last) -> ``S``; attention-suppressed
scores ``S_fg = a * (S - min_c S) + min_c S`` (min over the C+1 classes of each snippet).

Loss: ``L_orig + L_supp + w_mutual * L_mutual + w_norm * L_norm + w_guide * L_guide``.
* ``L_orig`` / ``L_supp``: cross-entropy of softmax(top-k mean of S / S_fg,
  k = max(1, T_real // topk_r)) against normalize([y, 1]) / normalize([y, 0]);
* ``L_mutual``: 0.5 MSE(a_rgb, sg(a_flow)) + 0.5 MSE(a_flow, sg(a_rgb));
* ``L_norm``: mean of a, a_rgb, a_flow (averaged over the three);
* ``L_guide``: mean |1 - a - softmax(S)_bg| (over a, a_rgb, a_flow).
The official code also adds a co-activity similarity loss (weight 1); this compact
baseline leaves it out. Defaults are the official THUMOS14 settings (k 7,
norm and guide weights 0.8, mutual weight 1, dropout 0.7, hidden widths 2048 / 512).

Shapes: B videos, T snippets, D = 2d feature width, C action classes,
H ``embed_dim``; ``mask`` [B, T] bool marks real snippets; every value a real
snippet gets is independent of padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.errors import WtalError
from wtal.losses import masked_mean, topk_mean, video_cross_entropy
from wtal.models.base import WtalModel
from wtal.models.registry import ModelConfig, register_model

NEGATIVE_SLOPE = 0.2  # LeakyReLU slope [CO2-Net]


@dataclass
class CO2NetConfig(ModelConfig):
    name: str = "co2net"
    embed_dim: int = 2048  # hidden width H of the classifier [CO2-Net]
    attention_dim: int = 512  # hidden width of each attention head [CO2-Net]
    dropout: float = 0.7  # dropout after the fusion and inside the classifier [CO2-Net]
    consensus_dropout: float = 0.5  # dropout on the consensus contexts and in the attention heads [CO2-Net]
    topk_r: int = 7  # top-k MIL pooling, k = max(1, T_real // topk_r): 7 THUMOS14, 5 ActivityNet [CO2-Net]
    norm_weight: float = 0.8  # weight of the attention norm loss (alpha1) [CO2-Net]
    guide_weight: float = 0.8  # weight of the guide loss (alpha2) [CO2-Net]
    mutual_weight: float = 1.0  # weight of the mutual learning loss between a_rgb and a_flow (alpha4) [CO2-Net]

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``model.<field>`` for a bad choice or range."""
        self.check(
            source,
            counts=("embed_dim", "attention_dim", "topk_r"),
            probabilities=("dropout", "consensus_dropout"),
            non_negative=("norm_weight", "guide_weight", "mutual_weight"),
        )


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def mutual_loss(a_rgb: Tensor, a_flow: Tensor, mask: Tensor) -> Tensor:
    """0.5 MSE(a_rgb, sg(a_flow)) + 0.5 MSE(a_flow, sg(a_rgb)), mean over real snippets then videos."""
    to_flow = (a_rgb - a_flow.detach()) ** 2
    to_rgb = (a_flow - a_rgb.detach()) ** 2
    return 0.5 * masked_mean(to_flow, mask).mean() + 0.5 * masked_mean(to_rgb, mask).mean()


class ConsensusModule(nn.Module):
    """Filters the main modality [B, d, T] with a channel attention built from both; own attention head."""

    def __init__(self, width: int, attention_dim: int, dropout: float):
        super().__init__()
        self.global_fc = nn.Linear(width, width)  # global context of the main modality
        self.local_conv = nn.Conv1d(width, width, 3, padding=1)  # local context of the other modality
        self.attention = nn.ModuleList(
            [
                nn.Conv1d(width, attention_dim, 3, padding=1),
                nn.Conv1d(attention_dim, attention_dim, 3, padding=1),
                nn.Conv1d(attention_dim, 1, 1),
            ]
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, main: Tensor, other: Tensor, mask: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """main, other [B, d, T] (zero on padding), mask [B, T], m [B, 1, T] float
        -> attention [B, T], filtered main features [B, d, T] (zero on padding)."""
        pooled = masked_mean(main.transpose(1, 2), mask)  # [B, d], real snippets only
        g = self.dropout(_act(self.global_fc(pooled)))  # [B, d]
        local = self.dropout(_act(self.local_conv(other)))  # [B, d, T]
        affinity = torch.einsum("bd,bdt->bt", F.normalize(g, dim=1), F.normalize(local, dim=1))
        filtered = torch.sigmoid(local * affinity[:, None, :]) * main * m
        first, second, out = self.attention
        h = self.dropout(_act(first(filtered)))
        h = _act(second(h * m))
        attention = torch.sigmoid(self.dropout(out(h))).squeeze(1)  # [B, T]
        return attention, filtered


@register_model("co2net", CO2NetConfig)
class CO2Net(WtalModel):
    """Two cross-modal consensus modules + fusion + (C+1)-way classifier."""

    def __init__(self, cfg: CO2NetConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        if in_dim % 2:
            raise WtalError(
                f"model co2net: feature width {in_dim} is odd; expected RGB and flow halves of equal width "
                "(data.modality must be both)"
            )
        self.width = in_dim // 2
        self.rgb_main = ConsensusModule(self.width, cfg.attention_dim, cfg.consensus_dropout)
        self.flow_main = ConsensusModule(self.width, cfg.attention_dim, cfg.consensus_dropout)
        self.fusion = nn.Conv1d(in_dim, in_dim, 1)
        self.hidden = nn.Conv1d(in_dim, cfg.embed_dim, 3, padding=1)
        self.classifier = nn.Conv1d(cfg.embed_dim, num_classes + 1, 1)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention, attention_rgb, attention_flow [B, T];
        cas_logits S and cas_fg_logits S_fg [B, T, C+1]; fused features [B, T, D]."""
        m = mask[:, None, :].to(features.dtype)
        x = features.transpose(1, 2) * m  # [B, D, T]
        rgb, flow = x[:, : self.width], x[:, self.width :]
        a_rgb, rgb_filtered = self.rgb_main(rgb, flow, mask, m)
        a_flow, flow_filtered = self.flow_main(flow, rgb, mask, m)
        attention = (a_rgb + a_flow) / 2
        fused = self.dropout(_act(self.fusion(torch.cat([rgb_filtered, flow_filtered], 1))))
        h = self.dropout(_act(self.hidden(self.dropout(fused) * m)))
        s = self.classifier(h).transpose(1, 2)  # [B, T, C+1]
        s_min = s.amin(-1, keepdim=True)
        s_fg = attention[..., None] * (s - s_min) + s_min
        return {
            "attention": attention,
            "attention_rgb": a_rgb,
            "attention_flow": a_flow,
            "cas_logits": s,
            "cas_fg_logits": s_fg,
            "fused": fused.transpose(1, 2),
        }

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "orig", "supp", "mutual", "norm", "guide"} scalars."""
        cfg = self.cfg
        s = outputs["cas_logits"]
        ones = labels.new_ones(labels.shape[0], 1)
        orig = video_cross_entropy(topk_mean(s, mask, cfg.topk_r), torch.cat([labels, ones], 1))
        zeros = labels.new_zeros(labels.shape[0], 1)
        supp = video_cross_entropy(topk_mean(outputs["cas_fg_logits"], mask, cfg.topk_r), torch.cat([labels, zeros], 1))
        a, a_rgb, a_flow = outputs["attention"], outputs["attention_rgb"], outputs["attention_flow"]
        mutual = mutual_loss(a_rgb, a_flow, mask)
        background = torch.softmax(s, -1)[..., -1]  # [B, T]
        norm = sum(masked_mean(x, mask).mean() for x in (a, a_rgb, a_flow)) / 3
        guide = sum(masked_mean((1 - x - background).abs(), mask).mean() for x in (a, a_rgb, a_flow)) / 3
        total = orig + supp + cfg.mutual_weight * mutual + cfg.norm_weight * norm + cfg.guide_weight * guide
        return {"total": total, "orig": orig, "supp": supp, "mutual": mutual, "norm": norm, "guide": guide}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]; cas [B, T, C]: softmax of S_fg over the C+1 channels, action channels;
        video_scores [B, C]: softmax over the C action channels of the top-k mean of S_fg
        (k = max(1, T_real // video_topk_divisor)). Padded positions are 0."""
        m = mask.to(outputs["attention"].dtype)
        s_fg = outputs["cas_fg_logits"]
        return {
            "attention": outputs["attention"] * m,
            "cas": torch.softmax(s_fg, -1)[..., :-1] * m[..., None],
            "video_scores": torch.softmax(topk_mean(s_fg[..., :-1], mask, video_topk_divisor), -1),
        }
