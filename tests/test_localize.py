"""wtal.localize on hand-made sequences whose answers are worked out by hand."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from wtal.config import InferenceConfig, load_config
from wtal.data.annotations import Annotations, Video
from wtal.data.readers import FeatureDataset
from wtal.detections import Detections
from wtal.engine.inference import detect, predict, scored_snippets
from wtal.errors import WtalError
from wtal.localize import localize, localize_video, nms, select_classes, soft_nms, temporal_iou
from wtal.models import build_model


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


def test_class_selection_inclusivity_and_fallback_switches():
    scores = np.array([0.1, 0.2, 0.05])
    assert select_classes(scores, cfg(class_threshold=0.2)).tolist() == [1]
    assert select_classes(scores, cfg(class_threshold=0.2, class_inclusive=False)).tolist() == [1]  # the fallback
    assert select_classes(scores, cfg(class_threshold=0.2, class_inclusive=False, class_fallback=False)).size == 0
    # No class, no detections.
    seq = np.array([0, 1, 1, 0], float)
    knobs = cfg(class_threshold=0.5, class_fallback=False)
    assert all(len(x) == 0 for x in localize_video(seq, np.tile(seq[:, None], 3), scores, 1.0, 0.0, knobs))


def test_linear_upsampling_interpolates_and_extrapolates():
    # cas [0, 1, 0.5] upsampled twice: 0, 0.5, 1, 0.75, 0.5, 0.25 (the last one past the last snippet,
    # on the line through the last two); repeat: 0, 0, 1, 1, 0.5, 0.5.
    cas = np.array([0.0, 1.0, 0.5])
    knobs = dict(
        proposal_source="cas", normalize=False, upsample=2, segment_score="max", class_score_weight=0.0, nms="none"
    )
    found = {
        (mode, th): segments(localize_video(cas, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(
            upsample_mode=mode, thresholds=[th], **knobs
        )))
        for mode in ("linear", "repeat")
        for th in (0.2, 0.3)
    }
    assert found[("linear", 0.2)] == [(0, 0.5, 3.0)] and found[("linear", 0.3)] == [(0, 0.5, 2.5)]
    assert found[("repeat", 0.2)] == found[("repeat", 0.3)] == [(0, 1.0, 3.0)]
    label, start, end, score = localize_video(
        cas, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(upsample_mode="linear", thresholds=[0.6], **knobs)
    )
    assert (start.tolist(), end.tolist(), score.tolist()) == ([1.0], [2.0], [1.0])  # 1 and 0.75 inside
    # A one-snippet video stays constant.
    one = localize_video(np.ones(1), np.ones((1, 1)), np.array([1.0]), 1.0, 0.0, cfg(upsample_mode="linear", **knobs))
    assert segments(one) == [(0, 0.0, 1.0)]


def test_require_positive_and_threshold_zero():
    cas = np.array([0.0, 0.4, 0.4, 0.0, 0.0, 0.3])
    knobs = dict(proposal_source="cas", normalize=False, thresholds=[0.0], nms="none")
    assert segments(localize_video(cas, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(**knobs))) == [(0, 0.0, 6.0)]
    positive = localize_video(cas, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(require_positive=True, **knobs))
    assert segments(positive) == [(0, 1.0, 3.0), (0, 5.0, 6.0)]


def test_contrast_on_the_cas_zeroed_below_the_threshold():
    # Run [2, 4) at 0.5; margins of ceil(1) = 1 before and floor(1) = 1 after: 0.1 and 0.3, or 0 and 0 zeroed.
    cas = np.array([0.1, 0.1, 1.0, 1.0, 0.3, 0.3])
    knobs = dict(
        proposal_source="cas", normalize=False, thresholds=[0.5], outer_margin=0.5, margin_rule="ceil_floor",
        class_score_weight=0.0,
    )
    plain = localize_video(cas, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(**knobs))
    zeroed = localize_video(cas, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(zero_below_threshold=True, **knobs))
    assert plain[3] == pytest.approx([1.0 - 0.2]) and zeroed[3] == pytest.approx([1.0])
    # Candidates found on the attention are scored on the plain cas.
    attention = np.array([0, 0, 1, 1, 0, 0], float)
    on_attention = localize_video(
        attention, cas[:, None], np.array([1.0]), 1.0, 0.0, cfg(**{**knobs, "proposal_source": "attention"},
                                                                  zero_below_threshold=True)
    )
    assert on_attention[3] == pytest.approx([1.0 - 0.2])


def test_attention_thresholds_apply_to_the_attention_only():
    attention = np.array([0.0, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    cas = np.array([0.0, 0.0, 0.0, 0.0, 0.2, 0.2, 0.0])[:, None]
    knobs = dict(proposal_source="both", normalize=False, thresholds=[0.1], nms="none")
    assert segments(localize_video(attention, cas, np.array([1.0]), 1.0, 0.0, cfg(**knobs))) == [
        (0, 1.0, 3.0), (0, 4.0, 6.0)
    ]
    own = cfg(attention_thresholds=[0.6], **knobs)  # the attention never reaches 0.6; the cas keeps 0.1
    assert segments(localize_video(attention, cas, np.array([1.0]), 1.0, 0.0, own)) == [(0, 4.0, 6.0)]


def test_max_segment_score_and_binary_class_score():
    cas = np.array([0.0, 0.7, 0.9, 0.8, 0.0])
    knobs = dict(proposal_source="cas", normalize=False, thresholds=[0.5], segment_score="max", class_score_weight=0.5)
    assert localize_video(cas, cas[:, None], np.array([0.6]), 1.0, 0.0, cfg(**knobs))[3] == pytest.approx([1.2])
    binary = cfg(class_score="binary", **knobs)
    assert localize_video(cas, cas[:, None], np.array([0.6]), 1.0, 0.0, binary)[3] == pytest.approx([1.4])
    # A fallback class did not pass the class threshold: its binary term is 0.
    assert localize_video(cas, cas[:, None], np.array([0.1]), 1.0, 0.0, binary)[3] == pytest.approx([0.9])


def test_nms_offset_in_seconds_and_clipping_off():
    rng = np.random.default_rng(0)
    seq = rng.random(60)
    knobs = dict(nms_iou=0.3, max_per_video=0)
    seconds = localize_video(seq, seq[:, None], np.array([1.0]), 0.5, 0.0, cfg(
        nms_length_offset=1.0, nms_offset_unit="seconds", **knobs
    ))
    snippets = localize_video(seq, seq[:, None], np.array([1.0]), 0.5, 0.0, cfg(nms_length_offset=2.0, **knobs))
    one_snippet = localize_video(seq, seq[:, None], np.array([1.0]), 0.5, 0.0, cfg(nms_length_offset=1.0, **knobs))
    assert segments(seconds) == segments(snippets) != segments(one_snippet)  # 1 s = 2 snippets of 0.5 s
    unclipped = localize_video(seq, seq[:, None], np.array([1.0]), 0.5, 10.0, cfg(clip_to_duration=False, **knobs))
    assert unclipped[2].max() > 10.0
    assert segments(unclipped) == segments(localize_video(seq, seq[:, None], np.array([1.0]), 0.5, 0.0, cfg(**knobs)))


def test_scored_snippets_resample_long_or_all_videos():
    assert scored_snippets(5).tolist() == [0, 1, 2, 3, 4]
    assert scored_snippets(5, 4, "longer").tolist() == [0, 1, 2, 3]  # floor(i * 5 / 4)
    assert scored_snippets(3, 4, "longer").tolist() == [0, 1, 2]
    assert scored_snippets(3, 4, "all").tolist() == [0, 0, 1, 2]
    assert scored_snippets(8, 8, "all").tolist() == list(range(8))


def test_predict_scores_resampled_videos_and_detect_maps_them_to_seconds():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lengths = {"long": 11, "short": 3}
    features = {name: rng.normal(size=(t, 6)).astype(np.float32) for name, t in lengths.items()}
    videos = {name: Video(name, "test", t * 0.64, np.zeros((0, 2)), ()) for name, t in lengths.items()}
    dataset = FeatureDataset.from_arrays(Annotations(("a", "b"), videos, {}), features, 0.64)
    config = load_config(None, ["model.name=mil", "model.embed_dim=8", "inference.max_per_video=0"])
    model = build_model(config.model, in_dim=6, num_classes=2)
    resample = dataclasses.replace(config.inference, test_seqlen=4, test_resample="all")
    resampled = predict(model, dataset, list(videos.values()), torch.device("cpu"), resample)
    picked = {name: scored_snippets(t, 4, "all") for name, t in lengths.items()}
    alone = FeatureDataset.from_arrays(
        Annotations(("a", "b"), videos, {}), {n: f[picked[n]] for n, f in features.items()}, 0.64
    )
    whole = predict(model, alone, list(videos.values()), torch.device("cpu"), config.inference)
    for ours, reference in zip(resampled, whole):
        assert ours.attention.shape == (4,) and ours.cas.shape == (4, 2)
        np.testing.assert_array_equal(ours.cas, reference.cas)
        np.testing.assert_array_equal(ours.video_scores, reference.video_scores)
        assert ours.snippet_seconds == pytest.approx(0.64 * lengths[ours.name] / 4)
        assert reference.snippet_seconds == 0.64
    detections = detect(resampled, dataset, config)
    for scores in resampled:
        seconds = 0.64 * lengths[scores.name] / 4  # one resampled snippet
        expected = localize_video(scores.attention, scores.cas, scores.video_scores, seconds, 0.0, config.inference)
        own = detections.video == scores.name
        assert own.sum() == len(expected[0]) > 0
        np.testing.assert_allclose(np.sort(detections.end[own]), np.sort(expected[2]))
        steps = detections.end[own] / seconds
        np.testing.assert_allclose(steps, np.round(steps))  # whole resampled snippets


@pytest.mark.parametrize(
    "override, key",
    [
        ("inference.upsample_mode=cubic", "inference.upsample_mode"),
        ("inference.segment_score=mean", "inference.segment_score"),
        ("inference.class_score=rank", "inference.class_score"),
        ("inference.nms_offset_unit=frames", "inference.nms_offset_unit"),
        ("inference.test_resample=some", "inference.test_resample"),
        ("inference.test_seqlen=-1", "inference.test_seqlen"),
        ("inference.attention_thresholds=[1.5] inference.normalize=true", "inference.attention_thresholds"),
        ("inference.require_positive=1", "inference.require_positive"),
    ],
)
def test_new_switches_are_validated_by_name(override, key):
    with pytest.raises(WtalError, match=key):
        load_config(None, override.split())


@pytest.mark.parametrize("key", ["upsample_mode", "segment_score", "class_score", "nms_offset_unit"])
def test_localize_names_a_bad_switch(key):
    with pytest.raises(WtalError, match=f"inference.{key}"):
        localize_video(np.zeros(3), np.zeros((3, 1)), np.zeros(1), 1.0, 0.0, cfg(**{key: "nope"}))


def test_temporal_iou_pairwise():
    a = np.array([[0.0, 2.0], [1.0, 3.0]])
    b = np.array([[0.0, 2.0], [4.0, 5.0], [1.0, 2.0]])
    expected = [[1.0, 0.0, 0.5], [1 / 3, 0.0, 0.5]]
    assert temporal_iou(a, b) == pytest.approx(np.array(expected))
    assert temporal_iou([[1.0, 1.0]], [[1.0, 1.0]]).tolist() == [[0.0]]


def test_nms_keeps_best_of_overlapping_and_both_disjoint():
    assert nms([0, 1], [10, 10], [0.8, 0.9], 0.6).tolist() == [1]
    assert nms([0, 5], [4, 9], [0.8, 0.9], 0.6).tolist() == [1, 0]
    # IoU exactly at the threshold is kept (dropped when inclusive); limit stops after the best kept boxes.
    assert nms([0, 0], [10, 6], [0.9, 0.8], 0.6).tolist() == [0, 1]
    assert nms([0, 0], [10, 6], [0.9, 0.8], 0.6, inclusive=True).tolist() == [0]
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
