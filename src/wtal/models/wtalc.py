"""W-TALC (Paul, Roy, Roy-Chowdhury, ECCV 2018): k-max MIL loss + co-activity similarity loss.

Network (the authors' code): a fully connected layer D -> H on each snippet, ReLU,
dropout (0.7), then a linear classifier H -> C over the action classes (no background
channel): embedding ``X`` [B, T, H] (after dropout), class activation logits ``S`` [B, T, C].
Linear weights are Xavier-uniform, biases zero. (The authors' module also builds a second
D -> D layer that its forward never uses; it has no counterpart here.)

Loss: ``mil_weight * L_mil + casl_weight * L_casl`` (the authors' Lambda and 1 - Lambda).
* ``L_mil``: cross-entropy of softmax(mean of the k largest S over the real snippets)
  against the multi-hot labels normalised to sum 1, ``k = ceil(T_real / 8)``, averaged
  over the videos.
* ``L_casl``: the first ``2 * similar_pairs`` videos of the batch are ``similar_pairs`` pairs
  (2p, 2p+1) sampled to share a class. Per video and class, attention over its real
  snippets ``A = softmax_t(S)``; high- and low-attention features ``Hf = X^T A`` and
  ``Lf = X^T (1 - A) / max(T_real - 1, 1)`` [H, C]; cosine distances
  ``d1 = 1 - cos(Hf_a, Hf_b)``, ``d2 = 1 - cos(Hf_a, Lf_b)``, ``d3 = 1 - cos(Hf_b, Lf_a)``;
  ``L_casl = sum over pairs and shared classes of 0.5 [d1 - d2 + 0.5]_+ + 0.5 [d1 - d3 + 0.5]_+``
  divided by the number of (pair, shared class) terms.

Departures, none of which changes a value the authors' code computes on a batch without
padding and with at least one shared class among its pairs: the authors take each video's
length from its non-zero feature rows, here the mask gives it; when the batch holds fewer
than ``2 * similar_pairs`` videos, its ``B // 2`` leading pairs are used; when no pair shares a
class (the authors divide 0 by 0), ``L_casl`` is 0; each cosine's denominator is floored at
``wtal.losses.COSINE_EPS``; the sampler (``wtal.data.sampling``) draws the two videos of a
pair without replacement, where W-TALC's code may draw one video twice.

Scores: W-TALC localises on the raw logits, so ``cas`` is ``S`` itself (unbounded) and
``video_scores`` the raw mean of the k = T_real // video_topk_divisor largest logits of each
class (floored at 1; the authors' k = floor(T / 8)); ``attention`` is the maximum over the
classes of ``S`` min-max normalised per class over each video's real snippets (0 where
``S[:, c]`` is constant; unused by the post-processing).

Post-processing (``WTALCConfig.inference_defaults``, the authors' detectionMAP.getLocMAP; proven
by tests/test_parity_wtalc.py against segments from their code): the whole video, classes whose
top-k mean logit is > 0 (none when no class passes); per class, snippets whose logit is above the
midpoint of the video's range (min-max normalised > 0.5), runs of at least 2 snippets; score =
the maximum logit inside + 0.7 x the top-k mean; no NMS, no cap, no clipping. Where the authors'
code differs: below 8 snippets their top-k mean is over nothing (NaN, so no class), here k is 1;
a class whose logits are all equal has no segment there and one whole-video candidate here
(``wtal.localize`` normalises a constant sequence to ones), which runs of >= 2 snippets keep
unless the video has one snippet.

Shapes: B videos, T snippets, D feature width, C action classes, H ``embed_dim``;
``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.losses import co_activity_loss, topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.localize import InferenceConfig
from wtal.models.registry import ModelConfig, register_model


# The authors' state_dict names -> ours (None: a parameter their forward never uses).
AUTHORS_STATE_DICT_NAMES: dict[str, str | None] = {
    "fc.weight": "fc.weight",
    "fc.bias": "fc.bias",
    "fc1.weight": None,
    "fc1.bias": None,
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}


@dataclass
class WTALCConfig(ModelConfig):
    name: str = "wtalc"
    embed_dim: int = 2048  # width H of the fully connected layer (authors: D -> D, I3D D = 2048) [W-TALC code]
    dropout: float = 0.7  # dropout after the fully connected layer [W-TALC code]
    topk_r: int = 8  # k-max MIL pooling, k = ceil(T_real / topk_r) [W-TALC code]
    similar_pairs: int = 3  # same-class pairs at the start of each training batch, used by L_casl (0: none) [W-TALC code]
    mil_weight: float = 0.5  # weight of L_mil (Lambda) [W-TALC code]
    casl_weight: float = 0.5  # weight of L_casl (1 - Lambda) [W-TALC code]

    # The authors' post-processing (detectionMAP.getLocMAP); inference.* keys override.
    inference_defaults: ClassVar[InferenceConfig] = InferenceConfig(
        class_threshold=0.0,
        class_inclusive=False,
        class_fallback=False,
        video_topk_divisor=8,
        proposal_source="cas",
        thresholds=[0.5],
        inclusive=False,
        min_length=2,
        segment_score="max",
        class_score_weight=0.7,
        clip_to_duration=False,
        dedup=False,
        nms="none",
        max_per_video=0,
    )

    checks: ClassVar[Mapping[str, Any]] = {
        "counts": ("embed_dim", "topk_r"),
        "probabilities": ("dropout",),
        "non_negative": ("mil_weight", "casl_weight", "similar_pairs"),
    }


@register_model("wtalc", WTALCConfig)
class WTALC(WtalModel):
    """Per-snippet fully connected layer + C-way classifier, trained with L_mil and L_casl."""

    authors_names = AUTHORS_STATE_DICT_NAMES

    def __init__(self, cfg: WTALCConfig, in_dim: int, num_classes: int, background_row: bool = False):
        super().__init__(cfg, num_classes, background_row)
        self.fc = nn.Linear(in_dim, cfg.embed_dim)
        self.classifier = nn.Linear(cfg.embed_dim, num_classes + int(background_row))
        self.dropout = nn.Dropout(cfg.dropout)
        for layer in (self.fc, self.classifier):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def enhance_width(self) -> int:
        """The embedding X: H channels."""
        return self.classifier.in_features

    def forward(self, features: Tensor, mask: Tensor, enhance: Enhance | None = None) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> embedding X [B, T, H] (0 on padding), cas_logits S [B, T, C]
        (and background_logits [B, T] with the background row).

        enhance: maps X [B, H, T] (and X before its dropout) to what the classifier and the
        co-activity loss then read (``embedding``; X itself is then returned as ``unenhanced`` too)."""
        real = mask[..., None]
        clean = F.relu(self.fc(features.masked_fill(~real, 0.0)))  # [B, T, H]
        x = unenhanced = self.dropout(clean).masked_fill(~real, 0.0)
        if enhance is not None:
            x = enhance(x.transpose(1, 2), clean.transpose(1, 2)).transpose(1, 2).masked_fill(~real, 0.0)
        outputs = {"embedding": x, **self.split_background_row(self.classifier(x))}
        return outputs if enhance is None else {**outputs, "unenhanced": unenhanced}

    def before_enhancement(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The co-activity loss reads X before the enhance hook."""
        return {**outputs, "embedding": outputs["unenhanced"]} if "unenhanced" in outputs else outputs

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot, the first 2 similar_pairs videos in same-class pairs
        -> {"total", "mil", "casl"} scalars."""
        cfg = self.cfg
        s = outputs["cas_logits"]
        mil = video_cross_entropy(topk_mean(s, mask, cfg.topk_r, ceil=True), labels)
        casl = co_activity_loss(outputs["embedding"], s, labels, mask, cfg.similar_pairs)
        return {"total": cfg.mil_weight * mil + cfg.casl_weight * casl, "mil": mil, "casl": casl}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """cas [B, T, C]: the raw logits S; video_scores [B, C]: the raw mean of the top
        k = max(1, T_real // video_topk_divisor) logits of each class (the authors' divisor is 8);
        attention [B, T]: max over classes of S min-max normalised per class over each video's
        real snippets (0 where S[:, c] is constant). Padded positions are 0."""
        s = outputs["cas_logits"]
        real = mask[..., None]
        low = s.masked_fill(~real, float("inf")).amin(1, keepdim=True)  # [B, 1, C]
        high = s.masked_fill(~real, float("-inf")).amax(1, keepdim=True)
        span = high - low
        normalised = torch.where(real & (span > 0), (s - low) / span.clamp(min=torch.finfo(s.dtype).tiny), 0.0)
        return {
            "attention": normalised.amax(-1),
            "cas": s.masked_fill(~real, 0.0),
            "video_scores": topk_mean(s, mask, video_topk_divisor),
        }
