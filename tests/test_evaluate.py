"""The evaluator: pinned vectors, equality with a plain reimplementation of the official loop, protocol switches."""

import json

import numpy as np
import pytest

from wtal.data.annotations import Annotations, Video
from wtal.detections import Detections
from wtal.errors import WtalError
from wtal.evaluate import (
    DetectionResult,
    average_precision_detection,
    classification_map,
    evaluate_detection,
    resolve_thresholds,
)
from wtal.io import read_json

THRESHOLDS = [0.5, 0.6, 0.7]


def reference_ap(gt, preds, thresholds):
    """ActivityNet's compute_average_precision_detection, one prediction at a time.

    ``gt``: list of (video, start, end); ``preds``: list of (video, start, end, score).
    """
    thresholds = np.asarray(thresholds, dtype=float)
    ap = np.zeros(len(thresholds))
    if not gt or not preds:
        return ap
    order = np.argsort(-np.array([p[3] for p in preds]), kind="stable")
    lock = -np.ones((len(thresholds), len(gt)))
    tp = np.zeros((len(thresholds), len(preds)))
    fp = np.zeros((len(thresholds), len(preds)))
    by_video = {}
    for j, (video, _, _) in enumerate(gt):
        by_video.setdefault(video, []).append(j)
    for i, idx in enumerate(order):
        video, start, end, _ = preds[idx]
        if video not in by_video:
            fp[:, i] = 1
            continue
        js = by_video[video]
        tiou = []
        for j in js:
            inter = max(0.0, min(end, gt[j][2]) - max(start, gt[j][1]))
            tiou.append(inter / ((end - start) + (gt[j][2] - gt[j][1]) - inter))
        tiou = np.array(tiou)
        walk = np.argsort(tiou, kind="stable")[::-1]
        for k, threshold in enumerate(thresholds):
            for jj in walk:
                if tiou[jj] < threshold:
                    fp[k, i] = 1
                    break
                if lock[k, js[jj]] >= 0:
                    continue
                tp[k, i] = 1
                lock[k, js[jj]] = i
                break
            if tp[k, i] == 0 and fp[k, i] == 0:
                fp[k, i] = 1
    tp_cum, fp_cum = np.cumsum(tp, axis=1), np.cumsum(fp, axis=1)
    recall, precision = tp_cum / len(gt), tp_cum / (tp_cum + fp_cum)
    for k in range(len(thresholds)):
        mprec = np.hstack([[0], precision[k], [0]])
        mrec = np.hstack([[0], recall[k], [1]])
        for i in range(len(mprec) - 1)[::-1]:
            mprec[i] = max(mprec[i], mprec[i + 1])
        idx = np.where(mrec[1:] != mrec[:-1])[0] + 1
        ap[k] = np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])
    return ap


def ap_of(gt, preds, thresholds=THRESHOLDS):
    gv, gs, ge = zip(*gt)
    pv, ps, pe, sc = zip(*preds)
    return average_precision_detection(gv, gs, ge, pv, ps, pe, sc, thresholds)


VECTORS = {
    "A": (
        [("v1", 0, 10), ("v1", 20, 30), ("v2", 5, 15)],
        [("v1", 0, 10, 0.9), ("v1", 1, 10, 0.8), ("v2", 5, 10, 0.7), ("v3", 0, 5, 0.6), ("v1", 20, 29, 0.5)],
        [0.7556, 0.4667, 0.4667],
    ),
    "B": ([("v1", 0, 10), ("v1", 4, 14)], [("v1", 0, 10, 0.9), ("v1", 1, 11, 0.8)], [1.0, 0.5, 0.5]),
    "C": ([("v1", 0, 10)], [("v1", 0, 6, 0.9), ("v1", 0, 10, 0.5)], [1.0, 1.0, 0.5]),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_pinned_vectors(name):
    gt, preds, expected = VECTORS[name]
    assert ap_of(gt, preds) == pytest.approx(expected, abs=1e-4)
    assert reference_ap(gt, preds, THRESHOLDS) == pytest.approx(expected, abs=1e-4)


def test_edge_cases_of_one_class():
    gt = [("v1", 0, 10)]
    assert ap_of(gt, [("v2", 0, 10, 0.9)]).tolist() == [0, 0, 0]  # prediction on a video without gt
    empty = average_precision_detection([], [], [], ["v1"], [0], [1], [0.5], THRESHOLDS)
    assert empty.tolist() == [0, 0, 0]  # no ground truth: AP 0
    none = average_precision_detection(["v1"], [0], [1], [], [], [], [], THRESHOLDS)
    assert none.tolist() == [0, 0, 0]
    # inclusive threshold: tIoU exactly 0.5 is a match
    assert ap_of(gt, [("v1", 0, 5, 0.9)], [0.5]).tolist() == [1.0]
    # tied scores keep input order: the false positive listed first ranks first
    assert ap_of(gt, [("v1", 20, 25, 0.5), ("v1", 0, 10, 0.5)], [0.5]).tolist() == [0.5]
    assert ap_of(gt, [("v1", 0, 10, 0.5), ("v1", 20, 25, 0.5)], [0.5]).tolist() == [1.0]


def test_equal_tiou_prefers_the_later_ground_truth():
    # Both gts have tIoU 0.6 with the first prediction; it must lock the later one (v1[5,15]),
    # leaving [0,10] free for the exact second prediction.
    gt = [("v1", 0, 10), ("v1", 5, 15)]
    preds = [("v1", 2.5, 12.5, 0.9), ("v1", 0, 10, 0.8), ("v1", 5, 15, 0.7)]
    assert ap_of(gt, preds, [0.5, 0.7]) == pytest.approx(reference_ap(gt, preds, [0.5, 0.7]))
    assert ap_of(gt, preds, [0.5]).tolist() == [1.0]


def _random_case(rng, num_classes=4):
    videos = [f"v{i}" for i in range(6)]
    database = {}
    for v in videos:
        anns = []
        for _ in range(rng.integers(0, 9)):  # coarse grid: many equal tIoUs and contended gts
            s = 2 * int(rng.integers(0, 8))
            anns.append({"segment": [s, s + 2 * int(rng.integers(1, 4))], "label": f"c{rng.integers(num_classes)}"})
        database[v] = {"subset": "test" if v != "v5" else "train", "duration": 40, "annotations": anns}
    annotations = Annotations.from_activitynet(
        {"database": database}, "random", classes=[f"c{i}" for i in range(num_classes)]
    )
    n = int(rng.integers(1, 120))
    start = rng.integers(0, 18, n).astype(float)
    detections = Detections(
        video=np.array([f"v{i}" for i in rng.integers(0, 7, n)], dtype=object),  # v6 has no annotation
        label=rng.integers(0, num_classes, n),
        start=start,
        end=start + rng.integers(1, 7, n),
        score=rng.integers(0, 5, n) / 4.0,  # many ties
        classes=annotations.classes,
    )
    return annotations, detections


@pytest.mark.parametrize("seed", range(12))
def test_matches_the_official_loop_on_random_data(seed):
    rng = np.random.default_rng(seed)
    annotations, detections = _random_case(rng)
    thresholds = resolve_thresholds("0.1,0.3,0.5,0.6,0.7,0.9,1.0")
    result = evaluate_detection(annotations, detections, "test", thresholds)
    test_videos = [v for v in annotations.videos.values() if v.subset == "test"]
    for c, name in enumerate(annotations.classes):
        gt = [(v.name, s, e) for v in test_videos for (s, e), label in zip(v.segments, v.labels) if label == name]
        rows = zip(detections.video, detections.label, detections.start, detections.end, detections.score)
        preds = [(v, s, e, p) for v, label, s, e, p in rows if label == c]
        np.testing.assert_allclose(result.ap[c], reference_ap(gt, preds, thresholds), rtol=0, atol=1e-12)
        assert result.num_gt[c] == len(gt)
    np.testing.assert_allclose(result.mAP, result.ap.mean(axis=0))


def test_vector_e_through_files(tmp_path):
    (tmp_path / "gt.json").write_text(json.dumps({"database": {
        "v1": {"subset": "validation", "duration": 40, "annotations": [
            {"segment": [0, 10], "label": "A"}, {"segment": [20, 30], "label": "B"}]},
        "v9": {"subset": "training", "duration": 40, "annotations": [{"segment": [0, 10], "label": "A"}]},
    }}))
    (tmp_path / "pred.json").write_text(json.dumps({"results": {
        "v1": [{"label": "A", "score": 0.9, "segment": [0, 10]}],
        "v9": [{"label": "A", "score": 0.95, "segment": [0, 10]}],
    }}))
    annotations = Annotations.from_activitynet(read_json(tmp_path / "gt.json"), "gt.json")
    detections = Detections.load(tmp_path / "pred.json", annotations.classes)
    result = evaluate_detection(annotations, detections, "validation", [0.5, 0.75])
    assert result.classes == ("A", "B")
    np.testing.assert_allclose(result.ap, [[0.5, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(result.mAP, [0.25, 0.25])
    assert result.num_gt.tolist() == [1, 1] and result.num_predictions == 2
    # Excluding v9 drops its prediction: A is then found perfectly.
    excluded = evaluate_detection(annotations, detections, "validation", [0.5, 0.75], exclude_videos=["v9"])
    np.testing.assert_allclose(excluded.ap[0], [1.0, 1.0])
    assert excluded.settings["dropped_excluded"] == 1


def _one_video(segments, ambiguous=None, classes=("A",)):
    video = Video("v1", "test", 60.0, np.asarray(segments, float).reshape(-1, 2), ("A",) * len(segments))
    return Annotations(classes=classes, videos={"v1": video}, ambiguous=ambiguous or {})


def _detections(rows, classes=("A",)):
    video, label, start, end, score = zip(*rows)
    return Detections(
        video=np.array(video, dtype=object), label=np.array(label), start=np.array(start, float),
        end=np.array(end, float), score=np.array(score, float), classes=classes,
    )


def test_ambiguous_filter():
    annotations = _one_video([[0, 10]], ambiguous={"v1": np.array([[20.0, 30.0]])})
    # [25,28] overlaps the ambiguous region; [30,40] only touches it and is kept.
    detections = _detections([("v1", 0, 0, 10, 0.5), ("v1", 0, 25, 28, 0.9), ("v1", 0, 30, 40, 0.8)])
    plain = evaluate_detection(annotations, detections, "test", [0.5])
    filtered = evaluate_detection(annotations, detections, "test", [0.5], ambiguous_filter=True)
    assert plain.ap[0].tolist() == pytest.approx([1 / 3])
    assert filtered.ap[0].tolist() == pytest.approx([0.5])
    assert filtered.num_predictions == 2 and filtered.settings["dropped_ambiguous"] == 1


def test_snippet_units():
    annotations = _one_video([[0, 10]])
    detections = _detections([("v1", 0, 0.9, 6.2, 0.9)])
    # seconds: tIoU 5.3/10 = 0.53; snippets of 2 s: [0, 3] vs [0, 5] -> 0.6
    seconds = evaluate_detection(annotations, detections, "test", [0.55])
    snippets = evaluate_detection(annotations, detections, "test", [0.55], units="snippets", snippet_seconds=2.0)
    assert seconds.ap[0, 0] == 0.0 and snippets.ap[0, 0] == 1.0
    with pytest.raises(WtalError, match="snippet"):
        evaluate_detection(annotations, detections, "test", [0.5], units="snippets")
    with pytest.raises(WtalError, match="eval.units"):
        evaluate_detection(annotations, detections, "test", [0.5], units="frames")


def test_resolve_thresholds():
    np.testing.assert_allclose(resolve_thresholds("thumos"), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert len(resolve_thresholds("anet")) == 10 and resolve_thresholds("anet")[-1] == pytest.approx(0.95)
    assert resolve_thresholds("0.5, 0.75").tolist() == [0.5, 0.75]
    assert resolve_thresholds([0.3, 1.0]).tolist() == [0.3, 1.0]
    for bad in ["thumos14", "0,0.5", "1.5", "abc", "", [], [[0.5]]]:
        with pytest.raises(WtalError, match=r"eval.thresholds: .*\(0, 1\]"):
            resolve_thresholds(bad)


def test_averages_table_and_json_round_trip():
    thumos = DetectionResult(resolve_thresholds("thumos"), ("A", "B"), np.tile(np.linspace(0.7, 0.1, 7), (2, 1)),
                             np.array([3, 4]), 10, {"subset": "test"})
    averages = thumos.averages()
    assert list(averages) == ["avg(0.1:0.5)", "avg(0.3:0.7)", "avg(0.1:0.7)", "avg"]
    assert averages["avg(0.1:0.5)"] == pytest.approx(50.0) and averages["avg(0.3:0.7)"] == pytest.approx(30.0)
    assert averages["avg"] == pytest.approx(40.0)
    anet = DetectionResult(resolve_thresholds("anet"), ("A",), np.full((1, 10), 0.25), np.array([1]), 1)
    assert list(anet.averages()) == ["avg(0.5:0.95)", "avg"]
    custom = DetectionResult(np.array([0.5, 0.75]), ("A",), np.zeros((1, 2)), np.array([1]), 1)
    assert list(custom.averages()) == ["avg"]

    table = thumos.format_table(per_class=True, reference={"paper": [69.7, 64.5, 58.1, 49.9, 39.6, 27.3, None]})
    assert "70.00" in table and "avg(0.1:0.7)" in table and "69.70" in table and "B (4 gt)" in table
    paper_row = next(line for line in table.splitlines() if line.startswith("paper"))
    assert paper_row.split()[-4:] == ["-", "56.36", "-", "-"]  # averages need every value
    with pytest.raises(WtalError, match="reference"):
        thumos.format_table(reference={"paper": [1.0]})

    payload = json.loads(json.dumps(thumos.to_json()))
    assert payload["mAP@0.3"] == pytest.approx(50.0) and payload["mAP"][0] == pytest.approx(70.0)
    back = DetectionResult.from_json({**payload, "cls_mAP": 1.0})
    np.testing.assert_allclose(back.ap, thumos.ap)
    assert back.classes == thumos.classes and back.averages() == pytest.approx(averages)
    with pytest.raises(WtalError, match="per_class"):
        DetectionResult.from_json({"thresholds": [0.5]})


def test_classification_map():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.4], [0.2, 0.3, 0.3]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0]])
    # class 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: rank 1 -> 1; class 2 has no positive
    assert classification_map(scores, labels) == pytest.approx(100 * (5 / 6 + 1) / 2)


def test_rejects_bad_input():
    annotations = _one_video([[0, 10]])
    with pytest.raises(WtalError, match="classes"):
        evaluate_detection(annotations, _detections([("v1", 0, 0, 5, 0.5)], classes=("B",)), "test", [0.5])
    cases = [
        (("v1", 0, 0, 5, np.nan), r"detections\[1\] \(video 'v1'\): score"),
        (("v1", 3, 0, 5, 0.5), r"detections\[1\] .*label"),
        (("v1", 0, 5, 5, 0.5), r"detections\[1\] .*zero-length"),
        (("v1", 0, 6, 5, 0.5), r"detections\[1\] .*end precedes start"),
    ]
    for row, message in cases:
        with pytest.raises(WtalError, match=message):
            evaluate_detection(annotations, _detections([("v1", 0, 0, 5, 0.5), row]), "test", [0.5])
    with pytest.raises(WtalError, match="subset 'val'"):
        evaluate_detection(annotations, _detections([("v1", 0, 0, 5, 0.5)]), "val", [0.5])


def test_attention_inside_outside_pools_snippets_over_videos():
    from wtal.evaluate import attention_inside_outside

    # video 0: snippets of 1 s, centres 0.5 .. 4.5, ground truth [1, 3] holds centres 1.5 and 2.5 (ends count)
    # video 1: snippets of 0.5 s, centres 0.25 .. 1.75, ground truth [1.75, 2] holds the last centre only
    inside, outside = attention_inside_outside(
        [np.array([[1.0, 3.0]]), np.array([[1.75, 2.0]])],
        [np.array([0.0, 1.0, 0.8, 0.1, 0.1]), np.array([0.2, 0.2, 0.2, 0.6])],
        [1.0, 0.5],
    )
    assert inside == pytest.approx((1.0 + 0.8 + 0.6) / 3)
    assert outside == pytest.approx((0.0 + 0.1 + 0.1 + 0.2 * 3) / 6)
    inside, outside = attention_inside_outside([np.zeros((0, 2))], [np.ones(3)], [1.0])
    assert np.isnan(inside) and outside == 1.0
    with pytest.raises(WtalError, match="per video"):
        attention_inside_outside([np.zeros((0, 2))], [], [1.0])
