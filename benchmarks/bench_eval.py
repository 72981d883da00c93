"""Seconds to score 100,000 detections against THUMOS14's test ground truth.

Ground truth: the bundled THUMOS14 test annotations (212 videos, 3,358 instances, 20
classes), tIoU thresholds 0.1:0.1:0.7. Predictions (seeded): half near a ground-truth
instance (jittered boundaries, mostly its class, higher scores), half random segments on
random test videos and classes; scores rounded to 4 decimals, so ties occur.
``wtal.evaluate.evaluate_detection`` is compared with a plain reimplementation of the
official ActivityNet per-prediction loop written below (both best of N); their APs must
agree to 1e-9, else the script exits 1.

    python benchmarks/bench_eval.py [--predictions 100000] [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import sys

import _common
import numpy as np

from wtal.data.wtalc import bundled_thumos14
from wtal.detections import Detections
from wtal.evaluate import THUMOS_THRESHOLDS, evaluate_detection

TOLERANCE = 1e-9


def make_predictions(annotations, subset: str, count: int, seed: int) -> Detections:
    """``count`` detections on ``subset``'s videos: half near ground truth, half random."""
    rng = np.random.default_rng(seed)
    videos = annotations.subset(subset)
    classes = annotations.classes
    num_classes = len(classes)
    gt_video = np.repeat(np.arange(len(videos)), [len(v.labels) for v in videos])
    gt_seg = np.concatenate([v.segments for v in videos]).reshape(-1, 2)
    gt_label = np.array([annotations.class_index[label] for v in videos for label in v.labels])
    duration = np.array([v.duration for v in videos])

    near = count // 2
    pick = rng.integers(0, len(gt_label), near)
    length = gt_seg[pick, 1] - gt_seg[pick, 0]
    start_near = gt_seg[pick, 0] + rng.normal(0.0, 0.3, near) * length
    end_near = gt_seg[pick, 1] + rng.normal(0.0, 0.3, near) * length
    label_near = np.where(rng.random(near) < 0.85, gt_label[pick], rng.integers(0, num_classes, near))
    score_near = rng.beta(5, 2, near)

    rand = count - near
    video_rand = rng.integers(0, len(videos), rand)
    length_rand = rng.lognormal(np.log(4.0), 0.8, rand)
    start_rand = rng.random(rand) * duration[video_rand]
    score_rand = rng.beta(2, 5, rand)

    video = np.concatenate([gt_video[pick], video_rand])
    start = np.concatenate([start_near, start_rand])
    end = np.concatenate([end_near, start_rand + length_rand])
    start = np.clip(start, 0.0, duration[video])
    end = np.clip(np.maximum(end, start + 0.1), 0.0, duration[video])
    start = np.minimum(start, end - 0.05)  # keep every segment non-empty at the video's end
    order = rng.permutation(count)  # mix near and random ones as a results file would
    names = np.array([v.name for v in videos], dtype=object)
    return Detections(
        video=names[video[order]],
        label=np.concatenate([label_near, rng.integers(0, num_classes, rand)])[order].astype(np.int64),
        start=start[order],
        end=end[order],
        # Four decimals, as results files often carry: ties occur and exercise the stable order.
        score=np.round(np.concatenate([score_near, score_rand])[order], 4),
        classes=tuple(classes),
    )


# --- a plain reimplementation of the official ActivityNet per-prediction loop -------------


def reference_ap(annotations, detections: Detections, subset: str, thresholds: np.ndarray) -> np.ndarray:
    """AP [C, K] computed one prediction at a time, as ActivityNet's evaluator does."""
    videos = annotations.subset(subset)
    ap = np.zeros((len(annotations.classes), len(thresholds)))
    for c, name in enumerate(annotations.classes):
        gts = [(v.name, s, e) for v in videos for (s, e), label in zip(v.segments.tolist(), v.labels) if label == name]
        rows = np.flatnonzero(detections.label == c)
        ap[c] = _reference_class_ap(
            gts, detections.video[rows], detections.start[rows], detections.end[rows], detections.score[rows], thresholds
        )
    return ap


def _reference_class_ap(gts, p_video, p_start, p_end, p_score, thresholds) -> np.ndarray:
    if not gts or len(p_score) == 0:
        return np.zeros(len(thresholds))
    by_video: dict[str, list[int]] = {}
    for index, (video, _, _) in enumerate(gts):
        by_video.setdefault(video, []).append(index)
    gt_start = np.array([g[1] for g in gts])
    gt_end = np.array([g[2] for g in gts])
    # Descending score; ties keep file order (the convention wtal documents).
    order = np.argsort(-p_score, kind="stable")
    lock = np.full((len(thresholds), len(gts)), -1)
    tp = np.zeros((len(thresholds), len(order)))
    fp = np.zeros((len(thresholds), len(order)))
    for rank, i in enumerate(order):
        members = by_video.get(p_video[i])
        if members is None:
            fp[:, rank] = 1
            continue
        members = np.array(members)
        s, e = gt_start[members], gt_end[members]
        inter = np.clip(np.minimum(p_end[i], e) - np.maximum(p_start[i], s), 0.0, None)
        union = (p_end[i] - p_start[i]) + (e - s) - inter
        tiou = inter / union
        walk = np.argsort(tiou, kind="stable")[::-1]  # best tIoU first
        for k, threshold in enumerate(thresholds):
            for j in walk:
                if tiou[j] < threshold:
                    break
                if lock[k, members[j]] >= 0:
                    continue
                tp[k, rank] = 1
                lock[k, members[j]] = rank
                break
            if tp[k, rank] == 0:
                fp[k, rank] = 1
    tp_cum, fp_cum = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    recall = tp_cum / len(gts)
    precision = tp_cum / (tp_cum + fp_cum)
    return np.array([_interpolated(precision[k], recall[k]) for k in range(len(thresholds))])


def _interpolated(precision: np.ndarray, recall: np.ndarray) -> float:
    """All-point interpolated AP: precision envelope summed where recall changes."""
    prec = np.concatenate([[0.0], precision, [0.0]])
    rec = np.concatenate([[0.0], recall, [1.0]])
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    steps = np.flatnonzero(rec[1:] != rec[:-1]) + 1
    return float(np.sum((rec[steps] - rec[steps - 1]) * prec[steps]))


# -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--predictions", type=int, default=None, help="number of predictions (default 100000; smoke 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reference", action="store_true", help="skip the slow per-prediction reference")
    args = p.parse_args(argv)
    _common.apply_threads(args.threads)
    count = args.predictions or (2000 if args.smoke else 100_000)
    repeat = args.repeat or (2 if args.smoke else 5)
    machine = _common.machine_info()
    _common.print_machine(machine)

    annotations = bundled_thumos14()
    subset, thresholds = "test", THUMOS_THRESHOLDS
    num_gt = sum(len(v.labels) for v in annotations.subset(subset))
    detections = make_predictions(annotations, subset, count, args.seed)
    print(
        f"ground truth: {num_gt} instances in {len(annotations.subset(subset))} {subset} videos, "
        f"{len(annotations.classes)} classes, {len(thresholds)} thresholds; {count} predictions (seed {args.seed})"
    )

    timing, result = _common.best_of(lambda: evaluate_detection(annotations, detections, subset, thresholds), repeat)
    averages = result.averages()
    print(
        f"wtal.evaluate: best {timing['best_s']:.3f} s, median {timing['median_s']:.3f} s of {repeat}; "
        f"mAP avg(0.1:0.7) {averages['avg(0.1:0.7)']:.2f}%"
    )
    results = {"predictions": count, "num_gt": num_gt, "thresholds": thresholds, "wtal": timing, "mAP": averages}

    status = 0
    if args.no_reference:
        summary = f"wtal {timing['best_s']:.3f} s for {count} predictions (best of {repeat}); reference skipped"
    else:
        reference_timing, reference = _common.best_of(
            lambda: reference_ap(annotations, detections, subset, thresholds), repeat
        )
        reference_s = reference_timing["best_s"]
        diff = float(np.max(np.abs(reference - result.ap)))
        speedup = reference_s / timing["best_s"]
        print(
            f"reference per-prediction loop: best {reference_s:.3f} s, median {reference_timing['median_s']:.3f} s "
            f"of {repeat}; speed-up x{speedup:.1f} (best vs best)"
        )
        print(f"max |AP_wtal - AP_reference| = {diff:.3g} over {reference.size} class x threshold APs")
        results.update({"reference": reference_timing, "speedup": speedup, "max_abs_ap_diff": diff})
        if diff > TOLERANCE:
            print(f"ERROR: APs differ by {diff:.3g} > {TOLERANCE:g}", file=sys.stderr)
            status = 1
        summary = (
            f"wtal {timing['best_s']:.3f} s vs reference {reference_s:.2f} s (x{speedup:.1f}) for {count} "
            f"predictions; max AP diff {diff:.1e}" + (" (MISMATCH)" if status else "")
        )
    _common.finish("bench_eval", args, machine, results, summary)
    return status


if __name__ == "__main__":
    sys.exit(main())
