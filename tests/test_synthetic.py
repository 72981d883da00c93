"""The synthetic generator: real annotation structure, files, determinism, and the context phenomenon."""

import dataclasses
import json

import numpy as np
import pytest
import yaml

from wtal.data.annotations import Annotations, Video
from wtal.data.synthetic import (
    PRESETS,
    _Prototypes,
    build_annotations,
    configure,
    generate,
    num_snippets,
    related_groups,
)
from wtal.data.wtalc import bundled_thumos14
from wtal.errors import WtalError


def _load(folder):
    meta = yaml.safe_load((folder / "dataset.yaml").read_text())
    annotations = Annotations.from_activitynet(json.loads((folder / "annotations.json").read_text()), "test")
    features = {name: np.load(folder / "features" / f"{name}.npy") for name in annotations.videos}
    return meta, annotations, features


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_num_snippets_follows_i3d_extraction():
    assert num_snippets(0.64) == 1
    assert num_snippets(0.63) == 1  # never empty
    assert num_snippets(100.0) == 2500 // 16
    assert num_snippets(10.0, snippet_seconds=1.28) == 250 // 32


def test_tiny_keeps_the_real_thumos14_structure(tiny_dataset):
    meta, annotations, _ = _load(tiny_dataset)
    real = bundled_thumos14()
    assert annotations.classes == ("BaseballPitch", "Billiards", "HighJump", "LongJump")
    assert [len(annotations.subset(s)) for s in ("validation", "test")] == [32, 16]
    for video in annotations.videos.values():
        original = real.videos[video.name]  # a real THUMOS14 name
        assert video.subset == original.subset
        assert video.labels and set(video.labels) <= set(original.labels)
        assert 30 <= num_snippets(video.duration) <= 100
        assert np.all(video.segments[:, 0] >= 0) and np.all(video.segments[:, 1] <= video.duration)
        assert np.all(video.segments[:, 1] >= video.segments[:, 0])
    for name, regions in annotations.ambiguous.items():
        assert name in annotations.videos and np.all(regions[:, 1] <= annotations.videos[name].duration)


def test_tiny_files_shapes_and_values(tiny_dataset):
    meta, annotations, features = _load(tiny_dataset)
    assert meta["feature_dim"] == 128 and meta["snippet_seconds"] == pytest.approx(0.64)
    assert meta["modalities"] == {"rgb": [0, 64], "flow": [64, 128]}
    assert meta["subsets"] == {"train": "validation", "test": "test"}
    assert meta["classes"] == list(annotations.classes)
    assert (meta["annotations"], meta["features"]) == ("annotations.json", "features")
    assert meta["generator"]["preset"] == "tiny" and meta["generator"]["seed"] == 0
    assert meta["generator"]["knobs"]["feature_dim"] == 128
    assert set(features) == set(annotations.videos) == {p.stem for p in (tiny_dataset / "features").iterdir()}
    for name, x in features.items():
        assert x.dtype == np.float32 and x.shape == (num_snippets(annotations.videos[name].duration), 128)
        assert np.isfinite(x).all() and (x >= 0).all()
    values = np.concatenate(list(features.values()))
    assert 0.05 < (values == 0).mean() < 0.6  # post-ReLU: many small values, some zeros
    assert values.max() > 5 * values.mean()  # sparse large values


def test_same_seed_same_bytes_other_seed_other_features(tiny_dataset, tmp_path):
    again = generate("tiny", tmp_path / "again", seed=0)
    assert _files(again) == _files(tiny_dataset)
    other = generate("tiny", tmp_path / "other", seed=1)
    assert (other / "annotations.json").read_bytes() == (tiny_dataset / "annotations.json").read_bytes()
    name = next((other / "features").iterdir()).name
    assert not np.array_equal(np.load(other / "features" / name), np.load(tiny_dataset / "features" / name))


def test_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "mine.txt").write_text("precious")
    with pytest.raises(WtalError, match="--overwrite") as error:
        generate("tiny", out)
    assert str(out) in str(error.value)
    assert (out / "mine.txt").read_text() == "precious"
    generate("tiny", out, overwrite=True, max_train_videos=2, max_test_videos=1)
    assert not (out / "mine.txt").exists() and (out / "dataset.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folders left
    (tmp_path / "empty").mkdir()
    generate("tiny", tmp_path / "empty", max_train_videos=1, max_test_videos=1)


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from wtal.data import synthetic

    calls = []

    def fail_on_third(self, video):
        calls.append(video.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return np.zeros((num_snippets(video.duration), self.cfg.feature_dim), np.float32)

    monkeypatch.setattr(synthetic._Prototypes, "video", fail_on_third)
    with pytest.raises(KeyboardInterrupt):
        generate("tiny", tmp_path / "d")
    assert list(tmp_path.iterdir()) == []


def test_bad_knobs_raise_wtal_errors():
    with pytest.raises(WtalError, match="unknown"):
        configure("tiny", {"colour": 1})
    with pytest.raises(WtalError, match="preset"):
        configure("huge", {})
    with pytest.raises(WtalError, match="feature_dim"):
        configure("tiny", {"feature_dim": 7})
    with pytest.raises(WtalError, match="noise_ar"):
        configure("tiny", {"noise_ar": 1.0})
    with pytest.raises(WtalError, match="snippet_seconds"):
        configure("tiny", {"snippet_seconds": 0.5})
    with pytest.raises(WtalError, match="max_train_videos"):
        configure("tiny", {"max_train_videos": "many"})
    with pytest.raises(WtalError, match="classes"):
        build_annotations(configure("tiny", {"classes": ["Juggling"]}))
    assert configure("tiny", {"white_noise": 1}).white_noise == 1.0


def test_thumos14_preset_is_the_real_412_videos():
    annotations = build_annotations(PRESETS["thumos14"])
    real = bundled_thumos14()
    assert list(annotations.videos) == list(real.videos)
    assert [len(annotations.subset(s)) for s in ("validation", "test")] == [200, 212]
    assert sum(len(v.labels) for v in annotations.videos.values()) == 6365
    assert set(annotations.ambiguous) == set(real.ambiguous) & set(real.videos)
    assert PRESETS["thumos14"].feature_dim == 2048 and len(annotations.classes) == 20


def test_calibrated_thumos14_is_k3_plus_flow_only_camera_motion():
    # The calibration (reports/calibration/README.md) measured exactly these knobs; any other
    # change to the preset voids its table and every report made on it.
    k3, calibrated = PRESETS["thumos14_k3"], PRESETS["thumos14"]
    k3_knobs = (k3.key_fraction, k3.key_floor, k3.actionness_strength, k3.action_like_background)
    assert k3_knobs == ((0.2, 0.6), 0.2, 0.8, 0.9)
    assert k3.background_motion == 0.0
    changed = {
        f.name: getattr(calibrated, f.name)
        for f in dataclasses.fields(calibrated)
        if getattr(calibrated, f.name) != getattr(k3, f.name)
    }
    assert changed == {"background_motion": 0.8, "background_motion_flow_share": 1.0, "background_motion_overlap": 0.9}


def test_related_groups():
    group = related_groups(bundled_thumos14().classes)
    classes = bundled_thumos14().classes
    of = dict(zip(classes, group))
    assert of["HighJump"] == of["LongJump"] == of["PoleVault"] != of["Diving"] == of["CliffDiving"]
    assert np.bincount(group).min() >= 2  # every class has a relative


def _cos(x, prototype):
    return (x @ prototype) / (np.linalg.norm(x, axis=1) * np.linalg.norm(prototype) + 1e-9)


def test_context_sits_between_action_and_generic_background(tiny_dataset):
    """Class prototype = mean training action snippet; context = background within 10 snippets."""
    meta, annotations, features = _load(tiny_dataset)
    step = meta["snippet_seconds"]
    parts = {}  # (class, kind, subset) -> list of [n, D]
    for video in annotations.videos.values():
        x = features[video.name]
        centre = (np.arange(len(x)) + 0.5) * step
        inside_any = np.zeros(len(x), bool)
        near = {}
        for c, name in enumerate(annotations.classes):
            segments = video.segments[np.asarray(video.labels) == name]
            inside = ((centre[:, None] >= segments[:, 0]) & (centre[:, None] < segments[:, 1])).any(axis=1)
            gap = np.maximum(segments[:, 0] - centre[:, None], centre[:, None] - segments[:, 1])
            gap = gap.min(axis=1, initial=np.inf)
            inside_any |= inside
            parts.setdefault((c, "action", video.subset), []).append(x[inside])
            near[c] = gap <= 10 * step if len(segments) else None
        for c, mask in near.items():
            kind, mask = ("context", mask & ~inside_any) if mask is not None else ("generic", ~inside_any)
            parts.setdefault((c, kind, video.subset), []).append(x[mask])
    means = {"action": [], "context": [], "generic": []}
    for c in range(len(annotations.classes)):
        prototype = np.concatenate(parts[(c, "action", "validation")]).mean(axis=0)
        for kind in means:
            means[kind].append(_cos(np.concatenate(parts[(c, kind, "test")]), prototype).mean())
    action, context, generic = (np.mean(means[k]) for k in ("action", "context", "generic"))
    assert action > context + 0.02 and context > generic + 0.02, (action, context, generic)


def _inside_outside_norm_ratios(folder):
    """Mean snippet norm inside instances over outside, for the rgb and the flow half."""
    _, annotations, features = _load(folder)
    ratios = []
    for half in (slice(0, 64), slice(64, 128)):
        inside, outside = [], []
        for video in annotations.videos.values():
            x = features[video.name][:, half]
            centre = (np.arange(len(x)) + 0.5) * 0.64
            mask = ((centre[:, None] >= video.segments[:, 0]) & (centre[:, None] < video.segments[:, 1])).any(axis=1)
            inside.append(np.linalg.norm(x[mask], axis=1))
            outside.append(np.linalg.norm(x[~mask], axis=1))
        ratios.append(np.concatenate(inside).mean() / np.concatenate(outside).mean())
    return ratios


def test_flow_carries_the_action_and_rgb_the_context(tiny_dataset, tmp_path):
    rgb, flow = _inside_outside_norm_ratios(tiny_dataset)
    assert rgb > 1.05 and flow > 1.05  # actions add energy
    rgb, flow = _inside_outside_norm_ratios(
        generate("tiny", tmp_path / "action", context_strength=0.0, action_like_background=0.0)
    )
    assert flow > rgb + 0.03, (rgb, flow)
    rgb, flow = _inside_outside_norm_ratios(
        generate("tiny", tmp_path / "context", action_strength=0.0, action_like_background=0.0)
    )
    assert rgb > flow + 0.03, (rgb, flow)


def test_activitynet_preset_on_a_cut(tmp_path):
    out = generate("activitynet", tmp_path / "anet", max_train_videos=5, max_test_videos=3, feature_dim=256)
    meta, annotations, features = _load(out)
    assert meta["subsets"] == {"train": "training", "test": "validation"}
    assert [len(annotations.subset(s)) for s in ("training", "validation")] == [5, 3]
    assert len(annotations.classes) == 100 and meta["modalities"] == {"rgb": [0, 128], "flow": [128, 256]}
    for name, video in annotations.videos.items():
        assert video.labels and np.all(video.segments[:, 0] < video.duration)  # real ends may overrun a little
        assert features[name].shape == (num_snippets(video.duration), 256) and len(features[name]) <= 200
    full = build_annotations(PRESETS["activitynet"])
    assert [len(full.subset(s)) for s in ("training", "validation")] == [1000, 500]
    assert all(v.labels and num_snippets(v.duration) <= 200 for v in full.videos.values())


def test_key_moment_is_one_window_of_the_drawn_share(tmp_path):
    """The class's own action row: 1 on one window of each instance, key_floor elsewhere."""
    cfg = configure("tiny", {"key_fraction": [0.2, 0.4], "key_floor": 0.1})
    model = _Prototypes(cfg, ("a", "b"), seed=0)
    lengths = np.array([50.0, 80.0, 120.0])  # snippets
    phase = (np.arange(200)[:, None] + 0.5) / lengths  # [T, N]; inside where < 1
    key = model._key_moment(np.random.default_rng(0), phase, lengths)
    for n, length in enumerate(lengths):
        inside = key[phase[:, n] < 1.0, n]
        assert inside.min() == pytest.approx(0.1) and inside.max() == pytest.approx(1.0)
        share = (inside > 0.55).mean()
        assert 0.2 - 1.5 / length <= share <= 0.4 + 1.5 / length, share
        high = np.flatnonzero(inside > 0.55)
        assert np.all(np.diff(high) == 1)  # one window
    defaults = _Prototypes(configure("tiny", {}), ("a",), seed=0)
    assert np.all(defaults._key_moment(np.random.default_rng(0), phase, lengths) == 1.0)  # the whole instance
    with pytest.raises(WtalError, match="key_fraction"):
        configure("tiny", {"key_fraction": [0.5, 0.2]})


def test_actionness_is_one_row_inside_every_class_instance(tiny_dataset, tmp_path):
    """Adding actionness changes features only inside (the ramps of) instances, alike for every class."""
    _, annotations, base = _load(tiny_dataset)
    _, _, moved = _load(generate("tiny", tmp_path / "moving", actionness_strength=1.0))
    by_class = {}
    for video in annotations.videos.values():
        diff = moved[video.name] - base[video.name]
        centre = (np.arange(len(diff)) + 0.5) * 0.64
        gap = np.maximum(video.segments[:, 0] - centre[:, None], centre[:, None] - video.segments[:, 1]).min(axis=1)
        assert not diff[gap > 0.64].any()  # one snippet beyond the ramp: untouched
        inside = gap < -0.64
        by_class.setdefault(video.labels[0], []).append(diff[inside])
    directions = [np.concatenate(d).mean(axis=0) for d in by_class.values()]
    assert all(d.sum() > 0 for d in directions)
    assert min(_cos(np.stack(directions), directions[0])) > 0.9


def test_scene_changes_cut_the_background_into_shots():
    """Each shot mixes one or two generic scenes; without changes the mix is constant in time."""
    length = 2000
    constant = _Prototypes(configure("tiny", {"num_scenes": 8}), ("a",), seed=0)._scene_mix(
        np.random.default_rng(0), length
    )
    assert constant.shape == (length, 8) and np.all(constant == constant[0])
    cut = _Prototypes(configure("tiny", {"num_scenes": 8, "scene_changes": 5.0}), ("a",), seed=0)
    mix = cut._scene_mix(np.random.default_rng(0), length)
    np.testing.assert_allclose(mix.sum(axis=1), 1.0)
    assert np.all((mix > 0).sum(axis=1) <= 2)
    changes = np.any(mix[1:] != mix[:-1], axis=1).sum()
    assert 60 <= changes <= 140  # about 5 per 100 snippets
    with pytest.raises(WtalError, match="scene_changes"):
        configure("tiny", {"scene_changes": -1.0})


def test_boundary_jitter_moves_the_generated_action_not_the_annotation():
    """Each generated boundary moves by at most boundary_jitter x the instance's length."""
    only_actionness = {
        "actionness_strength": 4.0, "scene_strength": 0.0, "context_strength": 0.0, "action_strength": 0.0,
        "action_like_background": 0.0, "noise_strength": 0.0, "white_noise": 0.0, "boundary_snippets": 0.0,
        "offset": -1.0,
    }
    lengths = np.arange(8, 41, 4) * 0.64  # seconds, 9 instances 40 snippets apart
    starts = np.cumsum(np.concatenate([[10 * 0.64], lengths[:-1] + 40 * 0.64])) + 0.3
    segments = np.column_stack([starts, starts + lengths])
    video = Video("v", "validation", float(segments[-1, 1] + 30), segments, ("a",) * len(segments))
    moved = {}
    for jitter in (0.0, 0.3):
        cfg = configure("tiny", {**only_actionness, "boundary_jitter": jitter})
        active = _Prototypes(cfg, ("a",), seed=0).video(video).sum(axis=1) > 0  # [T] inside generated instances
        edges = np.flatnonzero(np.diff(active.astype(int)))  # last snippet before each change
        first, last = (edges[0::2] + 1.5) * 0.64, (edges[1::2] + 1.5) * 0.64 - 0.64  # seconds, snippet centres
        moved[jitter] = np.column_stack([first, last]) - segments
    assert np.abs(moved[0.0]).max() <= 0.64
    bound = 0.3 * (segments[:, 1] - segments[:, 0])[:, None] + 0.64
    assert np.all(np.abs(moved[0.3]) <= bound)
    assert np.abs(moved[0.3]).max() > 2 * 0.64  # some boundary moved by more than two snippets
    with pytest.raises(WtalError, match="boundary_jitter"):
        configure("tiny", {"boundary_jitter": 0.5})


def _one_instance_video(length_snippets=60, start=20, stop=44):
    return Video("v", "validation", length_snippets * 0.64, np.array([[start * 0.64, stop * 0.64]]), ("a",))


def test_key_filler_keeps_the_action_energy_even_but_not_its_class():
    """Outside the key window a per-instance row takes over the energy the class's row gives up."""
    isolated = {
        "scene_strength": 0.0, "context_strength": 0.0, "action_like_background": 0.0, "noise_strength": 0.0,
        "white_noise": 0.0, "offset": 0.0, "boundary_snippets": 0.0, "edge_share": 0.0, "action_fluctuation": 0.0,
        "instance_jitter": 0.0, "video_variation": 0.0, "key_fraction": [0.2, 0.3], "key_floor": 0.0,
    }
    video = _one_instance_video()
    plain = _Prototypes(configure("tiny", isolated), ("a",), seed=0)
    filled = _Prototypes(configure("tiny", {**isolated, "key_filler": 1.0}), ("a",), seed=0)
    without, within = plain.video(video), filled.video(video)
    inside = np.zeros(len(without), bool)
    inside[20:44] = True  # snippet centres inside the instance
    own = np.linalg.norm(without, axis=1)
    key = inside & (own > 0.999 * own.max())  # the window at full strength (its edges ramp)
    assert 0 < key.sum() < inside.sum()
    np.testing.assert_array_equal(within[~inside], without[~inside])  # nothing outside the instance
    np.testing.assert_allclose(within[key], without[key], atol=1e-6)  # the key window is the class's own
    gap = inside & ~key & (own < 1e-6)
    assert gap.any() and (np.linalg.norm(within[gap], axis=1) > 0.5 * own.max()).all()  # energy filled in
    unit = within[gap] / np.linalg.norm(within[gap], axis=1, keepdims=True)
    row = plain.action[0] * plain.action_weight
    assert (unit @ row).max() < 0.5 * np.linalg.norm(row)  # not the class's row
    with pytest.raises(WtalError, match="key_filler"):
        configure("tiny", {"key_filler": 1.5})


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_background_motion_moves_the_actionness_row_outside_instances_only():
    quiet = {"noise_strength": 0.0, "white_noise": 0.0, "boundary_snippets": 0.0, "actionness_strength": 1.0}
    video = _one_instance_video(200, 80, 110)
    base = _Prototypes(configure("tiny", quiet), ("a",), seed=0)
    moving = _Prototypes(configure("tiny", {**quiet, "background_motion": 1.0}), ("a",), seed=0)
    diff = moving.video(video) - base.video(video)
    assert not diff[81:110].any()  # the instance is as without it
    changed = np.flatnonzero(np.abs(diff).sum(axis=1) > 0)
    assert len(changed) > 40 and np.all((changed < 81) | (changed >= 110))
    direction = diff[changed].sum(axis=0)
    assert _cosine(direction, base.actionness) > 0.9
    camera = _Prototypes(configure("tiny", {**quiet, "background_motion": 1.0, "background_motion_flow_share": 1.0}),
                         ("a",), seed=0)
    seen = camera.video(video) - base.video(video)
    half = seen.shape[1] // 2
    assert not seen[:, :half].any() and seen[changed, half:].any()  # camera motion: the flow half alone
    with pytest.raises(WtalError, match="background_motion"):
        configure("tiny", {"background_motion": -0.1})
    with pytest.raises(WtalError, match="background_motion_flow_share"):
        configure("tiny", {"background_motion_flow_share": 1.2})


def test_background_motion_overlap_turns_the_motion_off_the_actionness_row():
    quiet = {"noise_strength": 0.0, "white_noise": 0.0, "boundary_snippets": 0.0, "actionness_strength": 1.0,
             "background_motion": 1.0}
    video = _one_instance_video(200, 80, 110)
    along = _Prototypes(configure("tiny", quiet), ("a",), seed=0)
    apart = _Prototypes(configure("tiny", {**quiet, "background_motion_overlap": 0.3}), ("a",), seed=0)
    diff = apart.video(video) - along.video(video)
    assert not diff[81:110].any()  # only the motion outside the instance moved
    assert np.abs(diff[:81]).sum() > 0
    assert _cosine(along.motion, along.actionness) == pytest.approx(1.0)
    assert _cosine(apart.motion, apart.actionness) < 0.6
    assert (apart.motion >= 0).all()
    for row in ("scenes", "context", "action", "shared", "actionness", "noise"):  # drawn as without the knob
        assert np.array_equal(getattr(apart, row), getattr(along, row))
    with pytest.raises(WtalError, match="background_motion_overlap"):
        configure("tiny", {"background_motion_overlap": 1.5})
