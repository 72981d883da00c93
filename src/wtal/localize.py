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

Every step is a switch of :class:`~wtal.config.InferenceConfig`; each model declares its
authors' settings (``inference_defaults`` of its config), which the config loader applies.

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

from __future__ import annotations

from typing import Iterable

import numpy as np

from wtal.config import InferenceConfig
from wtal.detections import Detections
from wtal.errors import WtalError, where

_SOURCES = ("attention", "cas", "both")
_NMS = ("nms", "soft_nms", "none")
_MARGIN_RULES = ("round", "ceil_floor")
_UPSAMPLE_MODES = ("repeat", "linear")
_SEGMENT_SCORES = ("contrast", "max")
_CLASS_SCORES = ("score", "binary")
_OFFSET_UNITS = ("snippets", "seconds")
_TINY = np.finfo(np.float64).tiny


def temporal_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of segments ``a`` [N, 2] and ``b`` [M, 2] (``[start, end]``, any unit) -> [N, M].

    ActivityNet formula: ``inter / (len_a + len_b - inter)``; 0 where the union is empty.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 2)
    inter = np.minimum(a[:, None, 1], b[None, :, 1]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter = np.clip(inter, 0.0, None)
    union = (a[:, 1] - a[:, 0])[:, None] + (b[:, 1] - b[:, 0])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _iou_one(s: float, e: float, starts: np.ndarray, ends: np.ndarray, offset: float = 0.0) -> np.ndarray:
    """IoU of one segment ``[s, e]`` with each of ``[starts, ends]`` [M] -> [M] (hot loop: lean).

    ``offset`` is added to every length and to the overlap (see the module notes)."""
    inter = np.maximum(np.minimum(e, ends) - np.maximum(s, starts) + offset, 0.0)
    # An empty union means an empty intersection too, so the tiny floor yields IoU 0.
    return inter / np.maximum((e - s) + (ends - starts) + 2 * offset - inter, _TINY)


def nms(
    start: np.ndarray,
    end: np.ndarray,
    score: np.ndarray,
    iou: float,
    limit: int = 0,
    offset: float = 0.0,
    inclusive: bool = False,
) -> np.ndarray:
    """Hard NMS over segments ``start``/``end``/``score`` [N] -> kept indices [K], best first.

    A segment is dropped when its IoU with an already kept, better segment is > ``iou``
    (>= with ``inclusive``). ``limit`` > 0 stops after that many kept segments (the same first
    ``limit`` as without it). ``offset`` is added to lengths and overlaps in the IoU.
    """
    start, end, score = (np.asarray(x, dtype=np.float64) for x in (start, end, score))
    order = np.argsort(-score, kind="stable")
    keep = []
    while order.size and (limit <= 0 or len(keep) < limit):
        best, rest = order[0], order[1:]
        keep.append(best)
        overlap = _iou_one(start[best], end[best], start[rest], end[rest], offset)
        order = rest[overlap < iou] if inclusive else rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def soft_nms(
    start: np.ndarray, end: np.ndarray, score: np.ndarray, sigma: float, limit: int = 0, offset: float = 0.0
) -> np.ndarray:
    """Gaussian soft-NMS -> new scores [N], in the input order.

    Repeatedly takes the best remaining segment and multiplies the score of every other
    remaining one by ``exp(-iou**2 / sigma)``. ``limit`` > 0 stops after that many picks: the
    picks get their final scores, the rest keep partial decays (no higher than the last pick's
    score while scores are >= 0). ``offset`` is added to lengths and overlaps in the IoU.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    new = np.array(score, dtype=np.float64)
    remaining = np.arange(new.size)
    picks = 0
    while remaining.size > 1 and (limit <= 0 or picks < limit):
        pos = int(np.argmax(new[remaining]))
        best = remaining[pos]
        remaining = np.delete(remaining, pos)
        overlap = _iou_one(start[best], end[best], start[remaining], end[remaining], offset)
        new[remaining] *= np.exp(-(overlap**2) / sigma)
        picks += 1
    return new


def passes_class_threshold(video_scores: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """[C] bool: ``video_scores`` [C] >= ``cfg.class_threshold`` (> it unless ``cfg.class_inclusive``)."""
    video_scores = np.asarray(video_scores)
    if cfg.class_inclusive:
        return video_scores >= cfg.class_threshold
    return video_scores > cfg.class_threshold


def select_classes(video_scores: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Class indices [K] (ascending) whose ``video_scores`` [C] pass ``cfg.class_threshold``; when
    none does, the best one (``cfg.class_fallback``) or none."""
    chosen = np.flatnonzero(passes_class_threshold(video_scores, cfg))
    if chosen.size or not cfg.class_fallback:
        return chosen
    return np.array([int(np.argmax(video_scores))])


def _minmax(rows: np.ndarray) -> np.ndarray:
    """Min-max normalise each row of [P, T]; constant rows become all ones."""
    low = rows.min(axis=1, keepdims=True)
    span = rows.max(axis=1, keepdims=True) - low
    return np.divide(rows - low, span, out=np.ones_like(rows), where=span > 0)


def _upsample(rows: np.ndarray, up: int, mode: str) -> np.ndarray:
    """Rows [R, T] upsampled ``up`` times -> [R, L] (``repeat`` or ``linear``; module notes)."""
    if mode == "repeat":
        return np.repeat(rows, up, axis=1)
    t = rows.shape[1]
    x = np.arange(0, t, 1 / up)  # the authors' sample positions, i * fl(1 / up)
    if t == 1:
        return np.repeat(rows, x.size, axis=1)
    hi = np.clip(np.ceil(x).astype(np.int64), 1, t - 1)  # first snippet >= x, within [1, T - 1]
    lo = hi - 1
    # The line through snippets lo and hi, evaluated as interp1d does (slope x offset + left value).
    return (rows[:, hi] - rows[:, lo]) * (x - lo) + rows[:, lo]


def _runs(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of True in each row of ``masks`` [R, L] -> (row, start, end) [N], end exclusive."""
    padded = np.zeros((masks.shape[0], masks.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = masks
    step = np.diff(padded, axis=1)  # step[:, j] compares snippet j - 1 with snippet j
    row, start = np.nonzero(step == 1)
    _, end = np.nonzero(step == -1)  # row-major order pairs each end with its start
    return row, start, end


def _contrast(
    seq: np.ndarray, slot: np.ndarray, s: np.ndarray, e: np.ndarray, margin: float, rule: str = "round"
) -> np.ndarray:
    """Outer-inner contrast of candidates ``[s, e)`` on rows ``slot`` of ``seq`` [S, L] -> [N].

    Mean of ``seq`` inside minus the pooled mean over both outer margins (0 if both are empty);
    ``rule`` sizes the margins (module notes).
    """
    length = seq.shape[1]
    cum = np.zeros((seq.shape[0], length + 1))
    np.cumsum(seq, axis=1, out=cum[:, 1:])
    size = e - s
    if rule == "round":
        before = after = np.maximum(1, np.floor(margin * size + 0.5).astype(np.int64))
    else:
        before, after = np.ceil(margin * size).astype(np.int64), np.floor(margin * size).astype(np.int64)
    left, right = np.maximum(s - before, 0), np.minimum(e + after, length)
    inner = (cum[slot, e] - cum[slot, s]) / size
    outer_sum = (cum[slot, s] - cum[slot, left]) + (cum[slot, right] - cum[slot, e])
    outer_n = (s - left) + (right - e)
    outer = np.divide(outer_sum, outer_n, out=np.zeros_like(outer_sum), where=outer_n > 0)
    return inner - outer


def _level(sequences: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Proposal sequences [P, T] as thresholded: normalised (``cfg.normalize``), then upsampled -> [P, L]."""
    return _upsample(_minmax(sequences) if cfg.normalize else sequences, cfg.upsample, cfg.upsample_mode)


def _candidates(
    level: np.ndarray, thresholds: np.ndarray, cfg: InferenceConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of ``level`` [P, L] above each of ``thresholds`` [K] -> (row, s, e) [N]:
    row = p * K + threshold index, ``[s, e)`` in upsampled snippets, runs shorter than
    ``cfg.min_length`` dropped."""
    th = thresholds[None, :, None]
    masks = level[:, None, :] >= th if cfg.inclusive else level[:, None, :] > th  # [P, K, L]
    if cfg.require_positive:
        masks &= level[:, None, :] > 0
    row, s, e = _runs(masks.reshape(-1, level.shape[1]))
    long_enough = e - s >= cfg.min_length
    return row[long_enough], s[long_enough], e[long_enough]


def _window_max(seq: np.ndarray, row: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Maximum of ``seq`` [R, L] over ``[s, e)`` on rows ``row`` -> [N] (each window non-empty)."""
    if row.size == 0:
        return np.zeros(0)
    length = seq.shape[1]
    flat = np.append(seq.ravel(), 0.0)  # one spare value, so that an end at the last row's end is an index
    bounds = np.empty(2 * row.size, dtype=np.int64)
    bounds[0::2], bounds[1::2] = row * length + s, row * length + e
    return np.maximum.reduceat(flat, bounds)[0::2]  # even entries: the windows; odd ones: the gaps


def _as_scores(value, name: str, shape: str, video: str) -> np.ndarray:
    """``value`` as a finite float64 array with ``shape`` ("[T]", "[T, C]" or "[C]")."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise WtalError(f"{where(video, name)}: expected numbers, found {type(value).__name__}") from None
    if array.ndim != shape.count(",") + 1:
        raise WtalError(f"{where(video, name)}: expected shape {shape}, found {array.shape}")
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise WtalError(f"{where(video, name)}: {bad} NaN or infinite value(s); expected finite scores")
    return array


def _as_seconds(value, name: str, video: str, positive: bool) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (np.isfinite(seconds) and (seconds > 0 if positive else seconds >= 0)):
        expected = "a positive number of seconds" if positive else "seconds >= 0 (0: unknown)"
        raise WtalError(f"{where(video, name)}: expected {expected}, found {value!r}")
    return seconds


def _check_inputs(attention, cas, video_scores, video):
    attention = _as_scores(attention, "attention", "[T]", video)
    cas = _as_scores(cas, "cas", "[T, C]", video)
    video_scores = _as_scores(video_scores, "video_scores", "[C]", video)
    t = attention.shape[0]
    if t == 0:
        raise WtalError(f"{where(video, 'attention')}: empty sequence (T = 0); expected at least one snippet")
    if cas.shape[0] != t:
        raise WtalError(f"{where(video, 'cas')}: expected [T, C] with T = {t} (from attention), found {cas.shape}")
    if cas.shape[1] == 0:
        raise WtalError(f"{where(video, 'cas')}: expected at least one class column, found {cas.shape}")
    c = cas.shape[1]
    if video_scores.shape[0] != c:
        found = video_scores.shape
        raise WtalError(f"{where(video, 'video_scores')}: expected [C] with C = {c} (from cas), found {found}")
    return attention, cas, video_scores


def _check_config(cfg: InferenceConfig) -> None:
    if cfg.proposal_source not in _SOURCES:
        raise WtalError(f"inference.proposal_source: expected one of {list(_SOURCES)}, found {cfg.proposal_source!r}")
    if cfg.nms not in _NMS:
        raise WtalError(f"inference.nms: expected one of {list(_NMS)}, found {cfg.nms!r}")
    if not cfg.thresholds:
        raise WtalError("inference.thresholds: expected at least one threshold")
    if isinstance(cfg.upsample, bool) or not isinstance(cfg.upsample, (int, np.integer)) or cfg.upsample < 1:
        raise WtalError(f"inference.upsample: expected a positive integer, found {cfg.upsample!r}")
    if cfg.nms == "soft_nms" and not cfg.soft_nms_sigma > 0:
        raise WtalError(f"inference.soft_nms_sigma: expected a positive number, found {cfg.soft_nms_sigma!r}")
    for key, choices in (
        ("margin_rule", _MARGIN_RULES),
        ("upsample_mode", _UPSAMPLE_MODES),
        ("segment_score", _SEGMENT_SCORES),
        ("class_score", _CLASS_SCORES),
        ("nms_offset_unit", _OFFSET_UNITS),
    ):
        if getattr(cfg, key) not in choices:
            raise WtalError(f"inference.{key}: expected one of {list(choices)}, found {getattr(cfg, key)!r}")


def localize_video(
    attention: np.ndarray,
    cas: np.ndarray,
    video_scores: np.ndarray,
    snippet_seconds: float,
    duration: float,
    cfg: InferenceConfig,
    video: str = "video",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one video -> ``(label [N] int64, start [N] s, end [N] s, score [N])``, best first.

    ``attention`` [T], ``cas`` [T, C] and ``video_scores`` [C] are per-snippet / per-video scores;
    ``snippet_seconds`` converts snippets to seconds; ``duration`` (seconds, 0: unknown) clips the
    segments. ``video`` names the video in error messages.
    """
    _check_config(cfg)
    attention, cas, video_scores = _check_inputs(attention, cas, video_scores, video)
    snippet_seconds = _as_seconds(snippet_seconds, "snippet_seconds", video, positive=True)
    duration = _as_seconds(duration, "duration", video, positive=False)
    up, mode = cfg.upsample, cfg.upsample_mode
    classes = select_classes(video_scores, cfg)
    scored = _upsample(cas[:, classes].T, up, mode)  # [S, L], S selected classes

    # Candidates of each source: slot (position in ``classes``), [s, e), and the sequence they
    # are scored on with the row of each candidate in it (``scored``, or copies of it zeroed
    # below each threshold).
    found = []
    if cfg.proposal_source in ("attention", "both"):
        # One attention row serves every class: its runs are found once and repeated per class.
        thresholds = np.asarray(cfg.attention_thresholds or cfg.thresholds, dtype=np.float64)
        _, s, e = _candidates(_level(attention[None], cfg), thresholds, cfg)
        slot = np.repeat(np.arange(classes.size), s.size)
        found.append((slot, np.tile(s, classes.size), np.tile(e, classes.size), scored, slot))
    if cfg.proposal_source in ("cas", "both"):
        thresholds = np.asarray(cfg.thresholds, dtype=np.float64)
        level = _level(cas[:, classes].T, cfg)  # [S, L]
        row, s, e = _candidates(level, thresholds, cfg)  # row = slot * K + threshold index
        slot = row // thresholds.size
        if cfg.zero_below_threshold:
            below = level[:, None, :] < thresholds[None, :, None]  # [S, K, L]
            zeroed = np.where(below, 0.0, scored[:, None, :]).reshape(-1, scored.shape[1])  # [S * K, L]
            found.append((slot, s, e, zeroed, row))
        else:
            found.append((slot, s, e, scored, slot))
    slot, s, e, score = [], [], [], []
    for part_slot, part_s, part_e, sequence, row in found:
        slot.append(part_slot)
        s.append(part_s)
        e.append(part_e)
        if cfg.segment_score == "contrast":
            score.append(_contrast(sequence, row, part_s, part_e, cfg.outer_margin, cfg.margin_rule))
        else:
            score.append(_window_max(sequence, row, part_s, part_e))
    slot, s, e, score = (np.concatenate(x) for x in (slot, s, e, score))

    if cfg.class_score == "binary":
        class_term = passes_class_threshold(video_scores, cfg)[classes].astype(np.float64)
    else:
        class_term = video_scores[classes]
    score = score + cfg.class_score_weight * class_term[slot]
    label = classes[slot].astype(np.int64)
    start, end = s * snippet_seconds / up, e * snippet_seconds / up
    if cfg.clip_to_duration and duration > 0:
        start, end = np.clip(start, 0.0, duration), np.clip(end, 0.0, duration)
    # Best first, so that np.unique's first occurrence of a duplicate is its best copy.
    order = np.argsort(-score, kind="stable")
    order = order[end[order] > start[order]]
    label, start, end, score = label[order], start[order], end[order], score[order]
    if cfg.dedup:
        _, first = np.unique(np.column_stack([label, start, end]), axis=0, return_index=True)
        first.sort()
        label, start, end, score = label[first], start[first], end[first], score[first]

    if cfg.nms != "none":
        # Each class contributes at most max_per_video detections, so NMS can stop there.
        cap = cfg.max_per_video
        offset = cfg.nms_length_offset * (snippet_seconds / up if cfg.nms_offset_unit == "snippets" else 1.0)
        groups = [np.flatnonzero(label == c) for c in classes]
        if cfg.nms == "nms":
            keep = [g[nms(start[g], end[g], score[g], cfg.nms_iou, cap, offset, cfg.nms_inclusive)] for g in groups]
            keep = np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64)
            label, start, end, score = label[keep], start[keep], end[keep], score[keep]
        else:
            for g in groups:
                score[g] = soft_nms(start[g], end[g], score[g], cfg.soft_nms_sigma, cap, offset)
    order = np.argsort(-score, kind="stable")
    if cfg.max_per_video > 0:
        order = order[: cfg.max_per_video]
    return label[order], start[order], end[order], score[order]


def localize(
    records: Iterable[tuple],
    classes: Iterable[str],
    snippet_seconds: float,
    cfg: InferenceConfig,
) -> Detections:
    """Detections of many videos.

    ``records``: ``(video_name, attention [T], cas [T, C], video_scores [C], duration seconds)``
    with C = ``len(classes)``; each video name at most once. A record may end with a sixth item,
    the seconds per entry of its arrays, which replaces ``snippet_seconds`` for that video (a
    video scored on resampled snippets, ``inference.test_seqlen``).
    """
    classes = tuple(classes)
    parts, seen = [], set()
    for name, attention, cas, video_scores, duration, *own_seconds in records:
        if name in seen:
            raise WtalError(f"{name}: video scored twice; expected each video once")
        seen.add(name)
        seconds = own_seconds[0] if own_seconds else snippet_seconds
        label, start, end, score = localize_video(attention, cas, video_scores, seconds, duration, cfg, video=name)
        if np.shape(cas)[1] != len(classes):  # cas is [T, C] once localize_video accepted it
            raise WtalError(f"{where(name, 'cas')}: expected C = {len(classes)} classes, found {np.shape(cas)[1]}")
        video = np.empty(label.size, dtype=object)
        video[:] = name
        parts.append(Detections(video=video, label=label, start=start, end=end, score=score, classes=classes))
    return Detections.concatenate(parts, classes)
