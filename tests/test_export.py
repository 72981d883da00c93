"""Writers for the community layouts (wtal.data.export): what they write reads back exactly."""

import json

import numpy as np
import pytest

from wtal.config import DataConfig
from wtal.data.annotations import Annotations, Video
from wtal.data.export import export_per_video, export_wtalc
from wtal.data.readers import FeatureDataset, load_dataset
from wtal.errors import WtalError
from wtal.io import load_npy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from wtal.data.synthetic import generate

    root = generate("tiny", tmp_path_factory.mktemp("tiny_export") / "data", seed=0)
    return load_dataset(DataConfig(layout="canonical", root=str(root)))


def _same(source: FeatureDataset, copy: FeatureDataset, subsets) -> None:
    assert copy.classes == source.classes
    wanted = [v for v in source.annotations.videos.values() if v.subset in subsets]
    got = [v for v in copy.annotations.videos.values() if v.subset in subsets]
    assert [v.name for v in got] == [v.name for v in wanted]
    for a, b in zip(wanted, got):
        assert (b.subset, b.labels, b.duration) == (a.subset, a.labels, a.duration)
        assert b.segments.dtype == np.float64 and np.array_equal(b.segments, a.segments)
        assert copy.num_snippets(b.name) == source.num_snippets(a.name)
        assert np.array_equal(copy.features(b.name), source.features(a.name))  # bit-exact float32


def test_wtalc_round_trip(tiny, tmp_path):
    out = export_wtalc(tiny, tmp_path / "bundle", name="Tiny")
    cfg = DataConfig(
        layout="wtalc", root=str(out), name="Tiny", feature_dim=tiny.feature_dim, snippet_seconds=tiny.snippet_seconds
    )
    copy = load_dataset(cfg)
    assert sorted(copy.annotations.subsets()) == sorted(tiny.annotations.subsets())
    _same(tiny, copy, set(tiny.annotations.subsets()))
    assert tiny.annotations.ambiguous  # the preset has ambiguous regions to carry over
    assert copy.annotations.ambiguous.keys() == tiny.annotations.ambiguous.keys()
    for name, regions in tiny.annotations.ambiguous.items():
        assert np.array_equal(copy.annotations.ambiguous[name], regions)
    assert not list(out.rglob(".*.tmp"))


def test_wtalc_files_as_the_family_reads_them(tiny, tmp_path):
    out = export_wtalc(tiny, tmp_path / "bundle", name="Tiny")
    folder = out / "Tiny-Annotations"
    names = list(tiny.annotations.videos)
    for key in ("videoname", "subset", "classlist"):
        assert np.load(folder / f"{key}.npy").dtype.kind == "S"  # byte strings, decoded by their loaders
    assert [n.decode() for n in np.load(folder / "videoname.npy")] == names
    assert np.load(folder / "duration.npy").shape == (len(names), 1)
    labels_all = np.load(folder / "labels_all.npy", allow_pickle=True)
    for video, distinct in zip(tiny.annotations.videos.values(), labels_all):
        assert distinct == sorted(set(video.labels))
    bundle = load_npy(out / "Tiny-I3D-JOINTFeatures.npy")  # the restricted unpickler accepts it
    assert bundle.dtype == object and bundle.shape == (len(names),)
    for line in (folder / "Ambiguous_test.txt").read_text().splitlines():
        fields = line.split(" ")  # "video  start end": split on single spaces, times at 2 and 3
        assert len(fields) == 4 and fields[1] == "" and float(fields[2]) <= float(fields[3])


def test_per_video_round_trip(tiny, tmp_path):
    out = export_per_video(tiny, tmp_path / "pv", train_subset="validation", test_subset="test")
    cfg = DataConfig(
        layout="per_video",
        root=str(out),
        feature_dim=tiny.feature_dim,
        snippet_seconds=tiny.snippet_seconds,
        train_subset="validation",
        test_subset="test",
    )
    copy = load_dataset(cfg)
    assert sorted(copy.annotations.subsets()) == ["test", "validation"]
    _same(tiny, copy, {"validation", "test"})
    gt = json.loads((out / "gt.json").read_text())
    for split, subset in (("train", "validation"), ("test", "test")):
        names = (out / f"split_{split}.txt").read_text().split()
        assert names == [v.name for v in tiny.videos(subset)]
        for name in names:
            assert gt["database"][name]["subset"] == split
            rgb = np.load(out / "features" / split / "rgb" / f"{name}.npy")
            assert rgb.dtype == np.float32 and rgb.shape[1] == tiny.feature_dim // 2
            for ann in gt["database"][name]["annotations"]:
                assert all(isinstance(t, str) for t in ann["segment"])  # seconds as strings, as UM's gt.json
    assert not list(out.rglob(".*.tmp"))


def test_per_video_from_a_data_config(tiny, tmp_path):
    cfg = DataConfig(layout="canonical", root=tiny.source)
    out = export_per_video(cfg, tmp_path / "pv")
    assert (out / "split_train.txt").read_text().split() == [v.name for v in tiny.videos("validation")]


def test_refuses_a_non_empty_folder_unless_overwrite(tiny, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(WtalError, match="not empty"):
        export_wtalc(tiny, out)
    with pytest.raises(WtalError, match="not empty"):
        export_per_video(tiny, out)
    export_wtalc(tiny, out, overwrite=True)
    export_per_video(tiny, out, overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    export_wtalc(tiny, tmp_path / "empty_is_fine")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(WtalError, match="not a folder"):
        export_wtalc(tiny, tmp_path / "a_file")


def _toy(names, subsets, width=6):
    rng = np.random.default_rng(0)
    videos = {
        n: Video(n, s, 3.2, np.array([[0.0, 1.0]]), ("a",)) for n, s in zip(names, subsets)
    }
    annotations = Annotations(classes=("a",), videos=videos)
    return FeatureDataset.from_arrays(
        annotations, {n: rng.normal(size=(5, width)).astype(np.float32) for n in names}, 0.64, "toy"
    )


def test_bad_input_names_the_file_and_field(tmp_path):
    with pytest.raises(WtalError, match=r"videoname.npy: video name: 'bad name'"):
        export_wtalc(_toy(["ok", "bad name"], ["validation", "test"]), tmp_path / "a")
    with pytest.raises(WtalError, match=r"split_train.txt: video name: 'x/y'"):
        export_per_video(_toy(["x/y", "t"], ["validation", "test"]), tmp_path / "b")
    with pytest.raises(WtalError, match=r"features: .*width 5 is odd"):
        export_per_video(_toy(["v", "t"], ["validation", "test"], width=5), tmp_path / "c")
    with pytest.raises(WtalError, match=r"test_subset: no videos in subset 'test'"):
        export_per_video(_toy(["v", "w"], ["validation", "validation"]), tmp_path / "d")
    with pytest.raises(WtalError, match="name \\(the bundle prefix\\)"):
        export_wtalc(_toy(["v", "t"], ["validation", "test"]), tmp_path / "e", name="a/b")
    with pytest.raises(WtalError, match="expected a FeatureDataset or a DataConfig"):
        export_wtalc("not a dataset", tmp_path / "f")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_wtal_export_writes_a_bundle_wtal_reads_back(tiny_dataset, tmp_path, capsys):
    from wtal.cli import main

    out = tmp_path / "bundle"
    assert main(["export", "--layout", "wtalc", "--out", str(out), "--name", "Toy", f"data.root={tiny_dataset}"]) == 0
    assert "wtalc layout" in capsys.readouterr().out
    original = load_dataset(DataConfig(root=str(tiny_dataset), feature_dim=128))
    back = load_dataset(DataConfig(layout="wtalc", root=str(out), name="Toy", feature_dim=128))
    assert list(back.annotations.videos) == list(original.annotations.videos)
    assert main(["export", "--layout", "per_video", "--out", str(out), f"data.root={tiny_dataset}"]) == 2
    assert "not empty" in capsys.readouterr().err
