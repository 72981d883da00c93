import json

import numpy as np
import pytest

from wtal.errors import WtalError
from wtal.plots import evaluation_curve, strongest_activations


def test_probabilities_are_drawn_as_they_are():
    cas = np.array([[0.1, 0.9, 0.2], [0.3, 0.5, 0.8]])  # [T=2, C=3]
    strongest, shown, scaled = strongest_activations(cas, 2)
    assert strongest.tolist() == [1, 2] and not scaled
    np.testing.assert_array_equal(shown, cas[:, [1, 2]])


def test_logits_are_min_max_scaled_per_class_over_the_video():
    cas = np.array([[-2.0, 4.0, 0.0], [1.0, 6.0, 0.5], [0.0, 5.0, 0.25]])
    strongest, shown, scaled = strongest_activations(cas, 2)
    assert strongest.tolist() == [1, 0] and scaled
    np.testing.assert_allclose(shown, [[0.0, 0.0], [1.0, 1.0], [0.5, 2 / 3]])
    _, flat, _ = strongest_activations(np.full((3, 1), 7.0), 1)  # a constant curve stays finite
    np.testing.assert_array_equal(flat, np.zeros((3, 1)))


def _write_log(path, lines):
    path.mkdir()
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_evaluation_curve_reads_the_test_lines(tmp_path):
    _write_log(tmp_path / "run", [
        {"step": 10, "split": "train", "total": 1.0},
        {"step": 20, "split": "test", "avg": 30.0, "mAP@0.5": 20.0},
        {"step": 40, "split": "test", "avg": 35.5, "mAP@0.5": 25.0},
    ])  # fmt: skip
    steps, values = evaluation_curve(tmp_path / "run", "mAP@0.5")
    assert steps.tolist() == [20, 40] and values.tolist() == [20.0, 25.0]
    with pytest.raises(WtalError, match=r"run/metrics.jsonl: no metric 'nope' .*'mAP@0.5'"):
        evaluation_curve(tmp_path / "run", "nope")
    _write_log(tmp_path / "early", [{"step": 10, "split": "train", "total": 1.0}])
    with pytest.raises(WtalError, match="early/metrics.jsonl: no test evaluation yet"):
        evaluation_curve(tmp_path / "early")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2, "spl\n')
    with pytest.raises(WtalError, match="broken/metrics.jsonl: line 2: expected a JSON object"):
        evaluation_curve(tmp_path / "broken")


def test_curves_command_prints_best_and_last_and_writes_a_png(tmp_path, capsys):
    from wtal.cli import main

    _write_log(tmp_path / "a", [{"step": s, "split": "test", "avg": v} for s, v in [(100, 40.0), (200, 52.5), (300, 50.0)]])
    out = tmp_path / "curves.png"
    assert main(["curves", str(tmp_path / "a"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "100:40.00 200:52.50* 300:50.00" in text
    assert "best 52.50 at step 200; last 50.00 at step 300 (-2.50 from the best); the last 3: mean 47.50, spread 12.50" in text
    assert main(["curves", str(tmp_path / "a"), "--out", str(out), "--tail", "2"]) == 0
    assert "the last 2: mean 51.25, spread 2.50, lowest -2.50 from the best" in capsys.readouterr().out
    assert out.stat().st_size > 5_000
    assert main(["curves", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing/metrics.jsonl: file not found" in capsys.readouterr().err


def test_curve_groups_give_mean_range_and_the_difference_with_its_interval(tmp_path, capsys):
    from wtal.cli import main

    ours = {"w0": [30.0, 50.0], "w1": [34.0, 52.0], "w2": [32.0, 54.0]}
    theirs = {"a0": [20.0, 51.0], "a1": [40.0, 55.0], "a2": [36.0, 47.0]}
    for name, values in {**ours, **theirs}.items():
        _write_log(tmp_path / name, [{"step": s, "split": "test", "avg": v} for s, v in zip((100, 200), values)])
    group = lambda names: ",".join(str(tmp_path / n) for n in names)  # noqa: E731
    out = tmp_path / "groups.png"
    assert main(["curves", "--group", f"wtal={group(ours)}", "--group", f"authors={group(theirs)}", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "100: 32.00 ± 2.00 [30.00, 34.00] | 32.00 ± 10.58 [20.00, 40.00] | +0.00" in text
    assert "200: 52.00 ± 2.00 [50.00, 54.00] | 51.00 ± 4.00 [47.00, 55.00] | +1.00" in text
    assert "wtal's mean within authors's seed range at 2 of 2 evaluations" in text
    assert out.stat().st_size > 5_000
    assert main(["curves", "--group", "wtal", "--out", str(out)]) == 2


def test_action_share_counts_overlaps_once():
    from wtal.data.annotations import Video
    from wtal.plots import action_share

    video = Video("v", "test", 100.0, np.array([[10.0, 30.0], [20.0, 40.0], [50.0, 55.0], [90.0, 120.0]]), ("a",) * 4)
    assert action_share(video) == pytest.approx((30 + 5 + 10) / 100)
    assert action_share(Video("w", "test", 10.0, np.zeros((0, 2)), ())) == 0.0


def test_the_demo_timeline_shows_videos_with_visible_actions_and_background():
    from wtal.data.wtalc import bundled_thumos14
    from wtal.plots import action_share, readable_videos

    test = [v for v in bundled_thumos14().videos.values() if v.subset == "test"]
    shown = readable_videos(test)
    assert len(shown) == 3 and len({v.video_labels for v in shown}) == 3
    for video in shown:
        assert 0.25 <= action_share(video) <= 0.6 and 3 <= len(video.labels) <= 10
    crowded = max(test, key=lambda v: len(v.labels))  # what the demo showed before: hundreds of instances
    assert len(crowded.labels) > 100 and crowded not in shown
