"""Property tests: malformed input ends in a WtalError or a correct result, never another exception.

Covers ``Annotations.from_activitynet``, ``Detections.from_json`` (random JSON
structures: wrong types, missing keys, NaN/inf, reversed segments, unknown
labels, huge numbers), ``evaluate_detection`` against a plain per-prediction
reimplementation of the ActivityNet algorithm, and the canonical / W-TALC
readers over arrays of wrong shapes and dtypes written to files.
"""

import json
import math
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wtal.config import DataConfig
from wtal.data.annotations import Annotations, Video
from wtal.data.readers import load_dataset
from wtal.data.wtalc import read_wtalc_annotations
from wtal.detections import Detections
from wtal.errors import WtalError
from wtal.evaluate import evaluate_detection

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLASSES = ("A", "B", "C")

# ---------------------------------------------------------------- JSON strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([10**400, -(10**400), 2**63, 1e308]),  # huge: float() overflows on the ints
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.sampled_from(["1.5", "nan", "inf", "-inf", "1e400", "", "A"]),
)
junk = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6
)
specials = st.sampled_from(["Z", float("nan"), float("inf"), -float("inf"), 10**400, -1.0, 1e300, "", None, [], {}])


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _paths(value, path + (i,))


@st.composite
def mutated(draw, valid):
    """A valid structure with 0-3 random edits: a node replaced by junk or a special value
    (NaN, inf, huge, unknown label), a key or item deleted, a list reversed (segments)."""
    obj = json.loads(json.dumps(draw(valid)))
    edits = draw(st.integers(0, 3))
    for _ in range(edits):
        path = draw(st.sampled_from(list(_paths(obj))))
        action = draw(st.sampled_from(["junk", "special", "delete", "reverse"]))
        if not path:
            obj = draw(junk) if action == "junk" else obj
            continue
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        if action == "delete":
            del parent[key]
        elif action == "reverse" and isinstance(parent[key], list):
            parent[key] = parent[key][::-1]
        else:
            parent[key] = draw(junk if action == "junk" else specials)
    return edits, obj


@st.composite
def valid_activitynet(draw):
    classes = draw(st.lists(st.sampled_from(CLASSES), min_size=1, max_size=3, unique=True))
    times = st.floats(0, 50, allow_nan=False)
    as_text = draw(st.booleans())  # segments may be strings of seconds
    database = {}
    for name in draw(st.lists(st.text(min_size=1, max_size=4), max_size=3, unique=True)):
        anns = []
        for start, end in draw(st.lists(st.tuples(times, times).map(sorted), max_size=3)):
            anns.append({"segment": [str(start), str(end)] if as_text else [start, end], "label": draw(st.sampled_from(classes))})
        video = {"subset": draw(st.sampled_from(["test", "validation"])), "annotations": anns}
        if draw(st.booleans()):
            video["duration"] = draw(st.floats(1, 100))
        if draw(st.booleans()):
            video["ambiguous"] = [list(p) for p in draw(st.lists(st.tuples(times, times).map(sorted), max_size=2))]
        database[name] = video
    obj = {"database": database}
    if draw(st.booleans()):
        obj["classes"] = classes
    return obj


def activitynet_objects():
    return st.one_of(mutated(valid_activitynet()), junk.map(lambda j: (-1, j)))


def _roundtrip_json(obj):
    """What a JSON file would give back (NaN/inf survive as Python's json writes them)."""
    return json.loads(json.dumps(obj))


def _check_annotations(ann: Annotations, classes):
    assert isinstance(ann.classes, tuple) and all(isinstance(c, str) for c in ann.classes)
    if classes is not None:
        assert ann.classes == tuple(classes)
    for name, video in ann.videos.items():
        assert isinstance(video, Video) and video.name == name and isinstance(video.subset, str)
        assert isinstance(video.duration, float)
        assert video.segments.dtype == np.float64 and video.segments.shape == (len(video.labels), 2)
        assert np.isfinite(video.segments).all() and (video.segments[:, 1] >= video.segments[:, 0]).all()
        assert set(video.labels) <= set(ann.classes)
    for regions in ann.ambiguous.values():
        assert regions.ndim == 2 and regions.shape[1] == 2 and np.isfinite(regions).all()
    again = Annotations.from_activitynet(ann.to_activitynet(), "again")
    assert again.classes == ann.classes and list(again.videos) == list(ann.videos)
    for name, video in ann.videos.items():
        assert np.array_equal(again.videos[name].segments, video.segments)
        assert again.videos[name].labels == video.labels


@FUZZ
@given(case=activitynet_objects(), classes=st.none() | st.just(list(CLASSES)))
def test_from_activitynet_never_crashes(case, classes):
    edits, obj = case
    try:
        ann = Annotations.from_activitynet(obj, "gt.json", classes)
    except WtalError as exc:
        assert str(exc).startswith("gt.json")
        assert edits != 0, f"valid input refused: {exc}"
        event("WtalError")
        return
    event(f"parsed ({'with' if any(len(v.labels) for v in ann.videos.values()) else 'without'} segments)")
    _check_annotations(ann, classes)


@st.composite
def valid_results(draw):
    times = st.floats(0, 50)
    results = {}
    for name in draw(st.lists(st.text(min_size=1, max_size=4), max_size=3, unique=True)):
        entries = []
        for start, length in draw(st.lists(st.tuples(times, st.floats(0.01, 20)), max_size=3)):
            entries.append({"label": draw(st.sampled_from(CLASSES)), "score": draw(st.floats(0, 1)), "segment": [start, start + length]})
        results[name] = entries
    return {"results": results}


@FUZZ
@given(case=st.one_of(mutated(valid_results()), junk.map(lambda j: (-1, j))))
def test_detections_from_json_never_crashes(case):
    edits, obj = case
    try:
        det = Detections.from_json(obj, CLASSES, "pred.json")
    except WtalError as exc:
        assert str(exc).startswith("pred.json")
        assert edits != 0, f"valid input refused: {exc}"
        event("WtalError")
        return
    event(f"parsed ({'some' if len(det) else 'no'} detections)")
    n = len(det)
    assert all(len(a) == n for a in (det.video, det.label, det.start, det.end))
    assert det.label.dtype == np.int64 and ((det.label >= 0) & (det.label < len(CLASSES))).all()
    assert np.isfinite(det.start).all() and np.isfinite(det.end).all() and np.isfinite(det.score).all()
    assert (det.end > det.start).all()
    again = Detections.from_json(_roundtrip_json(det.to_json()), CLASSES, "again")
    for field in ("label", "start", "end", "score"):
        assert np.array_equal(getattr(again, field), getattr(det, field))


# ---------------------------------------------------------------- evaluation against a reference


def _reference_ap(gts, preds, thresholds):
    """ActivityNet's compute_average_precision_detection, one prediction at a time.

    ``gts``: [(video, start, end)]; ``preds``: [(video, start, end, score)].
    """
    if not gts or not preds:
        return np.zeros(len(thresholds))
    order = sorted(range(len(preds)), key=lambda i: -preds[i][3])  # stable
    ap = []
    for threshold in thresholds:
        locked = set()
        tp = []
        for i in order:
            video, ps, pe, _ = preds[i]
            candidates = [(g, gs, ge) for g, (gv, gs, ge) in enumerate(gts) if gv == video]
            if not candidates:
                tp.append(0)
                continue
            tiou = np.array([max(0.0, min(pe, ge) - max(ps, gs)) for _, gs, ge in candidates])
            union = np.array([(pe - ps) + (ge - gs) for _, gs, ge in candidates]) - tiou
            tiou = np.divide(tiou, union, out=np.zeros_like(tiou), where=union > 0)
            hit = 0
            for j in np.argsort(tiou, kind="stable")[::-1]:
                if tiou[j] < threshold:
                    break
                if candidates[j][0] in locked:
                    continue
                locked.add(candidates[j][0])
                hit = 1
                break
            tp.append(hit)
        tp = np.cumsum(tp, dtype=np.float64)
        precision = tp / np.arange(1, len(tp) + 1)
        recall = tp / len(gts)
        mprec = np.concatenate([[0], precision, [0]])
        mrec = np.concatenate([[0], recall, [1]])
        for k in range(len(mprec) - 2, -1, -1):
            mprec[k] = max(mprec[k], mprec[k + 1])
        idx = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
        ap.append(float(np.sum((mrec[idx] - mrec[idx - 1]) * mprec[idx])))
    return np.array(ap)


grid = st.integers(0, 12).map(lambda v: v / 2)  # coarse: ties in tIoU and overlaps are common
spans = st.tuples(grid, st.integers(1, 8).map(lambda v: v / 2)).map(lambda p: (p[0], p[0] + p[1]))


@st.composite
def evaluation_cases(draw):
    num_classes = draw(st.integers(1, 3))
    classes = CLASSES[:num_classes]
    names = [f"v{i}" for i in range(draw(st.integers(1, 4)))]
    database = {}
    for name in names + ["other"]:
        anns = draw(st.lists(st.tuples(spans, st.sampled_from(classes)), max_size=4))
        database[name] = {
            "subset": "train" if name == "other" else "test",
            "duration": 20.0,
            "annotations": [{"segment": list(s), "label": c} for s, c in anns],
        }
        if draw(st.booleans()):
            database[name]["ambiguous"] = [list(s) for s in draw(st.lists(spans, max_size=2))]
    annotations = Annotations.from_activitynet({"classes": list(classes), "database": database}, "gt")
    # Half the predictions copy a ground-truth segment (jittered by up to a grid step), so matches are common.
    truth = [(name, tuple(s), label) for name, video in database.items() for s, label in
             ((a["segment"], a["label"]) for a in video["annotations"])]
    near = st.sampled_from(truth or [("ghost", (0.0, 1.0), classes[0])]).flatmap(
        lambda t: st.tuples(
            st.just(t[0]),
            st.tuples(st.sampled_from([-0.5, 0.0, 0.5]), st.sampled_from([-0.5, 0.0, 0.5])).map(
                lambda d: (t[1][0] + d[0], max(t[1][0] + d[0] + 0.5, t[1][1] + d[1]))
            ),
            st.sampled_from([t[2], *classes]),
        )
    )
    anywhere = st.tuples(st.sampled_from(names + ["other", "ghost"]), spans, st.sampled_from(classes))
    scores = st.sampled_from([0.1, 0.5, 0.9, 0.95])
    preds = draw(st.lists(st.tuples(near | anywhere, scores).map(lambda p: (*p[0], p[1])), max_size=12))
    detections = Detections.from_json(
        {"results": {}} if not preds else {"results": _group(preds)}, classes, "pred"
    )
    thresholds = draw(st.lists(st.sampled_from([0.1, 0.25, 0.3, 0.5, 0.7, 1.0]), min_size=1, max_size=3, unique=True))
    options = {
        "ambiguous_filter": draw(st.booleans()),
        "units": draw(st.sampled_from(["seconds", "snippets"])),
        "snippet_seconds": draw(st.sampled_from([0.5, 1.5])),
        "exclude_videos": draw(st.lists(st.sampled_from(names), max_size=1)),
    }
    return annotations, detections, thresholds, options


def _group(preds):
    results = {}
    for video, (s, e), label, score in preds:
        results.setdefault(video, []).append({"label": label, "score": score, "segment": [s, e]})
    return results


def _reference_map(annotations, detections, thresholds, options):
    excluded = set(options["exclude_videos"])
    videos = [v for v in annotations.subset("test") if v.name not in excluded]
    if not videos:
        return None
    unit = options["snippet_seconds"] if options["units"] == "snippets" else None
    convert = (lambda t: float(np.round(t / unit))) if unit else float
    ap = np.zeros((len(annotations.classes), len(thresholds)))
    for c, name in enumerate(annotations.classes):
        gts = [(v.name, convert(s), convert(e)) for v in videos for (s, e), l in zip(v.segments, v.labels) if l == name]
        preds = []
        for video, label, s, e, score in zip(detections.video, detections.label, detections.start, detections.end, detections.score):
            if label != c or video in excluded:
                continue
            regions = annotations.ambiguous.get(video, np.zeros((0, 2)))
            if options["ambiguous_filter"] and any(min(e, re) - max(s, rs) > 0 for rs, re in regions):
                continue
            preds.append((video, convert(s), convert(e), score))
        ap[c] = _reference_ap(gts, preds, thresholds)
    return ap


@FUZZ
@given(case=evaluation_cases())
def test_evaluate_detection_matches_reference(case):
    annotations, detections, thresholds, options = case
    expected = _reference_map(annotations, detections, thresholds, options)
    try:
        result = evaluate_detection(annotations, detections, "test", thresholds, **options)
    except WtalError as exc:
        assert expected is None, exc  # only "no videos to evaluate" is an input error here
        event("WtalError (no videos)")
        return
    event("mAP > 0" if result.ap.any() else "mAP = 0")
    assert expected is not None
    assert np.isfinite(result.ap).all() and ((result.ap >= 0) & (result.ap <= 1)).all()
    assert np.allclose(result.ap, expected, atol=1e-12), (result.ap, expected)
    summary = result.summary()
    assert all(math.isfinite(v) and 0 <= v <= 100 for v in summary.values())


# ---------------------------------------------------------------- readers over malformed arrays

WIDTH = 4
DTYPES = ["<f2", "<f4", ">f4", "<f8", "|i1", "<i4", "<i8", "|u1", "|b1", "<c8", "<U3", "|S3", "<M8[s]"]
shapes = st.one_of(
    hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
    st.integers(0, 6).map(lambda t: (t, WIDTH)),
    st.integers(1, 4).map(lambda t: (t, WIDTH)),
)
arrays = st.builds(lambda d, s: (d, s), st.sampled_from(DTYPES), shapes).flatmap(
    lambda ds: hnp.arrays(np.dtype(ds[0]), ds[1])
)


@pytest.fixture(scope="module")
def canonical_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("canonical")
    (root / "features").mkdir()
    database = {}
    for name, subset in (("t0", "validation"), ("t1", "validation"), ("e0", "test")):
        np.save(root / "features" / f"{name}.npy", np.ones((5, WIDTH), np.float32))
        database[name] = {"subset": subset, "duration": 2.5, "annotations": [{"segment": [0, 1], "label": "A"}]}
    (root / "annotations.json").write_text(json.dumps({"classes": ["A"], "database": database}))
    meta = {"snippet_seconds": 0.5, "feature_dim": WIDTH, "subsets": {"train": "validation", "test": "test"}}
    (root / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return root


def _accepted(array: np.ndarray) -> np.ndarray | None:
    """What the reader must return for ``array`` (None: it must raise WtalError)."""
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != WIDTH:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cast = array.astype(np.float32)
    return cast if np.isfinite(cast).all() else None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(array=arrays, truncate=st.none() | st.floats(0, 0.99), fortran=st.booleans(), video=st.sampled_from(["t1", "e0"]))
def test_canonical_reader_on_malformed_arrays(canonical_root, array, truncate, fortran, video):
    path = canonical_root / "features" / f"{video}.npy"
    try:
        np.save(path, np.asfortranarray(array) if fortran else array)
        if truncate is not None:
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * truncate)])
        expected = None if truncate is not None else _accepted(array)
        cfg = DataConfig(layout="canonical", root=str(canonical_root), cache=False)
        try:
            dataset = load_dataset(cfg)
            got = dataset.features(video)
        except WtalError as exc:
            assert expected is None, exc
            assert f"{video}.npy" in str(exc)
            event("WtalError")
            return
        event("accepted")
        assert expected is not None, f"accepted {array.dtype} {array.shape} truncate={truncate}"
        assert got.dtype == np.float32 and np.array_equal(got, expected)
    finally:
        np.save(path, np.ones((5, WIDTH), np.float32))


ANNOTATION_FILES = ("videoname", "subset", "classlist", "duration", "labels", "segments")
odd_arrays = st.one_of(
    arrays,
    st.lists(junk, max_size=3).map(lambda items: _objects(items)),
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5), max_size=5), max_size=3).map(
        lambda items: _objects(items)
    ),
)


def _objects(items):
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    return array


def _valid_wtalc(folder: Path):
    np.save(folder / "videoname.npy", np.array([b"v0", b"v1"]))
    np.save(folder / "subset.npy", np.array([b"validation", b"test"]))
    np.save(folder / "classlist.npy", np.array([b"A", b"B"]))
    np.save(folder / "duration.npy", np.array([[4.0], [4.0]]))
    np.save(folder / "labels.npy", _objects([[b"A"], [b"B", b"A"]]))
    np.save(folder / "segments.npy", _objects([[[0.0, 1.0]], [[1.0, 2.0], [2.5, 3.0]]]))


@settings(max_examples=100, deadline=None)
@given(replaced=st.dictionaries(st.sampled_from(ANNOTATION_FILES), odd_arrays, min_size=1, max_size=2))
@example(replaced={"duration": _objects([None, 10**400])})  # ints beyond float64 raised OverflowError
@example(replaced={"segments": _objects([10**400, None])})
def test_wtalc_annotations_on_malformed_arrays(replaced):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "Toy-Annotations"
        folder.mkdir()
        _valid_wtalc(folder)
        for key, array in replaced.items():
            np.save(folder / f"{key}.npy", array, allow_pickle=True)
        try:
            ann = read_wtalc_annotations(folder)
        except WtalError as exc:
            assert str(folder) in str(exc)
            event("WtalError")
            return
        event("parsed")
        for video in ann.videos.values():
            assert isinstance(video.name, str) and isinstance(video.subset, str)
            assert video.segments.dtype == np.float64 and video.segments.shape == (len(video.labels), 2)
            assert np.isfinite(video.segments).all() and (video.segments[:, 1] >= video.segments[:, 0]).all()
            assert set(video.labels) <= set(ann.classes)
