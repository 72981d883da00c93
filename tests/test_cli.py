"""The command line: each command end to end and its errors."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from wtal.cli import DEMO_OVERRIDES, main
from wtal.config import load_config
from wtal.data.synthetic import configure, written_knobs


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def vector_e(tmp_path):
    gt = _write(tmp_path / "gt.json", {"database": {
        "v1": {"subset": "validation", "duration": 40, "annotations": [
            {"segment": [0, 10], "label": "A"}, {"segment": [20, 30], "label": "B"}]},
        "v9": {"subset": "training", "duration": 40, "annotations": [{"segment": [0, 10], "label": "A"}]},
    }})
    pred = _write(tmp_path / "pred.json", {"results": {
        "v1": [{"label": "A", "score": 0.9, "segment": [0, 10]}],
        "v9": [{"label": "A", "score": 0.95, "segment": [0, 10]}],
    }})
    return gt, pred


def test_eval_files(vector_e, tmp_path, capsys):
    gt, pred = vector_e
    out = tmp_path / "result.json"
    code = main(["eval", "--gt", str(gt), "--pred", str(pred), "--subset", "validation",
                 "--thresholds", "0.5,0.75", "--per-class", "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["mAP"] == pytest.approx([25.0, 25.0])
    assert "25.00" in capsys.readouterr().out


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"label": "Z", "score": 0.5, "segment": [0, 1]}, "unknown label 'Z'"),
        ({"label": "A", "score": 0.5, "segment": [5, 1]}, "end 1.0 precedes start 5.0"),
        ({"label": "A", "score": float("nan"), "segment": [0, 1]}, "score"),
    ],
)
def test_eval_rejects_bad_predictions(vector_e, tmp_path, capsys, entry, message):
    gt, _ = vector_e
    pred = _write(tmp_path / "bad.json", {"results": {"v1": [entry]}})
    assert main(["eval", "--gt", str(gt), "--pred", str(pred), "--subset", "validation"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wtal: error:") and "bad.json" in err and "v1" in err and message in err


def test_missing_file_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--gt", str(tmp_path / "nope.json"), "--pred", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "nope.json: file not found" in err and "Traceback" not in err


def test_train_localize_eval_round_trip(tiny_overrides, tiny_dataset, tmp_path, capsys):
    overrides = [*tiny_overrides, "train.iterations=4"]  # later overrides win
    assert main(["train", "--quiet", *overrides]) == 0
    run = tmp_path / "runs" / "run"
    assert main(["localize", "--run", str(run)]) == 0
    assert re.search(r"mean attention on subset 'test': [01]\.\d{3} inside ground truth, [01]\.\d{3} outside",
                     capsys.readouterr().out)
    detections = run / "detections-test.json"
    assert json.loads(detections.read_text())["results"]
    assert main(["localize", "--run", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", "--gt", str(tiny_dataset / "annotations.json"), "--pred", str(detections)]) == 0
    assert main(["eval", "--run", str(run)]) == 0


def test_localize_scores_another_feature_set_with_data_root(tiny_overrides, tiny_dataset, tmp_path):
    """data.* overrides reach the dataset the trained model scores, not only the config."""
    import shutil

    assert main(["train", "--quiet", *tiny_overrides, "train.iterations=4"]) == 0
    run = tmp_path / "runs" / "run"
    other = tmp_path / "other"
    shutil.copytree(tiny_dataset, other)
    for path in (other / "features").glob("*.npy"):
        np.save(path, np.load(path)[::-1].copy())  # every video reversed in time
    outputs = {}
    for name, extra in (("own", []), ("other", [f"data.root={other}"])):
        out = tmp_path / f"{name}.json"
        assert main(["localize", "--run", str(run), "--out", str(out), *extra]) == 0
        outputs[name] = json.loads(out.read_text())["results"]
    assert outputs["own"] != outputs["other"]


def test_train_reports_nan_features(tiny_overrides, tiny_dataset, tmp_path, capsys):
    import shutil

    data = tmp_path / "nan"
    shutil.copytree(tiny_dataset, data)
    victim = sorted((data / "features").glob("*.npy"))[0]
    features = np.load(victim)
    features[3, 5] = np.nan
    np.save(victim, features)
    overrides = [*tiny_overrides, f"data.root={data}"]
    assert main(["train", "--quiet", *overrides]) == 2
    err = capsys.readouterr().err
    assert victim.stem in err and "NaN" in err


def test_bad_override_names_the_field(capsys):
    assert main(["train", "train.iterations=many", "--quiet"]) == 2
    assert "train.iterations: expected an integer" in capsys.readouterr().err


def test_stray_arguments_are_refused(capsys):
    with pytest.raises(SystemExit):
        main(["train", "train.iterations=2", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["train", "--quiet", "notanoverride"]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_synth_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    assert main(["synth", "--preset", "tiny", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "precious"


def test_demo_on_a_small_dataset(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--quiet", "--out", str(out), "--data", str(tiny_dataset),
                 "model.base.embed_dim=32", "model.base.attention_dim=16",
                 "data.max_seqlen=64", "train.iterations=6", "train.eval_every=3"])
    assert code == 0
    text = capsys.readouterr().out
    assert "paper (Li et al. 2022)" in text and "avg(0.1:0.7)" in text
    assert re.search(r"mean attention on the test videos: [01]\.\d{3} inside ground truth, [01]\.\d{3} outside", text)
    (run,) = out.glob("run-*")
    assert (run / "timeline.png").stat().st_size > 10_000
    assert (run / "detections.json").is_file() and (run / "metrics.json").is_file()
    assert "using the synthetic dataset already in" in text and "(128-d features)" in text and "older demo" not in text


def test_the_demo_cut_config_is_what_the_demo_trains():
    """configs/demo_cut.yaml (the cut the schedules of reports/demo_cut/ were measured at) resolves
    to the config `wtal demo` builds from DEMO_OVERRIDES, so the two cannot drift apart."""
    path = Path(__file__).resolve().parents[1] / "configs" / "demo_cut.yaml"
    demo = load_config(None, ["data.root=data/synthetic_thumos14_512", *DEMO_OVERRIDES])
    assert load_config(path, []) == demo


def test_demo_names_its_own_older_dataset(tiny_dataset, tmp_path, capsys):
    """A demo folder whose data an older demo wrote (another width, an older preset) is used with a
    note naming what differs, never replaced without --overwrite."""
    out = tmp_path / "demo"
    shutil.copytree(tiny_dataset, out / "data")
    tiny = (tiny_dataset / "dataset.yaml").read_text()
    args = ["demo", "--quiet", "--out", str(out), "model.base.embed_dim=32",
            "model.base.attention_dim=16", "data.max_seqlen=64", "train.iterations=2", "train.eval_every=0"]
    assert main(args) == 0
    assert re.search(r"note: an older demo wrote these features; today's preset at 512-d differs in "
                     r"action_like_background, .* and \d+ more; wtal demo --overwrite regenerates them",
                     capsys.readouterr().out)
    assert (out / "data" / "dataset.yaml").read_text() == tiny

    # The same folder as if the demo of the k3 preset (before the camera motion) had written it.
    meta = yaml.safe_load(tiny)
    meta["generator"]["knobs"] = written_knobs(configure("thumos14_k3", {"feature_dim": 512}))
    (out / "data" / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    assert main(args) == 0
    note = "differs in background_motion, background_motion_flow_share, background_motion_overlap;"
    assert note in capsys.readouterr().out
