"""Scores -> segments: turn per-snippet scores into scored detections in seconds.

For one video (``attention`` [T], ``cas`` [T, C], ``video_scores`` [C]):

1. Classes: those whose video score passes ``class_threshold``, else the single best
   (``class_fallback``).
2. Candidates: for each selected class the proposal sequences (``attention``, ``cas[:, c]`` or
   both) are min-max normalised (``normalize``), upsampled ``upsample`` times (``upsample_mode``)
   and compared with every threshold of their set at once (``thresholds`` for the cas,
   ``attention_thresholds`` for the attention, or ``thresholds`` when empty); each maximal run of active snippets is a
   candidate ``[s, e)`` in upsampled snippet units (``e`` exclusive); runs shorter than
   ``min_length`` are dropped. All runs of all classes and thresholds of a source come from one
   ``np.diff`` over padded masks.
3. Score: on ``cas[:, c]`` (upsampled alike; for a candidate from the cas, with the values below
   its threshold set to 0 when ``zero_below_threshold``) the outer-inner contrast or the maximum
   inside (``segment_score``), plus ``class_score_weight`` times the video score or 1
   (``class_score``); every mean is O(1) from cumulative sums, all maxima come from one
   ``np.maximum.reduceat``.
4. Seconds: ``s * snippet_seconds / upsample`` and ``e * snippet_seconds / upsample``, clipped to
   ``[0, duration]`` when ``clip_to_duration`` and ``duration > 0`` (0 means unknown);
   zero-length results are dropped.
5. Per class: exact duplicates (same start and end) keep their best score (``dedup``), then
   hard NMS, Gaussian soft-NMS or none; finally the best ``max_per_video`` detections (0: all).

Every step is a setting of :class:`InferenceConfig` (:mod:`wtal.localize.config`, validated there
once); each model declares its authors' settings (``inference_defaults`` of its config), which the
config loader starts from. ``pipeline`` orders the steps (:mod:`wtal.localize.pipelines`):
``multi_threshold`` as above, ``delu`` with ``min_length`` applied after step 5's suppression.

Choices:

- A class passes when its video score is >= ``class_threshold`` (``class_inclusive``) or > it;
  with ``class_fallback`` false a video where none passes has no detections.
- A snippet is active when its value is >= the threshold (``inclusive``) or > it, and with
  ``require_positive`` also > 0.
- ``upsample_mode=repeat`` repeats each snippet; ``linear`` (the authors' ``interp1d`` of BaS-Net
  and UM) samples the straight lines between snippets at ``i * (1 / upsample)`` for
  ``i < T * upsample``, the positions past the last snippet on the line through the last two
  (so values may leave [0, 1]); a one-snippet sequence stays constant.
- A constant sequence (max == min) has no contrast to localise; it normalises to all ones, so
  it yields one whole-video candidate rather than none.
- ``zero_below_threshold``: the scored ``cas[:, c]`` of a candidate found on the cas keeps its
  values where the thresholded sequence is >= that threshold and is 0 elsewhere; candidates
  found on the attention are scored on the plain ``cas[:, c]``.
- ``margin_rule=round``: each margin is ``max(1, round_half_up(outer_margin * length))``
  snippets; ``ceil_floor`` (CO2-Net's, BaS-Net's and UM's code): ``ceil(outer_margin * length)``
  before and ``floor(outer_margin * length)`` after. Margins are clipped to the sequence; the
  outer mean pools the snippets of both margins and is 0 when both are empty.
- ``class_score=binary`` adds ``class_score_weight`` x 1 for a class that passed
  ``class_threshold`` and x 0 for a fallback class (BaS-Net's binarised class scores).
- NMS IoU is ``(inter + o) / (len_a + o + len_b + o - (inter + o))`` with ``o`` =
  ``nms_length_offset`` upsampled snippets or seconds (``nms_offset_unit``): CO2-Net's code
  counts a segment's end snippet twice (o = 1 snippet), BaS-Net's and UM's add 1 to lengths in
  seconds (o = 1 s).
- Hard NMS drops a box whose IoU with a kept, better box is > ``nms_iou`` (>= with
  ``nms_inclusive``).
- Soft-NMS multiplies scores by ``exp(-iou**2 / sigma)`` and drops nothing. Contrast scores can
  be negative; the factor keeps the sign, so a negative score moves towards 0 but never passes a
  positive one.
- NMS stops after ``max_per_video`` picks per class, since no class can place more in the
  output; exact for hard NMS, and for soft-NMS while scores are >= 0.
- Sorting is stable, so ties in score keep a deterministic order.
- Loops run over selected classes and over boxes kept by NMS, never over snippets.
- ``test_seqlen`` and ``test_resample`` act before this module, when the model scores a video
  (``wtal.engine.inference.predict``): the arrays of a resampled video hold its resampled
  snippets, and ``snippet_seconds`` is the duration of one of them (a record's sixth item in
  :func:`localize`).
"""

from wtal.localize.config import PIPELINES, InferenceConfig
from wtal.localize.pipelines import Segments, localize, localize_video
from wtal.localize.stages import nms, passes_class_threshold, select_classes, soft_nms, temporal_iou

__all__ = [
    "PIPELINES",
    "InferenceConfig",
    "Segments",
    "localize",
    "localize_video",
    "nms",
    "passes_class_threshold",
    "select_classes",
    "soft_nms",
    "temporal_iou",
]
