"""Cross-modal Consensus Network (CO2-Net; Hong et al., ACM MM 2021), a baseline.

This file computes what the authors' code (``harlanhong/MM2021-CO2-Net``, model ``CO2`` with
consensus module ``BWA_fusion_dropout_feat_v2``) computes; ``tests/test_parity_co2net.py``
loads the authors' weights through :data:`AUTHORS_STATE_DICT_NAMES` and checks every output and loss
term against numbers produced by their code (``tests/fixtures/README.md``).

Network. The feature vector holds RGB in its first half and flow in its second (``in_dim``
even; d = in_dim / 2 per modality). Two cross-modal consensus modules, one with RGB as the
main modality and one with flow. Each builds
* a global context of the main modality, ``g = drop(act(conv_k3(mean_t(main))))`` [B, d, 1]
  (a k=3 conv applied to a length-1 sequence, so only its centre tap acts; kept as the
  authors have it because the kernel's fan-in sets the initialisation scale);
* a local context of the other modality, ``l = drop(act(conv_k3(other)))`` [B, d, T];
* a per-channel, per-snippet gate ``sigmoid(l * g)`` that filters the main features;
* its own attention head on the filtered features (conv k3 - act - drop - conv k3 - act -
  conv k1 - drop - sigmoid).
``a = (a_rgb + a_flow) / 2``. The filtered streams, concatenated, go through a 1x1 fusion
conv (act, drop) -> ``X`` [B, T, D], then drop - conv k3 (H = ``embed_dim``) - act - drop -
conv k1 to C+1 classes (background last) -> ``S``. Attention-suppressed logits
``S_supp = a * (S - min_c S) + min_c S`` (min over the C+1 classes of each snippet).
act is LeakyReLU(0.2). Every conv has kaiming-uniform weights and zero biases.

Loss: ``L_orig + L_supp + w_coact * L_coact + w_mutual * L_mutual + w_norm * L_norm +
w_guide * L_guide``.
* ``L_orig`` / ``L_supp``: cross-entropy of softmax(top-k mean of S / S_supp over time,
  k = max(1, T // topk_r)) against [y, 1] / [y, 0], each divided by its sum + 1e-4;
* ``L_coact`` (co-activity similarity): for each same-class pair (videos 2i, 2i+1 of the
  batch, i < ``similar_pairs``) and class c, the high- and low-activity features
  ``H = X^T softmax_t(S_supp[:, c])``, ``L = X^T (1 - softmax_t(S_supp[:, c])) / max(T - 1, 1)``
  and ``d(u, v) = 1 - cos(u, v)``: ``0.5 [d(H1, H2) - d(H1, L2) + 0.5]_+ +
  0.5 [d(H1, H2) - d(H2, L1) + 0.5]_+``, summed over the classes both videos have and
  divided by the number of such (pair, class) terms;
* ``L_mutual``: 0.5 MSE(a_rgb, sg(a_flow)) + 0.5 MSE(a_flow, sg(a_rgb));
* ``L_norm``: mean of a, a_rgb, a_flow (averaged over the three);
* ``L_guide``: mean |1 - a - softmax(S)_bg| (over a, a_rgb, a_flow).
Defaults are the official THUMOS14 settings (k 7, weights 0.8 / 0.8 / 1 / 1, dropout 0.7
and 0.5, widths 2048 / 512, 3 same-class pairs per batch).

Inference (the authors' ``multiple_threshold_hamnet``, declared in
``CO2NetConfig.inference_defaults``): actionness is the raw attention ``a``, thresholded
strictly at ``linspace(0.1, 0.9, 10)``; segments are scored by the outer-inner contrast of
``S * a`` (logits times attention) plus 0.2 x the video score; video scores are a softmax over
the C+1 classes of the top-k mean (k = T // 10) of ``S * a``, background dropped; classes with
a score >= 0.2 are kept; Gaussian soft-NMS (sigma 0.3, IoU with the authors' +1 snippet
lengths) keeps every segment.

Where wtal differs from the authors' code, on purpose:
* padding: batches are padded and every pooled value is taken over the real snippets of each
  video (the authors resample every training video to the same length, ``data.sampling=
  resample``, and test one video at a time), so with no padding the two are equal;
* a batch without a same-class pair gives ``L_coact = 0`` (the authors' code divides 0 by 0);
* ``init=torch`` keeps PyTorch's default initialisation (default ``kaiming``, the authors').

Shapes: B videos, T snippets, D = 2d feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets; every value a real snippet gets is independent of
padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.errors import WtalError
from wtal.losses import co_activity_loss, masked_mean, topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.localize import InferenceConfig
from wtal.models.registry import ModelConfig, register_model

NEGATIVE_SLOPE = 0.2  # LeakyReLU slope [CO2-Net]
LABEL_EPS = 1e-4  # added to the label sum before normalising the MIL targets [CO2-Net code]

# The authors' state_dict module names -> wtal's; feat_encoder is built by their model but never called.
_AUTHORS_MODULES = {
    "vAttn.bit_wise_attn.0": "rgb_consensus.local_context",
    "vAttn.channel_conv.0": "rgb_consensus.global_context",
    "vAttn.attention.0": "rgb_consensus.attention.0",
    "vAttn.attention.3": "rgb_consensus.attention.1",
    "vAttn.attention.5": "rgb_consensus.attention.2",
    "fAttn.bit_wise_attn.0": "flow_consensus.local_context",
    "fAttn.channel_conv.0": "flow_consensus.global_context",
    "fAttn.attention.0": "flow_consensus.attention.0",
    "fAttn.attention.3": "flow_consensus.attention.1",
    "fAttn.attention.5": "flow_consensus.attention.2",
    "fusion.0": "fusion",
    "classifier.1": "hidden",
    "classifier.4": "classifier",
    "feat_encoder.0": None,
}
AUTHORS_STATE_DICT_NAMES = {
    f"{theirs}.{leaf}": None if ours is None else f"{ours}.{leaf}"
    for theirs, ours in _AUTHORS_MODULES.items()
    for leaf in ("weight", "bias")
}


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
    coactivity_weight: float = 1.0  # weight of the co-activity similarity loss (alpha3) [CO2-Net]
    mutual_weight: float = 1.0  # weight of the mutual learning loss between a_rgb and a_flow (alpha4) [CO2-Net]
    similar_pairs: int = 3  # same-class video pairs at the start of each training batch (0: none) [CO2-Net code]
    init: str = "kaiming"  # kaiming: kaiming-uniform weights, zero biases [CO2-Net code] | torch: PyTorch's defaults

    # The authors' post-processing (proposal_methods.multiple_threshold_hamnet); inference.* keys override.
    has_background: ClassVar[bool] = True
    score_kinds: ClassVar[tuple[str, ...]] = ("cas", "cas_fg")
    inference_defaults: ClassVar[InferenceConfig] = InferenceConfig(
        thresholds=[float(t) for t in np.linspace(0.1, 0.9, 10)],
        normalize=False,
        inclusive=False,
        margin_rule="ceil_floor",
        dedup=False,
        nms="soft_nms",
        nms_length_offset=1.0,
        max_per_video=0,
    )

    def two_streams(self) -> bool:
        """The consensus modules read RGB and flow as two streams."""
        return True

    checks: ClassVar[Mapping[str, Any]] = {
        "counts": ("embed_dim", "attention_dim", "topk_r"),
        "probabilities": ("dropout", "consensus_dropout"),
        "non_negative": ("norm_weight", "guide_weight", "coactivity_weight", "mutual_weight", "similar_pairs"),
        "choices": {"init": ("kaiming", "torch")},
    }


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def kaiming_init(module: nn.Module) -> None:
    """The authors' initialisation: kaiming_uniform_ weights and zero biases on every conv and linear layer."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Linear)):
            nn.init.kaiming_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def mutual_loss(a_rgb: Tensor, a_flow: Tensor, mask: Tensor) -> Tensor:
    """0.5 MSE(a_rgb, sg(a_flow)) + 0.5 MSE(a_flow, sg(a_rgb)), mean over real snippets then videos."""
    to_flow = (a_rgb - a_flow.detach()) ** 2
    to_rgb = (a_flow - a_rgb.detach()) ** 2
    return 0.5 * masked_mean(to_flow, mask).mean() + 0.5 * masked_mean(to_rgb, mask).mean()


class ConsensusModule(nn.Module):
    """Filters the main modality [B, d, T] with a gate built from both; has its own attention head."""

    def __init__(self, width: int, attention_dim: int, dropout: float):
        super().__init__()
        self.global_context = nn.Conv1d(width, width, 3, padding=1)  # on the pooled main modality (length 1)
        self.local_context = nn.Conv1d(width, width, 3, padding=1)  # on the other modality
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
        pooled = masked_mean(main.transpose(1, 2), mask)[:, :, None]  # [B, d, 1], real snippets only
        g = self.dropout(_act(self.global_context(pooled)))  # [B, d, 1]
        local = self.dropout(_act(self.local_context(other)))  # [B, d, T]
        filtered = torch.sigmoid(local * g) * main * m
        first, second, out = self.attention
        h = self.dropout(_act(first(filtered)))
        h = _act(second(h * m))
        attention = torch.sigmoid(self.dropout(out(h))).squeeze(1)  # [B, T]
        return attention, filtered


@register_model("co2net", CO2NetConfig)
class CO2Net(WtalModel):
    """Two cross-modal consensus modules + fusion + (C+1)-way classifier."""

    authors_names = AUTHORS_STATE_DICT_NAMES

    def __init__(self, cfg: CO2NetConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        if in_dim % 2:
            raise WtalError(
                f"model co2net: feature width {in_dim} is odd; expected RGB and flow halves of equal width "
                "(data.modality must be both)"
            )
        self.width = in_dim // 2
        self.rgb_consensus = ConsensusModule(self.width, cfg.attention_dim, cfg.consensus_dropout)
        self.flow_consensus = ConsensusModule(self.width, cfg.attention_dim, cfg.consensus_dropout)
        self.fusion = nn.Conv1d(in_dim, in_dim, 1)
        self.hidden = nn.Conv1d(in_dim, cfg.embed_dim, 3, padding=1)
        self.classifier = nn.Conv1d(cfg.embed_dim, num_classes + 1, 1)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.init == "kaiming":
            kaiming_init(self)

    def forward(
        self, features: Tensor, mask: Tensor, enhance: Enhance | None = None
    ) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention, attention_rgb, attention_flow [B, T];
        cas_logits S and cas_fg_logits S_supp [B, T, C+1]; fused features X [B, T, D].

        enhance: maps X [B, D, T] (and X before its dropout) to what the classifier, the
        co-activity loss and ``fused`` then read (``whole_video_bg`` puts its temporal enhancement
        network here; X itself is then returned as ``unenhanced`` too); None keeps X."""
        m = mask[:, None, :].to(features.dtype)
        x = features.transpose(1, 2) * m  # [B, D, T]
        rgb, flow = x[:, : self.width], x[:, self.width :]
        a_rgb, rgb_filtered = self.rgb_consensus(rgb, flow, mask, m)
        a_flow, flow_filtered = self.flow_consensus(flow, rgb, mask, m)
        attention = (a_rgb + a_flow) / 2
        clean = _act(self.fusion(torch.cat([rgb_filtered, flow_filtered], 1)))
        fused = unenhanced = self.dropout(clean)
        if enhance is not None:
            fused = enhance(fused, clean)
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
            **({} if enhance is None else {"unenhanced": unenhanced.transpose(1, 2)}),
        }

    @property
    def enhance_width(self) -> int:
        """The fused features X: D channels."""
        return self.hidden.in_channels

    def background_scores(self, outputs: dict[str, Tensor], kind: str) -> list[Tensor]:
        """cas: S; cas_fg: S_supp (both [B, T, C+1], background last)."""
        return [outputs["cas_fg_logits"]] if kind == "cas_fg" else super().background_scores(outputs, kind)

    def before_enhancement(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The co-activity loss reads X before the enhance hook."""
        return {**outputs, "fused": outputs["unenhanced"]} if "unenhanced" in outputs else outputs

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "orig", "supp", "coactivity", "mutual", "norm", "guide"} scalars."""
        cfg = self.cfg
        s, s_fg = outputs["cas_logits"], outputs["cas_fg_logits"]
        ones, zeros = labels.new_ones(labels.shape[0], 1), labels.new_zeros(labels.shape[0], 1)
        orig = video_cross_entropy(topk_mean(s, mask, cfg.topk_r), torch.cat([labels, ones], 1), LABEL_EPS)
        supp = video_cross_entropy(topk_mean(s_fg, mask, cfg.topk_r), torch.cat([labels, zeros], 1), LABEL_EPS)
        # background is no shared class of a pair: its label column is 0
        coactivity = co_activity_loss(outputs["fused"], s_fg, torch.cat([labels, zeros], 1), mask, cfg.similar_pairs)
        a, a_rgb, a_flow = outputs["attention"], outputs["attention_rgb"], outputs["attention_flow"]
        mutual = mutual_loss(a_rgb, a_flow, mask)
        background = torch.softmax(s, -1)[..., -1]  # [B, T]
        norm = sum(masked_mean(x, mask).mean() for x in (a, a_rgb, a_flow)) / 3
        guide = sum(masked_mean((1 - x - background).abs(), mask).mean() for x in (a, a_rgb, a_flow)) / 3
        total = (
            orig
            + supp
            + cfg.coactivity_weight * coactivity
            + cfg.mutual_weight * mutual
            + cfg.norm_weight * norm
            + cfg.guide_weight * guide
        )
        return {
            "total": total,
            "orig": orig,
            "supp": supp,
            "coactivity": coactivity,
            "mutual": mutual,
            "norm": norm,
            "guide": guide,
        }

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """The authors' inference scores: attention [B, T] (raw sigmoid attention); cas [B, T, C]:
        ``S * a`` (logits times attention, action channels; not bounded to [0, 1]); video_scores
        [B, C]: softmax over the C+1 channels of the top-k mean of ``S * a`` (k = max(1, T_real //
        video_topk_divisor)), background dropped. Padded positions are 0."""
        m = mask.to(outputs["attention"].dtype)
        weighted = outputs["cas_logits"] * outputs["attention"][..., None]  # [B, T, C+1]
        return {
            "attention": outputs["attention"] * m,
            "cas": weighted[..., :-1] * m[..., None],
            "video_scores": torch.softmax(topk_mean(weighted, mask, video_topk_divisor), -1)[:, :-1],
        }
