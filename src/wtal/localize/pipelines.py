"""The authors' post-processing pipelines, composed from the stages of :mod:`wtal.localize.stages`.

A pipeline maps one video's scores to its detections. ``multi_threshold`` is the shape of CO2-Net's
``multiple_threshold_hamnet``, BaS-Net's and UM's test loops, W-TALC's ``getLocMAP`` and wtal's own
models: propose at every threshold, score, convert to seconds, merge duplicates, suppress, keep the
best. Those authors differ only in the settings of these stages (each model's
``inference_defaults``, proven by its parity test), so they share this one function. ``delu`` is
DELU's ``test.py``: the same, with the length filter moved after the suppression, where a short
proposal it drops has already lowered the scores of those it overlaps.

A new pipeline is one function registered under a name here and that name in
``InferenceConfig.pipeline``'s choices (:mod:`wtal.localize.config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from wtal.detections import Detections
from wtal.errors import WtalError, where
from wtal.localize.config import InferenceConfig
from wtal.localize.stages import (
    as_seconds,
    check_inputs,
    threshold_runs,
    outer_inner_contrast,
    proposal_levels,
    upsample_rows,
    window_max,
    nms,
    passes_class_threshold,
    select_classes,
    soft_nms,
)


@dataclass
class Segments:
    """Scored segments of one video: ``label`` [N] int64, ``start``, ``end`` [N] (upsampled snippets
    or seconds), ``score`` [N], and ``length`` [N] int64, the length in upsampled snippets at proposal."""

    label: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    length: np.ndarray

    def take(self, index: np.ndarray) -> Segments:
        return Segments(self.label[index], self.start[index], self.end[index], self.score[index], self.length[index])


def propose(attention: np.ndarray, cas: np.ndarray, video_scores: np.ndarray, cfg: InferenceConfig, min_length: int):
    """(selected classes [S], their scored candidates in upsampled snippets, ``[start, end)``):
    runs above every threshold of each proposal source at least ``min_length`` long, scored on the
    class's cas (contrast or maximum) plus the class term."""
    up, mode = cfg.upsample, cfg.upsample_mode
    classes = select_classes(video_scores, cfg)
    scored = upsample_rows(cas[:, classes].T, up, mode)  # [S, L], S selected classes

    # Candidates of each source: slot (position in ``classes``), [s, e), and the sequence they
    # are scored on with the row of each candidate in it (``scored``, or copies of it zeroed
    # below each threshold).
    found = []
    if cfg.proposal_source in ("attention", "both"):
        # One attention row serves every class: its runs are found once and repeated per class.
        thresholds = np.asarray(cfg.attention_thresholds or cfg.thresholds, dtype=np.float64)
        _, s, e = threshold_runs(proposal_levels(attention[None], cfg), thresholds, cfg, min_length)
        slot = np.repeat(np.arange(classes.size), s.size)
        found.append((slot, np.tile(s, classes.size), np.tile(e, classes.size), scored, slot))
    if cfg.proposal_source in ("cas", "both"):
        thresholds = np.asarray(cfg.thresholds, dtype=np.float64)
        level = proposal_levels(cas[:, classes].T, cfg)  # [S, L]
        row, s, e = threshold_runs(level, thresholds, cfg, min_length)  # row = slot * K + threshold index
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
            score.append(outer_inner_contrast(sequence, row, part_s, part_e, cfg.outer_margin, cfg.margin_rule))
        else:
            score.append(window_max(sequence, row, part_s, part_e))
    slot, s, e, score = (np.concatenate(x) for x in (slot, s, e, score))

    if cfg.class_score == "binary":
        class_term = passes_class_threshold(video_scores, cfg)[classes].astype(np.float64)
    else:
        class_term = video_scores[classes]
    score = score + cfg.class_score_weight * class_term[slot]
    return classes, Segments(classes[slot].astype(np.int64), s, e, score, (e - s).astype(np.int64))


def to_seconds(segments: Segments, unit_seconds: float, duration: float, cfg: InferenceConfig) -> Segments:
    """Segments in seconds (``unit_seconds`` per upsampled snippet), clipped to ``[0, duration]`` when
    ``cfg.clip_to_duration`` and the duration is known, best first, zero-length ones dropped."""
    start, end = segments.start * unit_seconds, segments.end * unit_seconds
    if cfg.clip_to_duration and duration > 0:
        start, end = np.clip(start, 0.0, duration), np.clip(end, 0.0, duration)
    order = np.argsort(-segments.score, kind="stable")
    order = order[end[order] > start[order]]
    return Segments(segments.label, start, end, segments.score, segments.length).take(order)


def deduplicate(segments: Segments) -> Segments:
    """Of segments with the same class, start and end, the first (the best when sorted best first)."""
    _, first = np.unique(np.column_stack([segments.label, segments.start, segments.end]), axis=0, return_index=True)
    first.sort()
    return segments.take(first)


def suppress(segments: Segments, classes: np.ndarray, unit_seconds: float, cfg: InferenceConfig) -> Segments:
    """Per class, hard NMS (drops segments) or Gaussian soft-NMS (rescores them), or nothing."""
    if cfg.nms == "none":
        return segments
    # Each class contributes at most max_per_video detections, so NMS can stop there.
    cap = cfg.max_per_video
    offset = cfg.nms_length_offset * (unit_seconds if cfg.nms_offset_unit == "snippets" else 1.0)
    groups = [np.flatnonzero(segments.label == c) for c in classes]
    start, end, score = segments.start, segments.end, segments.score
    if cfg.nms == "nms":
        keep = [g[nms(start[g], end[g], score[g], cfg.nms_iou, cap, offset, cfg.nms_inclusive)] for g in groups]
        return segments.take(np.concatenate(keep) if keep else np.zeros(0, dtype=np.int64))
    score = score.copy()
    for g in groups:
        score[g] = soft_nms(start[g], end[g], score[g], cfg.soft_nms_sigma, cap, offset)
    return Segments(segments.label, start, end, score, segments.length)


def keep_best(segments: Segments, limit: int) -> Segments:
    """Best first, the best ``limit`` (0: all)."""
    order = np.argsort(-segments.score, kind="stable")
    return segments.take(order[:limit] if limit > 0 else order)


Pipeline = Callable[[np.ndarray, np.ndarray, np.ndarray, float, float, InferenceConfig], Segments]


def multi_threshold(attention, cas, video_scores, snippet_seconds: float, duration: float, cfg: InferenceConfig) -> Segments:
    """Propose (runs shorter than ``min_length`` dropped), seconds, deduplicate, suppress, keep the best."""
    unit_seconds = snippet_seconds / cfg.upsample
    classes, segments = propose(attention, cas, video_scores, cfg, cfg.min_length)
    segments = to_seconds(segments, unit_seconds, duration, cfg)
    if cfg.dedup:
        segments = deduplicate(segments)
    return keep_best(suppress(segments, classes, unit_seconds, cfg), cfg.max_per_video)


def delu(attention, cas, video_scores, snippet_seconds: float, duration: float, cfg: InferenceConfig) -> Segments:
    """DELU's test.py: :func:`multi_threshold` with the ``min_length`` filter after the suppression."""
    unit_seconds = snippet_seconds / cfg.upsample
    classes, segments = propose(attention, cas, video_scores, cfg, 0)
    segments = to_seconds(segments, unit_seconds, duration, cfg)
    if cfg.dedup:
        segments = deduplicate(segments)
    segments = suppress(segments, classes, unit_seconds, cfg)
    return keep_best(segments.take(np.flatnonzero(segments.length >= cfg.min_length)), cfg.max_per_video)


PIPELINES: dict[str, Pipeline] = {"multi_threshold": multi_threshold, "delu": delu}


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
    segments. ``video`` names the video in error messages. ``cfg`` is validated first.
    """
    cfg.validate("localize_video")
    return _localize_video(attention, cas, video_scores, snippet_seconds, duration, cfg, video)


def _localize_video(attention, cas, video_scores, snippet_seconds, duration, cfg: InferenceConfig, video: str):
    """:func:`localize_video` with ``cfg`` already validated."""
    attention, cas, video_scores = check_inputs(attention, cas, video_scores, video)
    snippet_seconds = as_seconds(snippet_seconds, "snippet_seconds", video, positive=True)
    duration = as_seconds(duration, "duration", video, positive=False)
    found = PIPELINES[cfg.pipeline](attention, cas, video_scores, snippet_seconds, duration, cfg)
    return found.label, found.start, found.end, found.score


def localize(
    records: Iterable[tuple],
    classes: Iterable[str],
    snippet_seconds: float,
    cfg: InferenceConfig,
) -> Detections:
    """Detections of many videos (``cfg`` validated once).

    ``records``: ``(video_name, attention [T], cas [T, C], video_scores [C], duration seconds)``
    with C = ``len(classes)``; each video name at most once. A record may end with a sixth item,
    the seconds per entry of its arrays, which replaces ``snippet_seconds`` for that video (a
    video scored on resampled snippets, ``inference.test_seqlen``).
    """
    cfg.validate("localize")
    classes = tuple(classes)
    parts, seen = [], set()
    for name, attention, cas, video_scores, duration, *own_seconds in records:
        if name in seen:
            raise WtalError(f"{name}: video scored twice; expected each video once")
        seen.add(name)
        seconds = own_seconds[0] if own_seconds else snippet_seconds
        label, start, end, score = _localize_video(attention, cas, video_scores, seconds, duration, cfg, name)
        if np.shape(cas)[1] != len(classes):  # cas is [T, C] once localize_video accepted it
            raise WtalError(f"{where(name, 'cas')}: expected C = {len(classes)} classes, found {np.shape(cas)[1]}")
        video = np.empty(label.size, dtype=object)
        video[:] = name
        parts.append(Detections(video=video, label=label, start=start, end=end, score=score, classes=classes))
    return Detections.concatenate(parts, classes)
