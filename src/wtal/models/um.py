"""Uncertainty Modeling (UM; Lee et al., AAAI 2021), a baseline computing what the authors' code does.

Network: embedding (conv k=3 + ReLU) -> features ``F`` [B, T, H]; classifier (dropout,
1x1 conv, no bias) -> class activation sequence ``S`` [B, T, C] over the C action
classes only. Background is not a class: it is modelled by the feature magnitude
``||F_t||``. Both convs keep PyTorch's default initialisation, as the authors' code does.

Pseudo action / background mining per video, k = max(1, T_real // r): the k_act = T_real // r_act
snippets of largest magnitude are pseudo action, the k_bkg = T_real // r_bkg of largest
``max_t ||F_t|| - ||F_t||`` (the maximum over all real snippets) pseudo background. During
training each real snippet is left out of both selections with probability ``select_dropout``
(the authors drop it from a ones vector with dropout, which zeroes its score); a left-out snippet
scores 0, so it is picked only when fewer than k snippets score above 0, and then in position
order (the authors' order among such ties is whatever ``torch.sort`` gives).

Loss: ``L_cls + um_weight * L_um + be_weight * L_be``, with the video scores
``p_act = softmax(top-k_act mean of S over time)`` (each class its own top k_act snippets) and
``p_bkg = softmax(mean of S over the pseudo background)``:

* ``L_cls``: binary cross-entropy of ``p_act`` against the label normalised to sum 1,
  averaged over videos and classes (log clamped at -100, as ``torch``'s BCE);
* ``L_um`` (the feature-magnitude loss):
  ``(max(0, m - ||mean F_act||) + ||mean F_bkg||)^2`` averaged over videos;
* ``L_be`` (background entropy): binary cross-entropy of ``p_bkg`` against ``1 / C`` for
  every class, averaged over videos and classes.

Inference (``attention``, ``cas`` of :meth:`UncertaintyModeling.scores`), as the authors' test
code: the actionness is ``clip((||F_t|| - g_bkg) / (g_act - g_bkg), 0, 1)`` where ``g_act`` and
``g_bkg`` are the mean magnitudes of the pseudo action and background snippets (a difference
<= 0 is replaced by 1); the CAS is ``softmax(S) * actionness`` min-max normalised over time per
class between ``relu(min)`` and ``relu(max)`` (a range <= 0 replaced by 1), clipped to [0, 1];
their class score is ``p_act`` (``inference.video_topk_divisor`` = r_act).

Post-processing (``UMConfig.inference_defaults``, the authors' test.py and utils.py; proven by
tests/test_parity_um.py against proposals from their code): a test video longer than 750
snippets is scored on 750 at floor(i T / 750), one resampled snippet lasting T / 750 of the
video's (shorter videos are scored whole); classes with ``p_act`` >= 0.2, else the best one;
the CAS and the actionness upsampled 24 times by linear interpolation (extrapolated past the last
snippet, as scipy's ``interp1d``); proposals where the CAS is >= each of 0, 0.025, ..., 0.225
and > 0 (scored on the CAS with the values below that threshold set to 0) and where the
actionness is >= each of 0.4, 0.425, ..., 0.6 (as their ``np.arange``, 0.425 being
0.42500000000000004; scored on the plain CAS), runs of at least 2 upsampled snippets;
outer-inner contrast with margins ceil(0.25 len) before and floor(0.25 len) after, plus 0.2 x
``p_act``; segments not clipped to the video's duration; per-class hard NMS over the proposals of
all 19 thresholds dropping IoU >= 0.6, with 1 s added to every length and overlap; no cap.

Where wtal departs from the authors' code, and why:

* k = max(1, T_real // r): the authors' k = T // r is 0 below r snippets, a mean over nothing.
* ``video_loss``: ``bce`` (default) is the authors' code; ``ce`` is categorical cross-entropy
  for both ``L_cls`` and ``L_be`` (wtal's former form: its gradient is about C times larger,
  which weakens ``L_um`` relative to it).
* A label row of zeros is kept finite (the authors divide by its zero sum).

Defaults are the THUMOS14 values of the official code (um_weight 5e-4, be_weight 1,
margin 100, r_act 9, r_bkg 4, embedding width 2048, dropouts 0.7).
``AUTHORS_STATE_DICT_NAMES`` maps the authors' parameter names to ours.

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import masked_min, topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.localize import InferenceConfig
from wtal.models.basnet import BASNET_INFERENCE
from wtal.models.registry import ModelConfig, register_model

VIDEO_LOSSES = ("bce", "ce")

# The authors' state_dict names (model.py: Model) -> ours.
AUTHORS_STATE_DICT_NAMES = {
    "cas_module.conv.0.weight": "embed.weight",
    "cas_module.conv.0.bias": "embed.bias",
    "cas_module.classifier.0.weight": "classifier.weight",
}


@dataclass
class UMConfig(ModelConfig):
    name: str = "um"
    embed_dim: int = 2048  # width H of the embedding (its magnitude is the actionness) [UM]
    dropout: float = 0.7  # dropout before the classifier [UM]
    select_dropout: float = 0.7  # training: chance a snippet is left out of pseudo action/background mining [UM code]
    r_act: int = 9  # pseudo action and top-k class pooling: k = max(1, T_real // r_act) [UM]
    r_bkg: int = 4  # pseudo background: k = max(1, T_real // r_bkg) [UM]
    margin: float = 100.0  # magnitude margin m: action magnitudes pushed above it [UM]
    um_weight: float = 5e-4  # weight of the feature-magnitude (uncertainty modelling) loss L_um [UM]
    be_weight: float = 1.0  # weight of the background entropy loss L_be [UM code; 1]
    video_loss: str = "bce"  # bce: BCE on softmax scores, class-averaged [UM code] | ce: categorical [ours]

    # The authors' post-processing (test.py, utils.upgrade_resolution, get_proposal_oic and nms):
    # BaS-Net's (the same authors' earlier code) with UM's changes: the actionness thresholded too,
    # runs of at least 2 upsampled snippets, the fallback class, the video score as class term,
    # NMS at 0.6, short videos scored whole.
    inference_defaults: ClassVar[InferenceConfig] = dataclasses.replace(
        BASNET_INFERENCE,
        proposal_source="both",
        attention_thresholds=[float(t) for t in np.arange(0.4, 0.625, 0.025)],
        min_length=2,
        class_fallback=True,
        class_threshold=0.2,
        class_score="score",
        video_topk_divisor=9,
        nms_iou=0.6,
        test_resample="longer",
    )

    checks: ClassVar[Mapping[str, Any]] = {
        "counts": ("embed_dim", "r_act", "r_bkg"),
        "probabilities": ("dropout", "select_dropout"),
        "positive": ("margin",),
        "non_negative": ("um_weight", "be_weight"),
        "choices": {"video_loss": VIDEO_LOSSES},
    }


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


def softmax_bce(logits: Tensor, target: Tensor) -> Tensor:
    """Binary cross-entropy of softmax(logits) against the target normalised to sum 1,
    averaged over videos and classes (UM's code; log clamped at -100 by ``torch``).

    logits [B, K], target [B, K] non-negative -> scalar. A target row of zeros pushes every
    probability of its video towards 0.
    """
    target = target / target.sum(-1, keepdim=True).clamp(min=1e-8)
    return F.binary_cross_entropy(torch.softmax(logits, -1), target)


def minmax_over_time(x: Tensor, mask: Tensor) -> Tensor:
    """Per video and channel, (x - relu(min)) / (relu(max) - relu(min)) over the real snippets,
    a range <= 0 replaced by 1, clipped to [0, 1]; 0 on padding.

    x [B, T, K], mask [B, T] -> [B, T, K].
    """
    m = mask[..., None]
    high = F.relu(torch.where(m, x, torch.full_like(x, float("-inf"))).amax(1, keepdim=True))  # [B, 1, K]
    low = F.relu(masked_min(x, mask))[:, None]  # [B, 1, K]
    span = high - low
    span = torch.where(span > 0, span, torch.ones_like(span))
    return ((x - low) / span).clamp(0.0, 1.0) * m.to(x.dtype)


@register_model("um", UMConfig)
class UncertaintyModeling(WtalModel):
    """Embedding + C-way classifier; feature magnitudes separate action from background.

    ``background_row`` (UM has no background channel) adds a bias-free background row to the
    classifier, its logits the ``background_logits`` output, which nothing of UM's own loss or
    scores reads."""

    authors_names = AUTHORS_STATE_DICT_NAMES

    def __init__(self, cfg: UMConfig, in_dim: int, num_classes: int, background_row: bool = False):
        super().__init__(cfg, num_classes, background_row)
        self.embed = nn.Conv1d(in_dim, cfg.embed_dim, 3, padding=1)
        self.classifier = nn.Conv1d(cfg.embed_dim, num_classes + int(background_row), 1, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def enhance_width(self) -> int:
        """The embedding: H channels."""
        return self.classifier.in_channels

    @property
    def topk_ratio(self) -> int:
        return self.cfg.r_act

    def forward(
        self,
        features: Tensor,
        mask: Tensor,
        keep: Tensor | None = None,
        enhance: Enhance | None = None,
    ) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> embedding [B, T, H]; magnitude ||F_t|| and
        attention (the actionness) [B, T]; cas_logits S [B, T, C]; act_weights and bkg_weights
        [B, T] (pseudo action / background selections, 1/k on each chosen snippet);
        video_logits (top-k_act mean of S) and bkg_logits (mean of S over the pseudo
        background) [B, C]; with the background row, background_logits [B, T].

        keep [B, T] bool: the snippets that may be mined as pseudo action/background. By
        default each real snippet is kept with probability 1 - select_dropout in training and
        every real snippet in eval mode; a given mask (e.g. a recorded draw) is used as is.
        enhance: maps the embedding [B, H, T] to what the classifier, the magnitudes and
        ``embedding`` then read (``whole_video_bg`` puts its temporal enhancement network here);
        None keeps it.
        """
        cfg = self.cfg
        m = mask[:, None, :].to(features.dtype)
        e = F.relu(self.embed(features.transpose(1, 2) * m))  # [B, H, T]
        if enhance is not None:
            e = enhance(e, e)  # no dropout before this point
        logits = self.split_background_row(self.classifier(self.dropout(e)).transpose(1, 2))
        s = logits["cas_logits"]  # [B, T, C]
        magnitude = e.norm(dim=1)  # [B, T]
        if keep is None:
            keep = mask
            if self.training and cfg.select_dropout > 0:
                keep = mask & (torch.rand_like(magnitude) >= cfg.select_dropout)
        keep = keep & mask
        with torch.no_grad():  # the selection is an index, no gradient flows through it
            zero = torch.zeros_like(magnitude)
            top = torch.where(mask, magnitude, zero).amax(1, keepdim=True)  # [B, 1]
            act_weights = select_topk(torch.where(keep, magnitude, zero), mask, cfg.r_act)
            bkg_weights = select_topk(torch.where(keep, top - magnitude, zero), mask, cfg.r_bkg)
            g_act = (act_weights * magnitude).sum(1, keepdim=True)  # [B, 1] mean magnitudes
            g_bkg = (bkg_weights * magnitude).sum(1, keepdim=True)
            span = g_act - g_bkg
            span = torch.where(span > 0, span, torch.ones_like(span))
            attention = ((magnitude - g_bkg) / span).clamp(0.0, 1.0) * mask.to(magnitude.dtype)
        return {
            "embedding": e.transpose(1, 2),
            "magnitude": magnitude,
            "attention": attention,
            **logits,
            "act_weights": act_weights,
            "bkg_weights": bkg_weights,
            "video_logits": topk_mean(s, mask, cfg.r_act),
            "bkg_logits": torch.einsum("bt,btc->bc", bkg_weights, s),
        }

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "cls", "um", "be"} scalars."""
        cfg = self.cfg
        f = outputs["embedding"]
        act_mean = torch.einsum("bt,bth->bh", outputs["act_weights"], f)
        bkg_mean = torch.einsum("bt,bth->bh", outputs["bkg_weights"], f)
        um = magnitude_loss(act_mean, bkg_mean, cfg.margin)
        video_loss = softmax_bce if cfg.video_loss == "bce" else video_cross_entropy
        cls = video_loss(outputs["video_logits"], labels)
        be = video_loss(outputs["bkg_logits"], torch.ones_like(labels))
        total = cls + cfg.um_weight * um + cfg.be_weight * be
        return {"total": total, "cls": cls, "um": um, "be": be}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]: the actionness; cas [B, T, C]: softmax(S) * actionness, min-max
        normalised over time per class (UM's inference CAS); video_scores [B, C]: softmax of the
        top-k mean of S (k = max(1, T_real // video_topk_divisor); UM's code uses r_act).
        Padded positions are 0."""
        s = outputs["cas_logits"]
        attention = outputs["attention"] * mask.to(s.dtype)
        return {
            "attention": attention,
            "cas": minmax_over_time(torch.softmax(s, -1) * attention[..., None], mask),
            "video_scores": torch.softmax(topk_mean(s, mask, video_topk_divisor), -1),
        }
