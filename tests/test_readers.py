"""The three feature layouts: same content read alike, and every validation error."""

import json
import os
import pickle

import numpy as np
import pytest
import yaml

from wtal.config import DataConfig
from wtal.data.readers import load_dataset
from wtal.errors import WtalError

WIDTH = 8  # rgb = columns 0-3, flow = columns 4-7
SNIPPET = 0.5
CLASSES = ["A", "B", "C"]
# name -> (subset role, T, [(start, end, label), ...])
VIDEOS = {
    "v_train_0": ("train", 5, [(0.0, 1.0, "A"), (1.5, 2.0, "A")]),
    "v_train_1": ("train", 3, [(0.5, 1.0, "B")]),
    "v_train_2": ("train", 7, [(0.0, 0.5, "C"), (2.0, 3.0, "A")]),
    "v_test_0": ("test", 4, [(0.5, 1.5, "A")]),
    "v_test_1": ("test", 6, [(0.0, 1.0, "B"), (1.0, 2.5, "C")]),
}
SUBSET = {"train": "validation", "test": "test"}


def _features():
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal((t, WIDTH)).astype(np.float32) for name, (_, t, _) in VIDEOS.items()}


def write_canonical(root, features=None, **meta_changes):
    features = _features() if features is None else features
    (root / "features").mkdir(parents=True)
    for name, array in features.items():
        np.save(root / "features" / f"{name}.npy", array)
    database = {
        name: {
            "subset": SUBSET[role],
            "duration": t * SNIPPET,
            "annotations": [{"segment": [s, e], "label": label} for s, e, label in anns],
        }
        for name, (role, t, anns) in VIDEOS.items()
    }
    (root / "annotations.json").write_text(json.dumps({"classes": CLASSES, "database": database}))
    meta = {
        "name": "toy",
        "snippet_seconds": SNIPPET,
        "feature_dim": WIDTH,
        "modalities": {"rgb": [0, 4], "flow": [4, 8]},
        "subsets": {"train": "validation", "test": "test"},
        "classes": CLASSES,
        "annotations": "annotations.json",
        "features": "features",
        **meta_changes,
    }
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return DataConfig(layout="canonical", root=str(root), feature_dim=2048, snippet_seconds=9.0)


def _object_array(items):
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


def write_wtalc(root, as_bytes=True, features=None, name="Toy"):
    features = _features() if features is None else features
    folder = root / f"{name}-Annotations"
    folder.mkdir(parents=True)
    text = (lambda s: s.encode()) if as_bytes else str
    names = list(VIDEOS)
    np.save(folder / "videoname.npy", np.array([text(n) for n in names]))
    np.save(folder / "subset.npy", np.array([text(SUBSET[VIDEOS[n][0]]) for n in names]))
    np.save(folder / "classlist.npy", np.array([text(c) for c in CLASSES]))
    np.save(folder / "duration.npy", np.array([[VIDEOS[n][1] * SNIPPET] for n in names]))
    np.save(folder / "labels.npy", _object_array([[text(a[2]) for a in VIDEOS[n][2]] for n in names]))
    np.save(folder / "segments.npy", _object_array([[[a[0], a[1]] for a in VIDEOS[n][2]] for n in names]))
    np.save(root / f"{name}-I3D-JOINTFeatures.npy", _object_array([features[n] for n in names]))
    return DataConfig(layout="wtalc", root=str(root), name=name, feature_dim=WIDTH, snippet_seconds=SNIPPET)


def write_per_video(root, features=None):
    features = _features() if features is None else features
    half = WIDTH // 2
    for name, (role, _, _) in VIDEOS.items():
        for stream, cols in (("rgb", slice(0, half)), ("flow", slice(half, WIDTH))):
            folder = root / "features" / role / stream
            folder.mkdir(parents=True, exist_ok=True)
            np.save(folder / f"{name}.npy", features[name][:, cols])
    database = {
        name: {"subset": role, "annotations": [{"segment": [str(s), str(e)], "label": label} for s, e, label in anns]}
        for name, (role, _, anns) in VIDEOS.items()
    }
    database["v_unlisted"] = {"subset": "test", "annotations": []}
    (root / "gt.json").write_text(json.dumps({"database": database}))
    for role in ("train", "test"):
        (root / f"split_{role}.txt").write_text("\n".join(n for n, v in VIDEOS.items() if v[0] == role) + "\n")
    return DataConfig(layout="per_video", root=str(root), feature_dim=WIDTH, snippet_seconds=SNIPPET)


WRITERS = {"canonical": write_canonical, "wtalc": write_wtalc, "per_video": write_per_video}


@pytest.mark.parametrize("layout", list(WRITERS))
def test_layouts_read_the_same_content(tmp_path, layout):
    dataset = load_dataset(WRITERS[layout](tmp_path))
    expected = _features()
    assert dataset.classes == tuple(CLASSES) and dataset.num_classes == 3
    assert dataset.feature_dim == WIDTH and dataset.snippet_seconds == SNIPPET
    for role, subset in SUBSET.items():
        videos = dataset.videos(subset)
        assert [v.name for v in videos] == [n for n, v in VIDEOS.items() if v[0] == role]
        for video in videos:
            _, t, anns = VIDEOS[video.name]
            assert video.labels == tuple(a[2] for a in anns)
            np.testing.assert_allclose(video.segments, [[a[0], a[1]] for a in anns])
            assert video.duration == pytest.approx(t * SNIPPET)
            features = dataset.features(video.name)
            assert features.dtype == np.float32 and dataset.num_snippets(video.name) == t
            np.testing.assert_array_equal(features, expected[video.name])
    labels = dataset.label_matrix(dataset.videos("test"))
    np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 1, 1]])


@pytest.mark.parametrize("as_bytes", [True, False])
def test_wtalc_bytes_or_str_annotations(tmp_path, as_bytes):
    dataset = load_dataset(write_wtalc(tmp_path, as_bytes=as_bytes))
    assert dataset.classes == ("A", "B", "C")
    assert [v.name for v in dataset.videos("test")] == ["v_test_0", "v_test_1"]
    assert dataset.videos("test")[1].labels == ("B", "C")


@pytest.mark.parametrize("layout", list(WRITERS))
@pytest.mark.parametrize("modality, columns", [("rgb", slice(0, 4)), ("flow", slice(4, 8))])
def test_modality_selection(tmp_path, layout, modality, columns):
    cfg = WRITERS[layout](tmp_path)
    cfg.modality = modality
    dataset = load_dataset(cfg)
    assert dataset.feature_dim == 4
    np.testing.assert_array_equal(dataset.features("v_test_1"), _features()["v_test_1"][:, columns])


def test_canonical_yaml_overrides_snippet_seconds_and_ranges(tmp_path):
    cfg = write_canonical(tmp_path, snippet_seconds=0.25, modalities={"rgb": [0, 6], "flow": [6, 8]})
    cfg.modality = "rgb"
    dataset = load_dataset(cfg)
    assert dataset.snippet_seconds == 0.25 and dataset.feature_dim == 6


def test_canonical_modality_must_be_stored(tmp_path):
    cfg = write_canonical(tmp_path, modalities={"rgb": [0, 8]})
    cfg.modality = "flow"
    with pytest.raises(WtalError, match="data.modality: 'flow' is not stored"):
        load_dataset(cfg)


def test_canonical_yaml_subsets_are_defaults(tmp_path):
    write_canonical(tmp_path, subsets={"train": "validation", "test": "test"})
    cfg = DataConfig(layout="canonical", root=str(tmp_path), train_subset="training", test_subset="test")
    # 'training' is not stored: dataset.yaml's train subset is used under the config's name.
    assert [v.name for v in load_dataset(cfg).videos("training")][:1] == ["v_train_0"]
    cfg.train_subset = "test"  # both stored: the config wins
    assert load_dataset(cfg).videos("validation")


def test_classes_restrict_and_order(tmp_path):
    cfg = write_wtalc(tmp_path)
    cfg.classes = ["C", "A"]
    dataset = load_dataset(cfg)
    assert dataset.classes == ("C", "A")
    train = {v.name: v for v in dataset.videos("validation")}
    assert "v_train_1" not in train  # only B
    assert train["v_train_2"].labels == ("C", "A")
    test = dataset.videos("test")
    assert test[1].labels == ("C",) and test[1].segments.tolist() == [[1.0, 2.5]]
    np.testing.assert_array_equal(dataset.label_matrix(test), [[0, 1], [1, 0]])
    cfg.classes = ["A", "Z"]
    with pytest.raises(WtalError, match="data.classes.*'Z'"):
        load_dataset(cfg)


def test_exclude_videos_and_cache(tmp_path):
    cfg = write_canonical(tmp_path)
    cfg.exclude_videos = ["v_test_0", "not_in_this_dataset"]
    dataset = load_dataset(cfg)
    assert [v.name for v in dataset.videos("test")] == ["v_test_1"]
    with pytest.raises(WtalError, match="v_test_0"):
        dataset.features("v_test_0")
    assert dataset.features("v_test_1") is dataset.features("v_test_1")
    cfg.cache = False
    dataset = load_dataset(cfg)
    assert dataset.features("v_test_1") is not dataset.features("v_test_1")


@pytest.mark.parametrize(
    "layout, remove, message",
    [
        ("canonical", "dataset.yaml", "dataset.yaml: not found"),
        ("canonical", "features/v_train_1.npy", "v_train_1.npy: features of video 'v_train_1' not found"),
        ("wtalc", "Toy-I3D-JOINTFeatures.npy", "JOINTFeatures.npy: not found"),
        ("wtalc", "Toy-Annotations", "Toy-Annotations: not found"),
        ("per_video", "split_test.txt", "split_test.txt: not found"),
        ("per_video", "gt.json", "gt.json: file not found"),
        ("per_video", "features/test/flow/v_test_1.npy", "flow/v_test_1.npy: features of video 'v_test_1' not found"),
    ],
)
def test_missing_files_are_named(tmp_path, layout, remove, message):
    cfg = WRITERS[layout](tmp_path)
    target = tmp_path / remove
    if target.is_dir():
        for child in target.iterdir():
            child.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(WtalError, match=message):
        load_dataset(cfg)


def test_missing_root_and_bad_layout(tmp_path):
    with pytest.raises(WtalError, match="data.root: folder not found"):
        load_dataset(DataConfig(root=str(tmp_path / "nowhere")))
    with pytest.raises(WtalError, match="data.layout"):
        load_dataset(DataConfig(layout="hdf5", root=str(tmp_path)))


@pytest.mark.parametrize("layout", ["canonical", "wtalc"])
@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((5, 6), np.float32), r"expected width 8, found shape \(5, 6\)"),
        (np.zeros((0, 8), np.float32), r"empty \(T = 0"),
        (np.zeros((5, 2, 8), np.float32), "expected a 2-D"),
    ],
)
def test_bad_shapes_fail_at_load(tmp_path, layout, array, message):
    features = _features()
    features["v_train_2"] = array
    with pytest.raises(WtalError, match=f"v_train_2.*{message}"):
        load_dataset(WRITERS[layout](tmp_path, features=features))


def test_per_video_stream_checks(tmp_path):
    cfg = write_per_video(tmp_path)
    flow = tmp_path / "features/train/flow/v_train_0.npy"
    np.save(flow, np.zeros((4, 4), np.float32))
    with pytest.raises(WtalError, match=r"rgb/v_train_0.npy \(5 snippets\) and .*flow/v_train_0.npy \(4 snippets\)"):
        load_dataset(cfg)
    np.save(flow, np.zeros((5, 8), np.float32))
    with pytest.raises(WtalError, match=r"flow/v_train_0.npy.*expected width 4"):
        load_dataset(cfg)


def test_per_video_split_must_match_gt(tmp_path):
    cfg = write_per_video(tmp_path)
    (tmp_path / "split_test.txt").write_text("v_test_0\nv_ghost\n")
    with pytest.raises(WtalError, match="split_test.txt: video 'v_ghost' has no entry in .*gt.json"):
        load_dataset(cfg)


@pytest.mark.parametrize("layout", list(WRITERS))
def test_non_finite_values_reported_on_first_read(tmp_path, layout):
    features = _features()
    features["v_test_0"][1, 2] = np.nan
    features["v_test_0"][3, 6] = np.inf
    dataset = load_dataset(WRITERS[layout](tmp_path, features=features))
    dataset.features("v_test_1")
    with pytest.raises(WtalError, match="v_test_0.*2 NaN or infinite values"):
        dataset.features("v_test_0")


def test_float64_values_beyond_float32_are_reported_without_a_warning(tmp_path):
    import warnings

    features = {name: array.astype(np.float64) for name, array in _features().items()}
    features["v_test_0"][2, 1] = 1e300
    dataset = load_dataset(write_canonical(tmp_path, features=features))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WtalError, match="v_test_0.*1 NaN or infinite values .*beyond float32"):
            dataset.features("v_test_0")


def test_wtalc_bundle_must_align_with_videonames(tmp_path):
    cfg = write_wtalc(tmp_path)
    bundle = tmp_path / "Toy-I3D-JOINTFeatures.npy"
    np.save(bundle, _object_array([np.zeros((3, 8), np.float32)] * 4))
    with pytest.raises(WtalError, match="JOINTFeatures.npy: holds 4 feature arrays, expected 5"):
        load_dataset(cfg)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_wtalc_refuses_malicious_pickle(tmp_path):
    cfg = write_wtalc(tmp_path)
    marker = tmp_path / "pwned"
    bundle = tmp_path / "Toy-I3D-JOINTFeatures.npy"
    with open(bundle, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": (5,)}
        )
        pickle.dump(_Exploit(marker), handle, protocol=2)
    with pytest.raises(WtalError, match="refused to load.*system"):
        load_dataset(cfg)
    assert not marker.exists()


def test_training_videos_may_carry_video_level_labels_only(tmp_path):
    from wtal.data.annotations import Annotations
    from wtal.data.sampling import TrainBatches

    cfg = write_canonical(tmp_path)
    path = tmp_path / "annotations.json"
    obj = json.loads(path.read_text())
    for entry in obj["database"].values():  # the training videos: classes only, no segments
        if entry["subset"] == "validation":
            entry["labels"] = sorted({a["label"] for a in entry["annotations"]})
            entry["annotations"] = []
    path.write_text(json.dumps(obj))
    weak = load_dataset(cfg)
    full = load_dataset(write_canonical(tmp_path / "full"))
    train = weak.videos("validation")
    assert all(not len(v.segments) and v.weak_labels for v in train)
    np.testing.assert_array_equal(weak.label_matrix(train), full.label_matrix(full.videos("validation")))
    batch = next(TrainBatches(weak, "validation", 2, 16, "uniform", seed=0))
    assert batch["labels"].sum() > 0
    again = Annotations.from_activitynet(weak.annotations.to_activitynet(), "again")
    for a, b in zip(again.videos.values(), weak.annotations.videos.values()):
        assert (a.name, a.labels, a.weak_labels) == (b.name, b.labels, b.weak_labels)
        np.testing.assert_array_equal(a.segments, b.segments)
    obj["database"][train[0].name]["labels"] = ["NoSuchClass"]
    path.write_text(json.dumps(obj))
    with pytest.raises(WtalError, match=f"database\\['{train[0].name}'\\]: label 'NoSuchClass' is not one of"):
        load_dataset(cfg)
    obj["database"][train[0].name]["labels"] = "A"
    path.write_text(json.dumps(obj))
    with pytest.raises(WtalError, match=r"\.labels: expected a list of class names"):
        load_dataset(cfg)
