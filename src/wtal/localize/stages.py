"""The stages of post-processing, vectorised over snippets, thresholds and classes: class
selection, thresholded runs, their scores, NMS and soft-NMS, and the checks of one video's
inputs. :mod:`wtal.localize.pipelines` composes them; the package docstring says what each
setting does."""

from __future__ import annotations

import numpy as np

from wtal.errors import WtalError, where
from wtal.localize.config import InferenceConfig

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


def upsample_rows(rows: np.ndarray, up: int, mode: str) -> np.ndarray:
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


def outer_inner_contrast(
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


def proposal_levels(sequences: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    """Proposal sequences [P, T] as thresholded: normalised (``cfg.normalize``), then upsampled -> [P, L]."""
    return upsample_rows(_minmax(sequences) if cfg.normalize else sequences, cfg.upsample, cfg.upsample_mode)


def threshold_runs(
    level: np.ndarray, thresholds: np.ndarray, cfg: InferenceConfig, min_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of ``level`` [P, L] above each of ``thresholds`` [K] -> (row, s, e) [N]:
    row = p * K + threshold index, ``[s, e)`` in upsampled snippets, runs shorter than
    ``min_length`` dropped."""
    th = thresholds[None, :, None]
    masks = level[:, None, :] >= th if cfg.inclusive else level[:, None, :] > th  # [P, K, L]
    if cfg.require_positive:
        masks &= level[:, None, :] > 0
    row, s, e = _runs(masks.reshape(-1, level.shape[1]))
    long_enough = e - s >= min_length
    return row[long_enough], s[long_enough], e[long_enough]


def window_max(seq: np.ndarray, row: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
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


def as_seconds(value, name: str, video: str, positive: bool) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not (np.isfinite(seconds) and (seconds > 0 if positive else seconds >= 0)):
        expected = "a positive number of seconds" if positive else "seconds >= 0 (0: unknown)"
        raise WtalError(f"{where(video, name)}: expected {expected}, found {value!r}")
    return seconds


def check_inputs(attention, cas, video_scores, video):
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
