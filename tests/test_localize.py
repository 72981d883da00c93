"""wtal.localize on hand-made sequences whose answers are worked out by hand."""

import math

import numpy as np
import pytest

from wtal.config import InferenceConfig
from wtal.detections import Detections
from wtal.errors import WtalError
from wtal.localize import localize, localize_video, nms, select_classes, soft_nms, temporal_iou


def cfg(**overrides):
    return InferenceConfig(**overrides)


def segments(result):
    """(label, start, end) triples of a localize_video result, rounded to avoid float noise."""
    label, start, end, _ = result
    return sorted((int(c), round(float(s), 9), round(float(e), 9)) for c, s, e in zip(label, start, end))


def one_class(seq, **overrides):
    """Localize a single-class video whose attention and cas are both ``seq`` (1 s snippets)."""
    seq = np.asarray(seq, dtype=float)
    return localize_video(seq, seq[:, None], np.array([0.9]), 1.0, 0.0, cfg(**overrides))


def test_single_bump_gives_one_segment_in_seconds():
    seq = [0, 0, 1, 1, 1, 0, 0, 0]
    label, start, end, score = localize_video(
        np.array(seq, float), np.array(seq, float)[:, None], np.array([0.9]), 0.64, 0.0, cfg()
    )
    # The nine default thresholds find the same run [2, 5); duplicates collapse to one.
    assert label.tolist() == [0]
    assert start == pytest.approx([2 * 0.64]) and end == pytest.approx([5 * 0.64])
    # Inside mean 1, margins round(0.25 * 3) = 1 snippet of 0 on each side, plus 0.2 * 0.9.
    assert score == pytest.approx([1.0 + 0.2 * 0.9])


def test_two_separated_bumps_give_two_segments():
    result = one_class([0, 1, 1, 0, 0, 1, 1, 1, 0])
    assert segments(result) == [(0, 1.0, 3.0), (0, 5.0, 8.0)]


def test_runs_touching_the_edges_at_several_thresholds():
    result = one_class([1, 0.5, 0, 0.5, 1], thresholds=[0.4, 0.9], nms="none")
    assert segments(result) == [(0, 0.0, 1.0), (0, 0.0, 2.0), (0, 3.0, 5.0), (0, 4.0, 5.0)]
    # A value equal to the threshold is active.
    assert segments(one_class([0, 0.5, 1, 0.5, 0], thresholds=[0.5])) == [(0, 1.0, 4.0)]


def test_sequences_are_min_max_normalised_and_constant_ones_cover_the_video():
    # 0.2..0.6 normalises to 0..1: only the top snippet passes 0.9.
    assert segments(one_class([0.2, 0.4, 0.6, 0.4], thresholds=[0.9])) == [(0, 2.0, 3.0)]
    assert segments(one_class([0.3] * 4, thresholds=[0.9])) == [(0, 0.0, 4.0)]


def test_upsample_keeps_run_seconds_and_refines_the_margins():
    cas = np.array([0.0, 0.2, 0.6, 1.0, 1.0, 0.4, 0.0, 0.0])
    knobs = dict(thresholds=[0.9], outer_margin=0.75, class_score_weight=0.0)
    results = {
        up: localize_video(cas, cas[:, None], np.array([1.0]), 0.64, 0.0, cfg(upsample=up, **knobs))
        for up in (1, 2)
    }
    for up, (_, start, end, _) in results.items():
        assert start == pytest.approx([3 * 0.64]) and end == pytest.approx([5 * 0.64]), up
    # upsample 1: run [3, 5), margin round(1.5) = 2 snippets: outer (0.2 + 0.6 + 0.4 + 0) / 4.
    assert results[1][3] == pytest.approx([1.0 - 0.3])
    # upsample 2: run [6, 10), margin round(3) = 3 half-snippets: outer (0.2 + 0.6 * 2 + 0.4 * 2 + 0) / 6.
    assert results[2][3] == pytest.approx([1.0 - 2.2 / 6])


def test_outer_inner_contrast_pools_clipped_margins():
    attention = np.array([0, 1, 1, 1, 1, 0, 0, 0, 0, 0], float)
    cas = np.array([0.9, 1, 0.8, 1, 0.8, 0, 0.3, 0.1, 0.1, 0.1])[:, None]
    _, start, end, score = localize_video(attention, cas, np.array([0.5]), 1.0, 0.0, cfg(outer_margin=0.5))
    # Run [1, 5): inside mean 0.9; margins of 2 snippets: left clipped to [0, 1), right [5, 7);
    # pooled outer mean (0.9 + 0 + 0.3) / 3 = 0.4; plus 0.2 * 0.5.
    assert (start.tolist(), end.tolist()) == ([1.0], [5.0])
    assert score == pytest.approx([0.9 - 0.4 + 0.1])


def test_proposal_source_selects_and_pools_sequences():
    attention = np.array([0, 1, 1, 0, 0, 0, 0, 0], float)
    cas = np.array([0, 0, 0, 0, 0, 1, 1, 0], float)[:, None]
    found = {
        source: segments(localize_video(attention, cas, np.array([1.0]), 1.0, 0.0, cfg(proposal_source=source)))
        for source in ("attention", "cas", "both")
    }
    assert found == {
        "attention": [(0, 1.0, 3.0)],
        "cas": [(0, 5.0, 7.0)],
        "both": [(0, 1.0, 3.0), (0, 5.0, 7.0)],
    }


def test_select_classes_threshold_and_fallback():
    assert select_classes(np.array([0.1, 0.3, 0.2]), cfg(class_threshold=0.2)).tolist() == [1, 2]
    assert select_classes(np.array([0.1, 0.15, 0.05]), cfg(class_threshold=0.2)).tolist() == [1]
    # Each selected class gets its own detections; the others get none.
    seq = np.array([0, 1, 1, 0], float)
    label, *_ = localize_video(seq, np.tile(seq[:, None], 3), np.array([0.1, 0.3, 0.2]), 1.0, 0.0, cfg())
    assert sorted(label.tolist()) == [1, 2]


def test_temporal_iou_pairwise():
    a = np.array([[0.0, 2.0], [1.0, 3.0]])
    b = np.array([[0.0, 2.0], [4.0, 5.0], [1.0, 2.0]])
    expected = [[1.0, 0.0, 0.5], [1 / 3, 0.0, 0.5]]
    assert temporal_iou(a, b) == pytest.approx(np.array(expected))
    assert temporal_iou([[1.0, 1.0]], [[1.0, 1.0]]).tolist() == [[0.0]]


def test_nms_keeps_best_of_overlapping_and_both_disjoint():
    assert nms([0, 1], [10, 10], [0.8, 0.9], 0.6).tolist() == [1]
    assert nms([0, 5], [4, 9], [0.8, 0.9], 0.6).tolist() == [1, 0]
    # IoU exactly at the threshold is kept; limit stops after the best kept boxes.
    assert nms([0, 0], [10, 6], [0.9, 0.8], 0.6).tolist() == [0, 1]
    assert nms([0, 5, 20], [4, 9, 30], [0.7, 0.9, 0.8], 0.6, limit=2).tolist() == [1, 2]


def test_soft_nms_decays_overlapping_score_by_gaussian():
    new = soft_nms([0, 5, 20], [10, 10, 30], [1.0, 0.8, 0.5], 0.3)
    # [5, 10] overlaps [0, 10] with IoU 0.5; [20, 30] overlaps nothing.
    assert new == pytest.approx([1.0, 0.8 * math.exp(-0.25 / 0.3), 0.5])


def test_localize_video_nms_modes_and_cap():
    seq = [1, 0.5, 0, 0.5, 1]
    hard = one_class(seq, thresholds=[0.4, 0.9], nms_iou=0.4)
    assert len(hard[0]) == 2  # each [0, 2) / [0, 1) pair overlaps at IoU 0.5
    soft = one_class(seq, thresholds=[0.4, 0.9], nms="soft_nms")
    assert len(soft[0]) == 4 and np.all(np.diff(soft[3]) <= 0)
    capped = one_class(seq, thresholds=[0.4, 0.9], nms="none", max_per_video=3)
    assert len(capped[0]) == 3 and np.all(np.diff(capped[3]) <= 0)


def test_duration_clips_and_drops_and_keeps_the_best_duplicate():
    seq = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 0.5])
    knobs = cfg(thresholds=[0.4, 0.9], nms="none", class_score_weight=0.0)
    # Runs [7, 10) and [7, 9) both clip to [7, 8.5]; the better score (2.5 / 3 - 0) is kept.
    label, start, end, score = localize_video(seq, seq[:, None], np.array([1.0]), 1.0, 8.5, knobs)
    assert (start.tolist(), end.tolist()) == ([7.0], [8.5])
    assert score == pytest.approx([2.5 / 3])
    # A run wholly past the end of the video becomes zero-length and is dropped.
    assert len(localize_video(seq, seq[:, None], np.array([1.0]), 1.0, 6.0, knobs)[0]) == 0
    # A duration longer than the features clips nothing.
    assert localize_video(seq, seq[:, None], np.array([1.0]), 1.0, 20.0, knobs)[2].max() == 10.0


def test_localize_returns_detections_that_round_trip_through_json():
    classes = ("Jump", "Run")
    seq = np.array([0, 1, 1, 0, 0, 1, 0, 0], float)
    records = [
        ("video_a", seq, np.stack([seq, seq[::-1]], axis=1), np.array([0.9, 0.1]), 5.0),
        ("video_b", seq[::-1], np.stack([seq, seq[::-1]], axis=1), np.array([0.3, 0.8]), 0.0),
    ]
    det = localize(iter(records), classes, 0.64, cfg())
    assert isinstance(det, Detections) and len(det) > 0
    assert set(det.video) == {"video_a", "video_b"} and det.end.max() <= 5.12
    back = Detections.from_json(det.to_json(), classes, "round trip")
    assert back.video.tolist() == det.video.tolist() and back.label.tolist() == det.label.tolist()
    for field in ("start", "end", "score"):
        assert np.array_equal(getattr(back, field), getattr(det, field)), field
    assert len(localize([], classes, 0.64, cfg())) == 0


@pytest.mark.parametrize(
    "attention, cas, video_scores, needle",
    [
        (np.zeros(5), np.zeros((4, 2)), np.zeros(2), "vid7: cas: expected [T, C] with T = 5"),
        (np.zeros(5), np.zeros((5, 2)), np.zeros(3), "vid7: video_scores: expected [C] with C = 2"),
        (np.zeros((5, 1)), np.zeros((5, 2)), np.zeros(2), "vid7: attention: expected shape [T]"),
        (np.zeros(0), np.zeros((0, 2)), np.zeros(2), "vid7: attention: empty sequence"),
        (np.array([0, np.nan, 0.0]), np.zeros((3, 2)), np.zeros(2), "vid7: attention: 1 NaN"),
        (np.zeros(3), np.full((3, 2), np.nan), np.zeros(2), "vid7: cas: 6 NaN"),
        (np.zeros(3), np.zeros((3, 2)), np.array([0.5, np.nan]), "vid7: video_scores: 1 NaN"),
    ],
)
def test_bad_inputs_name_the_video_and_array(attention, cas, video_scores, needle):
    with pytest.raises(WtalError) as info:
        localize([("vid7", attention, cas, video_scores, 3.0)], ["a", "b"], 0.64, cfg())
    assert needle in str(info.value)


def test_localize_rejects_wrong_class_count_duplicates_and_bad_config():
    ok = ("vid1", np.zeros(3), np.zeros((3, 2)), np.zeros(2), 3.0)
    with pytest.raises(WtalError, match="vid1: cas: expected C = 3 classes, found 2"):
        localize([ok], ["a", "b", "c"], 0.64, cfg())
    with pytest.raises(WtalError, match="vid1: video scored twice"):
        localize([ok, ok], ["a", "b"], 0.64, cfg())
    with pytest.raises(WtalError, match="vid1: duration"):
        localize([ok[:4] + (float("nan"),)], ["a", "b"], 0.64, cfg())
    with pytest.raises(WtalError, match="inference.nms"):
        localize([ok], ["a", "b"], 0.64, cfg(nms="greedy"))


def reference(attention, cas, video_scores, seconds, duration, c: InferenceConfig):
    """Plain-loop restatement of the documented pipeline (nms="none", no cap) for cross-checks."""
    chosen = [k for k, v in enumerate(video_scores) if v >= c.class_threshold] or [int(np.argmax(video_scores))]
    best = {}
    for k in chosen:
        sources = {"attention": [attention], "cas": [cas[:, k]], "both": [attention, cas[:, k]]}
        values = [v for v in cas[:, k] for _ in range(c.upsample)]
        for seq in sources[c.proposal_source]:
            low, high = min(seq), max(seq)
            norm = [(v - low) / (high - low) if high > low else 1.0 for v in seq for _ in range(c.upsample)]
            for thr in c.thresholds:
                i = 0
                while i < len(norm):
                    if norm[i] < thr:
                        i += 1
                        continue
                    j = i
                    while j < len(norm) and norm[j] >= thr:
                        j += 1
                    m = max(1, math.floor(c.outer_margin * (j - i) + 0.5))
                    outer = values[max(0, i - m) : i] + values[j : j + m]
                    score = sum(values[i:j]) / (j - i) - (sum(outer) / len(outer) if outer else 0.0)
                    score += c.class_score_weight * video_scores[k]
                    s, e = i * seconds / c.upsample, j * seconds / c.upsample
                    if duration > 0:
                        s, e = min(max(s, 0.0), duration), min(max(e, 0.0), duration)
                    if e > s:
                        key = (k, round(s, 9), round(e, 9))
                        best[key] = max(best.get(key, -np.inf), score)
                    i = j
    return best


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_plain_loop_reference_on_random_videos(seed):
    rng = np.random.default_rng(seed)
    t, classes = int(rng.integers(1, 40)), 3
    attention, cas, video_scores = rng.random(t), rng.random((t, classes)), rng.random(classes)
    knobs = cfg(
        proposal_source=("attention", "cas", "both")[seed % 3],
        upsample=1 + seed % 3,
        outer_margin=float(rng.choice([0.0, 0.25, 0.6])),
        thresholds=sorted(rng.random(4).round(2).tolist()),
        class_threshold=0.5,
        nms="none",
        max_per_video=0,
    )
    duration = float(rng.choice([0.0, t * 0.64 * 0.7, t * 0.64 * 1.3]))
    label, start, end, score = localize_video(attention, cas, video_scores, 0.64, duration, knobs)
    found = {(int(k), round(s, 9), round(e, 9)): p for k, s, e, p in zip(label, start, end, score)}
    expected = reference(attention, cas, video_scores, 0.64, duration, knobs)
    assert found.keys() == expected.keys()
    assert [found[k] for k in expected] == pytest.approx(list(expected.values()))
    assert np.all(np.diff(score) <= 0)
