"""Detection mAP (the official ActivityNet algorithm, vectorised) and video classification mAP.

Detection AP per class follows ActivityNet's ``compute_average_precision_detection``:
predictions in descending score order are matched greedily to the still-free ground
truth of the same video with the highest tIoU >= threshold; everything else is a
false positive; AP is the all-point interpolated area under the precision envelope.
The protocol switches of the field (test-set membership, ambiguous filtering, tIoU
units) are arguments of :func:`evaluate_detection` and are recorded in its result.

Units: times in seconds (or snippets with ``units="snippets"``); AP arrays are
fractions in [0, 1]; everything reported (``averages``, ``summary``, ``to_json``,
``format_table``) is in percent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from wtal.data.annotations import Annotations
from wtal.detections import Detections
from wtal.errors import WtalError

THUMOS_THRESHOLDS = np.linspace(0.1, 0.7, 7)
ANET_THRESHOLDS = np.linspace(0.5, 0.95, 10)

# Named averages reported by the field: (name, thresholds); a name appears when all
# of its thresholds are evaluated.
_NAMED_AVERAGES = (
    ("avg(0.1:0.5)", np.linspace(0.1, 0.5, 5)),
    ("avg(0.3:0.7)", np.linspace(0.3, 0.7, 5)),
    ("avg(0.1:0.7)", THUMOS_THRESHOLDS),
    ("avg(0.5:0.95)", ANET_THRESHOLDS),
)


def resolve_thresholds(spec: str | float | Sequence[float] | np.ndarray) -> np.ndarray:
    """tIoU thresholds ``[K]`` float64 from a config value.

    ``"thumos"`` -> 0.1, 0.2, ..., 0.7; ``"anet"`` -> 0.5, 0.55, ..., 0.95; a comma
    list such as ``"0.5,0.75"`` or a sequence of numbers -> those values, each in (0, 1].
    """
    expected = "expected 'thumos', 'anet', or a comma list of tIoU values in (0, 1] such as '0.5,0.75'"
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name == "thumos":
            return THUMOS_THRESHOLDS.copy()
        if name == "anet":
            return ANET_THRESHOLDS.copy()
        spec = [part for part in name.split(",") if part.strip()]
    try:
        values = np.atleast_1d(np.asarray(spec, dtype=np.float64))
    except (TypeError, ValueError):
        raise WtalError(f"eval.thresholds: {expected}, found {spec!r}") from None
    if values.ndim != 1 or values.size == 0 or not np.all((values > 0) & (values <= 1)):
        raise WtalError(f"eval.thresholds: {expected}, found {spec!r}")
    return values


def segment_tiou(pred_start, pred_end, gt_start, gt_end) -> np.ndarray:
    """tIoU matrix ``[P, G]`` between P predicted and G ground-truth segments.

    union = (pred length) + (gt length) - intersection, as ActivityNet computes it.
    A zero union (two zero-length segments) gives 0 rather than NaN.
    """
    ps, pe = np.asarray(pred_start, np.float64)[:, None], np.asarray(pred_end, np.float64)[:, None]
    gs, ge = np.asarray(gt_start, np.float64)[None, :], np.asarray(gt_end, np.float64)[None, :]
    inter = np.clip(np.minimum(pe, ge) - np.maximum(ps, gs), 0.0, None)
    union = (pe - ps) + (ge - gs) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """All-point interpolated AP ``[K]`` from precision/recall curves ``[K, N]``.

    Sentinels (recall 0, precision 0) and (recall 1, precision 0) are added, the
    precision envelope is made monotone from the right, and the area is summed
    over the recall steps (ActivityNet's ``interpolated_prec_rec``).
    """
    k = precision.shape[0]
    zeros, ones = np.zeros((k, 1)), np.ones((k, 1))
    envelope = np.concatenate([zeros, precision, zeros], axis=1)
    envelope = np.maximum.accumulate(envelope[:, ::-1], axis=1)[:, ::-1]
    recall = np.concatenate([zeros, recall, ones], axis=1)
    return np.sum(np.diff(recall, axis=1) * envelope[:, 1:], axis=1)


def average_precision_detection(
    gt_video, gt_start, gt_end, pred_video, pred_start, pred_end, pred_score, thresholds
) -> np.ndarray:
    """AP ``[K]`` (fractions) of ONE class at each tIoU threshold.

    ``gt_*``: [G] ground-truth video ids (any hashable: names or ints) and times;
    ``pred_*``: [N] predicted video ids, times and scores; ``thresholds``: [K].
    A prediction on a video without ground truth is a false positive. With no
    ground truth the AP is 0 (ActivityNet would divide by zero).
    """
    gt_video, pred_video = np.asarray(gt_video), np.asarray(pred_video)
    index = {name: i for i, name in enumerate(dict.fromkeys(gt_video.tolist()))}
    gt_ids = np.fromiter((index[v] for v in gt_video.tolist()), np.int64, len(gt_video))
    pred_ids = np.fromiter((index.get(v, -1) for v in pred_video.tolist()), np.int64, len(pred_video))
    return _average_precision(
        gt_ids, np.asarray(gt_start, np.float64), np.asarray(gt_end, np.float64),
        pred_ids, np.asarray(pred_start, np.float64), np.asarray(pred_end, np.float64),
        np.asarray(pred_score, np.float64), resolve_thresholds(thresholds),
    )


def _average_precision(gt_vid, gt_s, gt_e, p_vid, p_s, p_e, p_score, thresholds) -> np.ndarray:
    """:func:`average_precision_detection` on integer video ids (-1: no ground truth)."""
    num_gt, num_pred = len(gt_vid), len(p_score)
    if not (len(gt_s) == len(gt_e) == num_gt and len(p_vid) == len(p_s) == len(p_e) == num_pred):
        raise WtalError("average_precision_detection: ground-truth and prediction arrays must have matching lengths")
    if num_gt == 0 or num_pred == 0:
        return np.zeros(len(thresholds))
    # Stable sort on -score: tied predictions keep their input order.
    order = np.argsort(-p_score, kind="stable")
    p_vid, p_s, p_e = p_vid[order], p_s[order], p_e[order]

    # Ground truth grouped by video, input order kept within a video (the tie-break below relies on it).
    videos, g_count = np.unique(gt_vid, return_counts=True)
    g_order = np.argsort(gt_vid, kind="stable")
    g_first = np.cumsum(g_count) - g_count
    slot = np.full(max(videos.max(), p_vid.max()) + 2, -1)  # last entry serves id -1
    slot[videos] = np.arange(len(videos))
    p_slot = slot[p_vid]
    matched = np.flatnonzero(p_slot >= 0)
    matched = matched[np.argsort(p_slot[matched], kind="stable")]  # by video, score order within
    bounds = np.searchsorted(p_slot[matched], np.arange(len(videos) + 1))

    tp = np.zeros((len(thresholds), num_pred), dtype=bool)
    lowest = thresholds.min()
    for v in range(len(videos)):
        rows = matched[bounds[v] : bounds[v + 1]]
        if rows.size == 0:
            continue
        gts = g_order[g_first[v] : g_first[v] + g_count[v]]
        tiou = segment_tiou(p_s[rows], p_e[rows], gt_s[gts], gt_e[gts])
        # Predictions below the lowest threshold with every gt are false positives everywhere.
        can_match = tiou.max(axis=1) >= lowest
        _greedy_match(tiou[can_match], thresholds, rows[can_match], tp)

    tp_cum = np.cumsum(tp, axis=1, dtype=np.float64)
    precision = tp_cum / np.arange(1, num_pred + 1)
    return interpolated_ap(precision, tp_cum / num_gt)


def _greedy_match(tiou: np.ndarray, thresholds: np.ndarray, rows: np.ndarray, tp: np.ndarray) -> None:
    """Mark true positives of one video in ``tp[K, N]``.

    ``tiou``: [P, G] for the video's predictions in descending score order, whose
    positions in ``tp`` are ``rows``. Per threshold, a prediction is a true positive
    iff some still-free gt has tIoU >= threshold; it then locks the best such gt.
    Locks change only at true positives (at most G per threshold), so instead of
    walking every prediction we jump from one true positive to the next with a
    per-prediction count of free matching gts.
    """
    num_gt = tiou.shape[1]
    for k, threshold in enumerate(thresholds):
        valid = tiou >= threshold
        free_count = valid.sum(axis=1)
        locked = np.zeros(num_gt, dtype=bool)
        pos = 0
        while pos < len(free_count):
            p = pos + int(np.argmax(free_count[pos:] > 0))
            if free_count[p] == 0:
                break
            # ActivityNet walks gts in tiou.argsort()[::-1] order; with that argsort taken as
            # stable, equal tIoUs are walked later gt first, so pick the last maximum.
            candidates = np.where(valid[p] & ~locked, tiou[p], -1.0)
            g = num_gt - 1 - int(np.argmax(candidates[::-1]))
            locked[g] = True
            tp[k, rows[p]] = True
            free_count[p + 1 :] -= valid[p + 1 :, g]
            pos = p + 1


@dataclass
class DetectionResult:
    """Detection AP of every class at every threshold.

    ``thresholds`` [K]; ``classes`` C names; ``ap`` [C, K] fractions; ``num_gt`` [C]
    ground-truth instances per class; ``num_predictions`` predictions evaluated;
    ``settings`` the protocol switches used (subset, filters, units, counts).
    """

    thresholds: np.ndarray
    classes: tuple[str, ...]
    ap: np.ndarray
    num_gt: np.ndarray
    num_predictions: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mAP(self) -> np.ndarray:
        """Mean AP over all classes ``[K]`` (fractions); classes without gt count as 0."""
        return self.ap.mean(axis=0)

    def _average_sets(self) -> list[tuple[str, np.ndarray]]:
        """(name, threshold indices) of each named average present, then "avg" over all."""
        sets = []
        for name, wanted in _NAMED_AVERAGES:
            hits = [np.flatnonzero(np.isclose(self.thresholds, t)) for t in wanted]
            if all(h.size for h in hits):
                sets.append((name, np.array([h[0] for h in hits])))
        sets.append(("avg", np.arange(len(self.thresholds))))
        return sets

    def averages(self) -> dict[str, float]:
        """Named averages of mAP in %: "avg(0.1:0.5)", "avg(0.3:0.7)", "avg(0.1:0.7)",
        "avg(0.5:0.95)" when their thresholds are all present, and always "avg" (all)."""
        return {name: float(100 * self.mAP[idx].mean()) for name, idx in self._average_sets()}

    def summary(self) -> dict[str, float]:
        """Flat ``{"mAP@t": %, ..., <averages>}`` for log lines."""
        per_threshold = {f"mAP@{t:g}": float(100 * m) for t, m in zip(self.thresholds, self.mAP)}
        return {**per_threshold, **self.averages()}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict, values in %; :meth:`from_json` reads it back."""
        return {
            "thresholds": [float(t) for t in self.thresholds],
            "mAP": [float(100 * m) for m in self.mAP],
            **{f"mAP@{t:g}": float(100 * m) for t, m in zip(self.thresholds, self.mAP)},
            "averages": self.averages(),
            "per_class": {
                name: {"num_gt": int(n), "AP": [float(100 * a) for a in ap]}
                for name, n, ap in zip(self.classes, self.num_gt, self.ap)
            },
            "settings": {**self.settings, "num_predictions": int(self.num_predictions)},
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], source: str = "metrics") -> "DetectionResult":
        """Rebuild a result from :meth:`to_json` output (extra keys are ignored)."""
        try:
            per_class = obj["per_class"]
            settings = dict(obj.get("settings", {}))
            return cls(
                thresholds=np.asarray(obj["thresholds"], dtype=np.float64),
                classes=tuple(per_class),
                ap=np.asarray([entry["AP"] for entry in per_class.values()], dtype=np.float64).reshape(
                    len(per_class), len(obj["thresholds"])
                ) / 100,
                num_gt=np.asarray([entry["num_gt"] for entry in per_class.values()], dtype=np.int64),
                num_predictions=int(settings.get("num_predictions", 0)),
                settings=settings,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WtalError(
                f"{source}: expected detection metrics with 'thresholds' and 'per_class' "
                f"(as written by wtal), failed at {exc!r}"
            ) from None

    def format_table(
        self, per_class: bool = False, reference: Mapping[str, Sequence[float | None]] | None = None
    ) -> str:
        """Text table: one row per method (ours, then each ``reference`` row), columns
        mAP (%) at each threshold followed by the averages; ``reference`` maps a row
        name to K values in % (None where not reported), optionally followed by its
        reported averages (printed as given instead of recomputed). ``per_class`` adds a row
        per class with its AP (%) and gt count."""
        sets = self._average_sets()
        if len(sets) > 1 and len(sets[-2][1]) == len(self.thresholds):
            sets = sets[:-1]  # "avg" would repeat the named average over every threshold
        header = ["tIoU"] + [f"{t:g}" for t in self.thresholds] + [name for name, _ in sets]

        def row(name: str, values: Sequence[float | None]) -> list[str]:
            known = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
            cells = list(known) if len(known) > len(self.thresholds) else (
                list(known) + [known[idx].mean() for _, idx in sets]
            )
            return [name] + ["-" if np.isnan(c) else f"{c:.2f}" for c in cells]

        rows = [row("mAP (%)", 100 * self.mAP)]
        for name, values in (reference or {}).items():
            if len(values) not in (len(self.thresholds), len(self.thresholds) + len(sets)):
                raise WtalError(
                    f"reference[{name!r}]: expected {len(self.thresholds)} values (or with "
                    f"{len(sets)} averages), found {len(values)}"
                )
            rows.append(row(name, values))
        if per_class:
            rows.append(None)
            rows += [row(f"{c} ({n} gt)", 100 * ap) for c, n, ap in zip(self.classes, self.num_gt, self.ap)]
        widths = [max(len(r[i]) for r in [header] + [r for r in rows if r]) for i in range(len(header))]
        widths[1:] = [max(w, 6) for w in widths[1:]]

        def render(cells: list[str]) -> str:
            return "  ".join([cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])])

        rule = "-" * len(render(header))
        s = self.settings
        title = (
            f"detection mAP on subset {s.get('subset')!r}: {int(self.num_gt.sum())} gt instances in "
            f"{s.get('num_videos', '?')} videos, {self.num_predictions} predictions; tIoU in "
            f"{s.get('units', 'seconds')}, ambiguous filter {'on' if s.get('ambiguous_filter') else 'off'}"
        )
        lines = [title, render(header), rule] + [rule if r is None else render(r) for r in rows]
        return "\n".join(lines)


def _validate_detections(det: Detections, num_classes: int) -> None:
    """Raise WtalError naming the first malformed detection (checked vectorised)."""
    n = len(det.score)
    if not all(len(a) == n for a in (det.video, det.label, det.start, det.end)):
        raise WtalError("detections: video, label, start, end and score must have the same length")
    label, start, end, score = (np.asarray(a) for a in (det.label, det.start, det.end, det.score))
    checks = (
        ((label < 0) | (label >= num_classes), "label", f"expected a class index in [0, {num_classes})", label),
        (~np.isfinite(score), "score", "expected a finite number", score),
        (~(np.isfinite(start) & np.isfinite(end)), "segment", "expected finite times", None),
        (end < start, "segment", "end precedes start", None),
        (end == start, "segment", "zero-length segment", None),
    )
    for bad, name, expected, values in checks:
        if bad.any():
            i = int(np.argmax(bad))
            found = values[i] if values is not None else [float(start[i]), float(end[i])]
            raise WtalError(
                f"detections[{i}] (video {det.video[i]!r}): {name}: {expected}, found {found!r}"
                f" ({int(bad.sum())} such entries)"
            )


def evaluate_detection(
    annotations: Annotations,
    detections: Detections,
    subset: str,
    thresholds: str | Sequence[float] | np.ndarray,
    *,
    ambiguous_filter: bool = False,
    units: str = "seconds",
    snippet_seconds: float | None = None,
    exclude_videos: Iterable[str] = (),
) -> DetectionResult:
    """Detection AP of every class of ``annotations`` on ``subset``.

    Ground truth: the subset's videos minus ``exclude_videos``. Predictions are not
    filtered by subset (one on a video outside it is a false positive, as in the
    official evaluator); predictions on ``exclude_videos`` are dropped.
    ``ambiguous_filter`` drops predictions overlapping (with positive length, in
    seconds) any of ``annotations.ambiguous[video]``. ``units="snippets"`` rounds
    all times to ``round(t / snippet_seconds)`` before tIoU. Classes without
    predictions or without gt in the subset get AP 0 and stay in the mean, as in
    the official evaluator.
    """
    classes = tuple(annotations.classes)
    if tuple(detections.classes) != classes:
        raise WtalError(
            f"detections: classes {list(detections.classes)} differ from the ground truth's "
            f"{list(classes)} ({annotations.source}); expected the same names in the same order"
        )
    if not classes:
        raise WtalError(f"{annotations.source}: classes: expected at least one class")
    if units not in ("seconds", "snippets"):
        raise WtalError(f"eval.units: expected 'seconds' or 'snippets', found {units!r}")
    if units == "snippets" and not (snippet_seconds is not None and 0 < snippet_seconds < np.inf):
        raise WtalError(f"snippet_seconds: units 'snippets' needs a positive snippet length, found {snippet_seconds!r}")
    thresholds = resolve_thresholds(thresholds)
    _validate_detections(detections, len(classes))

    excluded = set(exclude_videos)
    videos = [v for v in annotations.subset(subset) if v.name not in excluded]
    if not videos:
        raise WtalError(
            f"{annotations.source}: subset {subset!r}: no videos to evaluate; "
            f"expected one of the subsets {annotations.subsets()}"
        )
    gt_vid = np.repeat(np.arange(len(videos)), [len(v.labels) for v in videos])
    gt_seg = np.concatenate([v.segments for v in videos]).reshape(-1, 2)
    gt_label = np.fromiter((annotations.class_index[l] for v in videos for l in v.labels), np.int64, len(gt_vid))

    # Prediction videos as integer codes; gt id per code (-1: no ground truth in the subset).
    codes: dict[str, int] = {}
    p_code = np.fromiter(
        (codes.setdefault(v, len(codes)) for v in detections.video.tolist()), np.int64, len(detections)
    )
    gt_index = {v.name: i for i, v in enumerate(videos)}
    code_gt = np.array([gt_index.get(name, -1) for name in codes], dtype=np.int64)
    p_s, p_e = np.asarray(detections.start, np.float64), np.asarray(detections.end, np.float64)

    keep = np.ones(len(detections), dtype=bool)
    dropped_excluded = 0
    if excluded:
        code_excluded = np.array([name in excluded for name in codes], dtype=bool)
        keep &= ~code_excluded[p_code]
        dropped_excluded = int((~keep).sum())
    dropped_ambiguous = 0
    if ambiguous_filter:
        by_code = np.argsort(p_code, kind="stable")
        bounds = np.searchsorted(p_code[by_code], np.arange(len(codes) + 1))
        for name, regions in annotations.ambiguous.items():
            if name not in codes or len(regions) == 0:
                continue
            rows = by_code[bounds[codes[name]] : bounds[codes[name] + 1]]
            regions = np.asarray(regions, np.float64).reshape(-1, 2)
            overlap = np.minimum(p_e[rows, None], regions[:, 1]) - np.maximum(p_s[rows, None], regions[:, 0])
            hit = rows[(overlap > 0).any(axis=1)]
            dropped_ambiguous += int(keep[hit].sum())
            keep[hit] = False

    g_s, g_e = gt_seg[:, 0], gt_seg[:, 1]
    if units == "snippets":
        g_s, g_e, p_s, p_e = (np.round(t / snippet_seconds) for t in (g_s, g_e, p_s, p_e))

    kept = np.flatnonzero(keep)
    p_label = np.asarray(detections.label, np.int64)[kept]
    by_class = kept[np.argsort(p_label, kind="stable")]  # input order kept within a class
    p_bounds = np.searchsorted(np.sort(p_label), np.arange(len(classes) + 1))
    p_vid, score = code_gt[p_code], np.asarray(detections.score, np.float64)

    ap = np.zeros((len(classes), len(thresholds)))
    for c in range(len(classes)):
        g = np.flatnonzero(gt_label == c)
        p = by_class[p_bounds[c] : p_bounds[c + 1]]
        ap[c] = _average_precision(gt_vid[g], g_s[g], g_e[g], p_vid[p], p_s[p], p_e[p], score[p], thresholds)

    return DetectionResult(
        thresholds=thresholds,
        classes=classes,
        ap=ap,
        num_gt=np.bincount(gt_label, minlength=len(classes)),
        num_predictions=len(kept),
        settings={
            "subset": subset,
            "num_videos": len(videos),
            "num_gt": len(gt_label),
            "exclude_videos": sorted(excluded),
            "ambiguous_filter": bool(ambiguous_filter),
            "units": units,
            "snippet_seconds": snippet_seconds if units == "snippets" else None,
            "dropped_excluded": dropped_excluded,
            "dropped_ambiguous": dropped_ambiguous,
        },
    )


def classification_map(video_scores: np.ndarray, labels: np.ndarray) -> float:
    """Video-level classification mAP in %, as W-TALC reports it.

    ``video_scores``, ``labels``: [V, C] (labels multi-hot). Per class, videos in
    descending score order (stable on ties); AP = mean precision at the positives
    (non-interpolated). Mean over classes with at least one positive; NaN if none.
    """
    scores, labels = np.asarray(video_scores, np.float64), np.asarray(labels) > 0
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise WtalError(
            "classification_map: expected video_scores and labels of one shape [V, C], "
            f"found {scores.shape} and {labels.shape}"
        )
    order = np.argsort(-scores, axis=0, kind="stable")
    positive = np.take_along_axis(labels, order, axis=0)
    precision = np.cumsum(positive, axis=0) / np.arange(1, len(scores) + 1)[:, None]
    num_pos = positive.sum(axis=0)
    has_pos = num_pos > 0
    if not has_pos.any():
        return float("nan")
    ap = (precision * positive).sum(axis=0)[has_pos] / num_pos[has_pos]
    return float(100 * ap.mean())


def attention_inside_outside(
    segments: Sequence[np.ndarray], attentions: Sequence[np.ndarray], snippet_seconds: Sequence[float]
) -> tuple[float, float]:
    """Mean attention over the snippets inside ground truth and over those outside it, pooled over videos.

    Per video: ``segments`` [N, 2] in seconds, ``attentions`` [T], ``snippet_seconds`` the
    seconds per attention entry; a snippet is inside when its centre falls in a segment
    (ends included). NaN for a side no snippet falls on. A model whose attention separates
    actions from background has a high first value and a low second.
    """
    if not len(segments) == len(attentions) == len(snippet_seconds):
        raise WtalError(
            "attention_inside_outside: expected one segments array, attention and snippet_seconds per video, "
            f"found {len(segments)}, {len(attentions)} and {len(snippet_seconds)}"
        )
    sums, counts = np.zeros(2), np.zeros(2)
    for spans, attention, seconds in zip(segments, attentions, snippet_seconds):
        spans, attention = np.asarray(spans, np.float64).reshape(-1, 2), np.asarray(attention, np.float64)
        centre = (np.arange(len(attention)) + 0.5) * seconds
        inside = ((centre[:, None] >= spans[:, 0]) & (centre[:, None] <= spans[:, 1])).any(axis=1)
        sums += attention[inside].sum(), attention[~inside].sum()
        counts += inside.sum(), (~inside).sum()
    with np.errstate(invalid="ignore"):
        inside_mean, outside_mean = sums / counts
    return float(inside_mean), float(outside_mean)
