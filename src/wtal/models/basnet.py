"""Background Suppression Network, BaS-Net (Lee et al., AAAI 2020).

Network: a filtering module (conv k=1 D -> 512, LeakyReLU, conv k=1 512 -> 1, sigmoid)
gives the foreground attention ``a`` [B, T]; one CAS module (conv k=3 D -> 2048,
LeakyReLU, conv k=3 2048 -> 2048, LeakyReLU, dropout 0.7, bias-free conv k=1 over
C+1 classes, background last) scores the features in the base branch (``S_base``) and
the attention-weighted features ``a * X`` in the suppression branch (``S_supp``): the
two branches share every weight, each draws its own dropout mask. All convs keep
PyTorch's default initialisation, created in the authors' order (filter, then CAS), so
one seed gives both implementations the same weights.

Video probabilities ``p = softmax(top-k mean of S over time)`` over the C+1 channels,
k = T_real // topk_r (the authors' k = 750 // 8 on their fixed 750 snippets; we floor
at 1, where the authors' mean of nothing would be NaN).

Loss: ``L_base + L_supp + norm_weight * L_norm``. Targets: ``L_base`` against
normalize([y, 1]) (every untrimmed video holds background), ``L_supp`` against
normalize([y, 0]) (the attention has to filter the background out); a video without
labels gets a zero suppression target (the authors' would divide by 0). With
``cls_loss="bce"`` (default, the authors' code) each term is the binary cross-entropy of
``p`` against the target, averaged over videos and all C+1 channels (log clamped at -100,
as PyTorch's BCELoss); ``cls_loss="ce"`` is the paper's categorical cross-entropy
``-sum_c target_c log p_c``, averaged over videos. ``L_norm`` is the L1 norm of the
attention over the real snippets, averaged over videos; norm_weight = 1e-4.

Scores (what the authors' test code thresholds): ``cas`` is ``S_supp`` normalised per
video and class over the real snippets as the authors do, ``(S - relu(min)) / (relu(max)
- relu(min))`` with a non-positive denominator replaced by 1: at most 1, negative exactly
where ``S`` < 0 (not clipped: the authors upsample it by linear interpolation before
thresholding, where clipping would move the zero crossings); ``video_scores`` is ``p`` of
the suppression branch with k = T_real // video_topk_divisor (the authors use their
training k, divisor 8), action channels; ``attention`` is ``a`` (unused by the authors'
inference).

Post-processing (``BaSNetConfig.inference_defaults``, the authors' test.py and utils.py; proven
by tests/test_parity_basnet.py against proposals from their code): every test video is scored on
750 snippets at floor(i T / 750) (short videos repeat snippets), one resampled snippet lasting
T / 750 of the video's; classes with ``video_scores`` >= 0.25, none when no class passes; ``cas``
upsampled 24 times by linear interpolation (extrapolated past the last snippet, as scipy's
``interp1d``); proposals where it is >= each of 0, 0.025, ..., 0.225 and > 0, scored on the CAS
with the values below that threshold set to 0: outer-inner contrast with margins ceil(0.25 len)
before and floor(0.25 len) after, plus 0.2 x the binarised class score (1); segments not clipped
to the video's duration; per-class hard NMS over all thresholds' proposals dropping IoU >= 0.7,
with 1 s added to every length and overlap; no cap. Two quirks of the authors' code are not
reproduced: a video whose only selected class is class 0 gets no detections there (their
``pred.any()`` tests the class indices), and a class whose only active point is the first one gets
no proposal (``temp_list.any()`` tests the point indices).

Training data: the authors resample every training video to exactly 750 snippets, one index
drawn per position with both ends of its range included (``data.sampling=resample``,
``data.max_seqlen=750``), so their batches have no padding.

The authors' parameters load through :data:`AUTHORS_STATE_DICT_NAMES`
(``model.load_authors_state_dict``).

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.localize import InferenceConfig
from wtal.models.registry import ModelConfig, register_model

NEGATIVE_SLOPE = 0.01  # LeakyReLU slope (PyTorch's default, as in the authors' code) [BaS-Net code]

# The authors' state_dict names (model.py: BaS_Net) -> ours.
AUTHORS_STATE_DICT_NAMES = {
    "filter_module.conv_1.0.weight": "filter_hidden.weight",
    "filter_module.conv_1.0.bias": "filter_hidden.bias",
    "filter_module.conv_2.0.weight": "filter_out.weight",
    "filter_module.conv_2.0.bias": "filter_out.bias",
    "cas_module.conv_1.0.weight": "cas_conv1.weight",
    "cas_module.conv_1.0.bias": "cas_conv1.bias",
    "cas_module.conv_2.0.weight": "cas_conv2.weight",
    "cas_module.conv_2.0.bias": "cas_conv2.bias",
    "cas_module.conv_3.0.weight": "classifier.weight",
}


# BaS-Net's test code (test.py and utils.py), which UM's (the same authors) starts from: every test
# video scored on 750 snippets, the CAS upsampled 24 times by linear interpolation, runs above each
# of 0, 0.025, ..., 0.225 (and > 0) scored on the CAS zeroed below the threshold by outer-inner
# contrast (ceil / floor margins), no clipping, per-class hard NMS dropping IoU >= 0.7 with 1 s
# added to lengths and overlaps, no cap; classes with a video score >= 0.25, none when no class
# passes, plus 0.2 x the binarised class score.
BASNET_INFERENCE = InferenceConfig(
    test_seqlen=750,
    test_resample="all",
    class_threshold=0.25,
    class_fallback=False,
    video_topk_divisor=8,
    proposal_source="cas",
    thresholds=[float(t) for t in np.arange(0.0, 0.25, 0.025)],
    normalize=False,
    require_positive=True,
    upsample=24,
    upsample_mode="linear",
    zero_below_threshold=True,
    margin_rule="ceil_floor",
    class_score="binary",
    clip_to_duration=False,
    dedup=False,
    nms_iou=0.7,
    nms_inclusive=True,
    nms_length_offset=1.0,
    nms_offset_unit="seconds",
    max_per_video=0,
)


@dataclass
class BaSNetConfig(ModelConfig):
    name: str = "basnet"
    embed_dim: int = 2048  # width H of the two k=3 convs of the CAS module [BaS-Net]
    attention_dim: int = 512  # hidden width of the filtering module [BaS-Net]
    dropout: float = 0.7  # dropout before the classifier [BaS-Net]
    topk_r: int = 8  # top-k pooling, k = max(1, T_real // topk_r) [BaS-Net]
    norm_weight: float = 1e-4  # weight of L_norm, the L1 norm of the attention (authors' --alpha) [BaS-Net]
    cls_loss: str = "bce"  # bce: BCE on the softmax probabilities [BaS-Net code] | ce: cross-entropy [BaS-Net paper]

    # The authors' post-processing (test.py, utils.upgrade_resolution, get_proposal_oic and nms);
    # inference.* keys override.
    inference_defaults: ClassVar[InferenceConfig] = BASNET_INFERENCE
    has_background: ClassVar[bool] = True
    score_kinds: ClassVar[tuple[str, ...]] = ("cas", "cas_fg")

    checks: ClassVar[Mapping[str, Any]] = {
        "counts": ("embed_dim", "attention_dim", "topk_r"),
        "probabilities": ("dropout",),
        "non_negative": ("norm_weight",),
        "choices": {"cls_loss": ("bce", "ce")},
    }


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _normalise(target: Tensor) -> Tensor:
    """Rows of target [B, K] scaled to sum 1 (rows of zeros stay zero)."""
    return target / target.sum(-1, keepdim=True).clamp(min=1e-8)


@register_model("basnet", BaSNetConfig)
class BaSNet(WtalModel):
    """Filtering module + one (C+1)-way CAS module applied to the features and to a * features."""

    authors_names = AUTHORS_STATE_DICT_NAMES

    def __init__(self, cfg: BaSNetConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        h = cfg.embed_dim
        self.filter_hidden = nn.Conv1d(in_dim, cfg.attention_dim, 1)
        self.filter_out = nn.Conv1d(cfg.attention_dim, 1, 1)
        self.cas_conv1 = nn.Conv1d(in_dim, h, 3, padding=1)
        self.cas_conv2 = nn.Conv1d(h, h, 3, padding=1)
        self.classifier = nn.Conv1d(h, num_classes + 1, 1, bias=False)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def enhance_width(self) -> int:
        """The CAS module's features before its classifier: H channels."""
        return self.classifier.in_channels

    def background_scores(self, outputs: dict[str, Tensor], kind: str) -> list[Tensor]:
        """cas: the base branch's S_base; cas_fg: the suppression branch's S_supp ([B, T, C+1])."""
        return [outputs["supp_logits" if kind == "cas_fg" else "base_logits"]]

    def classify(self, x: Tensor, m: Tensor, enhance: Enhance | None = None) -> Tensor:
        """The shared CAS module: x [B, D, T], m [B, 1, T] float -> logits [B, T, C+1].

        Inputs of each k=3 conv are zeroed on padding, so a real snippet next to padding sees
        the zeros of the authors' conv padding and padded snippets never reach real ones.
        enhance: maps the features before the classifier [B, H, T] to what it reads instead
        (``whole_video_bg`` puts its temporal enhancement network here); None keeps them."""
        y = _act(self.cas_conv1(x * m))
        y = _act(self.cas_conv2(y * m))
        if enhance is not None:
            y = enhance(y, y)  # no dropout before this point
        return self.classifier(self.dropout(y)).transpose(1, 2)

    def forward(
        self, features: Tensor, mask: Tensor, enhance: Enhance | None = None
    ) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention [B, T] (0 on padding), base_logits and
        supp_logits [B, T, C+1]; enhance: as in :meth:`classify`, in both branches."""
        m = mask[:, None, :].to(features.dtype)  # [B, 1, T]
        x = features.transpose(1, 2) * m  # [B, D, T]
        attention = torch.sigmoid(self.filter_out(_act(self.filter_hidden(x)))) * m  # [B, 1, T]
        return {
            "attention": attention.squeeze(1),
            "base_logits": self.classify(x, m, enhance),
            "supp_logits": self.classify(x * attention, m, enhance),
        }

    def video_probabilities(self, logits: Tensor, mask: Tensor) -> Tensor:
        """logits [B, T, C+1] -> softmax over the C+1 channels of the top-k mean over time [B, C+1]."""
        return torch.softmax(topk_mean(logits, mask, self.cfg.topk_r), -1)

    def _video_loss(self, logits: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """One branch's classification loss against ``target`` [B, C+1] (normalised here) -> scalar."""
        if self.cfg.cls_loss == "ce":
            return video_cross_entropy(topk_mean(logits, mask, self.cfg.topk_r), target)
        return F.binary_cross_entropy(self.video_probabilities(logits, mask), _normalise(target))

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "base", "supp", "norm"} scalars."""
        ones, zeros = labels.new_ones(labels.shape[0], 1), labels.new_zeros(labels.shape[0], 1)
        base = self._video_loss(outputs["base_logits"], torch.cat([labels, ones], 1), mask)
        supp = self._video_loss(outputs["supp_logits"], torch.cat([labels, zeros], 1), mask)
        attention = outputs["attention"]
        norm = torch.where(mask, attention, torch.zeros_like(attention)).abs().sum(1).mean()  # L1 over real snippets
        total = base + supp + self.cfg.norm_weight * norm
        return {"total": total, "base": base, "supp": supp, "norm": norm}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]; cas [B, T, C]: S_supp normalised as the authors do (module docstring),
        <= 1 and negative where S_supp < 0; video_scores [B, C]: softmax over the C+1 channels of
        the top-k mean of S_supp (k = max(1, T_real // video_topk_divisor); the authors' divisor
        is 8), action channels. Padded positions are 0."""
        s = outputs["supp_logits"][..., :-1]  # [B, T, C]
        real = mask[..., None]  # [B, T, 1]
        low = torch.where(real, s, torch.full_like(s, float("inf"))).amin(1, keepdim=True).clamp(min=0)  # [B, 1, C]
        high = torch.where(real, s, torch.full_like(s, float("-inf"))).amax(1, keepdim=True).clamp(min=0)
        span = high - low
        span = torch.where(span > 0, span, torch.ones_like(span))
        cas = torch.where(real, (s - low) / span, torch.zeros_like(s))
        pooled = topk_mean(outputs["supp_logits"], mask, video_topk_divisor)
        return {
            "attention": outputs["attention"] * mask.to(s.dtype),
            "cas": cas,
            "video_scores": torch.softmax(pooled, -1)[:, :-1],
        }
