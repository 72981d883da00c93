"""The post-processing settings (``inference.*``) and their one validation.

The defaults below are those of a model that declares none. Each model's config declares its
authors' post-processing as a typed :class:`InferenceConfig` (``inference_defaults``), which the
config loader starts from; ``inference.*`` keys in a YAML file or an override replace its fields.
:meth:`InferenceConfig.validate` is the only check of these settings: the config loader calls it,
so a bad value is refused before anything trains, and :func:`wtal.localize.localize` calls it once
for a config built by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from wtal.errors import WtalError

PIPELINES = ("multi_threshold", "delu")


@dataclass
class InferenceConfig:
    """Post-processing (:mod:`wtal.localize`): scores of one video -> scored segments in seconds."""

    pipeline: str = "multi_threshold"  # order of the stages: multi_threshold | delu (length filter after NMS)
    test_seqlen: int = 0  # score each test video on this many snippets, at floor(i * T / n) (0: all its T snippets)
    test_resample: str = "longer"  # longer: resample only videos longer than test_seqlen | all: every video
    class_threshold: float = 0.2  # keep classes whose video score passes this (class_inclusive, class_fallback)
    class_inclusive: bool = True  # a class passes when its video score >= class_threshold (false: > it)
    class_fallback: bool = True  # when no class passes, keep the best one (false: the video gets no detections)
    video_topk_divisor: int = 10  # video score: mean of top T // divisor snippets
    proposal_source: str = "attention"  # attention | cas | both: what is thresholded
    thresholds: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )  # proposal thresholds (of the cas; of the attention too unless attention_thresholds is set)
    attention_thresholds: list[float] = field(default_factory=list)  # thresholds of the attention (empty: thresholds)
    normalize: bool = True  # min-max normalise each proposal sequence before thresholding (false: raw values)
    inclusive: bool = True  # a snippet is active when its value >= the threshold (false: > the threshold)
    require_positive: bool = False  # an active snippet must also be > 0
    upsample: int = 1  # upsample each proposal and scoring sequence this many times before thresholding
    upsample_mode: str = "repeat"  # repeat: each snippet upsample times | linear: interpolate and extrapolate
    min_length: int = 0  # drop segments shorter than this many (upsampled) snippets (before NMS; delu: after)
    segment_score: str = "contrast"  # contrast: outer-inner contrast of the cas | max: the cas's maximum inside
    zero_below_threshold: bool = False  # score a cas candidate on the cas with values below its threshold set to 0
    outer_margin: float = 0.25  # outer-inner contrast margin, as a fraction of the length
    margin_rule: str = "round"  # round: max(1, round(m * len)) each side | ceil_floor: ceil before, floor after
    class_score_weight: float = 0.2  # weight of the class term added to each segment's score
    class_score: str = "score"  # class term: score: the video score | binary: 1 if the class passed class_threshold
    clip_to_duration: bool = True  # clip segments to [0, duration] when the video's duration is known
    dedup: bool = True  # merge candidates with the same class, start and end (keeping the best) before NMS
    nms: str = "nms"  # nms | soft_nms | none
    nms_iou: float = 0.6  # IoU for hard NMS
    nms_inclusive: bool = False  # hard NMS drops boxes whose IoU >= nms_iou (false: > nms_iou)
    soft_nms_sigma: float = 0.3  # Gaussian soft-NMS sigma
    nms_length_offset: float = 0.0  # added to each length and overlap in NMS IoU, in nms_offset_unit
    nms_offset_unit: str = "snippets"  # unit of nms_length_offset: snippets (upsampled) | seconds
    max_per_video: int = 100  # keep the best detections per video after NMS (0: all)

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``inference.<key>``, what was expected and what was found."""

        def fail(key: str, expected: str) -> None:
            raise WtalError(f"{source}: inference.{key}: expected {expected}, found {getattr(self, key)!r}")

        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                fail(key, f"one of {list(choices)}")
        for key in ("upsample", "video_topk_divisor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(key, "an integer >= 1")
        for key in ("test_seqlen", "min_length", "max_per_video"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                fail(key, "an integer >= 0")
        for key in ("outer_margin", "nms_length_offset"):
            if not _finite(getattr(self, key)) or getattr(self, key) < 0:
                fail(key, "a finite number >= 0")
        for key in ("class_threshold", "class_score_weight"):
            if not _finite(getattr(self, key)):
                fail(key, "a finite number")
        if not _finite(self.soft_nms_sigma) or self.soft_nms_sigma <= 0:
            fail("soft_nms_sigma", "a positive number")
        if not 0 <= self.nms_iou <= 1:
            fail("nms_iou", "an IoU in [0, 1]")
        if not self.thresholds:
            fail("thresholds", "at least one threshold")
        for key in ("thresholds", "attention_thresholds"):
            values = getattr(self, key)
            if not all(_finite(t) for t in values):
                fail(key, "finite numbers")
            if self.normalize and not all(0.0 <= t <= 1.0 for t in values):
                fail(key, "values in [0, 1] (the proposal sequence is min-max normalised)")


_CHOICES = {
    "pipeline": PIPELINES,
    "test_resample": ("longer", "all"),
    "proposal_source": ("attention", "cas", "both"),
    "upsample_mode": ("repeat", "linear"),
    "segment_score": ("contrast", "max"),
    "margin_rule": ("round", "ceil_floor"),
    "class_score": ("score", "binary"),
    "nms": ("nms", "soft_nms", "none"),
    "nms_offset_unit": ("snippets", "seconds"),
}


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
