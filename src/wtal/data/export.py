"""Write a dataset in the community layouts, so that other codebases can train on it.

Any dataset wtal reads (:func:`wtal.data.readers.load_dataset`, any layout) can be written as

``wtalc`` (:func:`export_wtalc`: the W-TALC bundle of W-TALC, CO2-Net, DELU)
    ``<out>/<name>-I3D-JOINTFeatures.npy``: a pickled object array with one ``[T, D]`` float32
    array per video, in ``videoname.npy`` order, and ``<out>/<name>-Annotations/`` with the
    files those codebases open: ``videoname.npy``, ``subset.npy`` and ``classlist.npy`` (byte
    strings, which their loaders ``decode``), ``labels.npy`` (per video, the label of each
    segment), ``labels_all.npy`` (per video, its distinct classes, sorted: what their batch
    loader turns into multi-hot labels), ``segments.npy`` (per video, ``[start, end]`` seconds),
    ``duration.npy`` (``[N, 1]`` seconds) and ``Ambiguous_test.txt`` (``video  start end``
    lines, two spaces after the name: CO2-Net's proposal filter splits each line on single
    spaces and reads fields 2 and 3; empty when the dataset has no ambiguous regions). Every
    video of every subset is written. The bundle holds no snippet length: those codebases
    assume 16 frames at 25 fps (0.64 s), and wtal reads it with ``data.snippet_seconds``.

``per_video`` (:func:`export_per_video`: the layout of BaS-Net and UM)
    ``<out>/features/{train,test}/{rgb,flow}/<video>.npy`` (float32 ``[T, D/2]``: the first
    half of the features is rgb, the second flow), ``split_train.txt`` / ``split_test.txt``
    (one name a line) and ``gt.json``: ``{"database": {video: {"subset": "train"|"test",
    "duration": seconds, "annotations": [{"segment": ["start", "end"], "label": name}]}},
    "classes": [...]}`` with the segment times as strings of seconds, as UM's ``gt.json`` has
    them (``repr`` of the float, so they read back exactly), the subset named after the
    split as UM's file names it, and the class list (which their code does not read) so
    that wtal reads the classes back in their order. Only the videos of the two subsets are
    written; ambiguous regions go into ``gt.json`` as an ``ambiguous`` list (the per_video
    family does not use them, and wtal's per_video reader ignores them).

Each file is written to a temporary file and renamed (:func:`wtal.io.atomic_path`); a folder
that exists and is not empty is refused unless ``overwrite`` (files are then replaced one by
one; nothing else in the folder is removed). Bad input raises :class:`WtalError` naming the
file and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from wtal.config import DataConfig
from wtal.data.readers import FeatureDataset, load_dataset
from wtal.errors import WtalError
from wtal.io import atomic_path, save_npy, write_text

# Names end up in file names and whitespace-separated text files.
_SAFE_NAME = re.compile(r"[^\s/\\]+")


def _dataset(source: FeatureDataset | DataConfig) -> FeatureDataset:
    if isinstance(source, FeatureDataset):
        return source
    if isinstance(source, DataConfig):
        return load_dataset(source)
    raise WtalError(
        f"export: expected a FeatureDataset or a DataConfig to read one, found {type(source).__name__}"
    )


def _prepare(out: str | Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WtalError(f"{out}: output exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise WtalError(f"{out}: output folder is not empty; pass overwrite=True to replace its files")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _check_name(name: str, where: str, field: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise WtalError(
            f"{where}: {field}: {name!r} cannot be written (expected a non-empty name without "
            "whitespace or path separators)"
        )


def _duration(dataset: FeatureDataset, video) -> float:
    """The video's duration in seconds; a missing one becomes ``T * snippet_seconds``, as the readers do."""
    if np.isfinite(video.duration):
        return float(video.duration)
    return dataset.num_snippets(video.name) * dataset.snippet_seconds


def _features(dataset: FeatureDataset, name: str, where: str) -> np.ndarray:
    array = np.asarray(dataset.features(name), dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0:
        raise WtalError(f"{where}: video {name!r}: features: expected a non-empty [T, D] array, found {array.shape}")
    return array


def _save_object_array(path: Path, items: list) -> None:
    """An object array with exactly one entry per item (never broadcast into more dimensions)."""
    array = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        array[i] = item
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=True)


def _save_bytes(path: Path, values: list[str]) -> None:
    encoded = [v.encode("utf-8") for v in values]
    width = max((len(v) for v in encoded), default=1)
    save_npy(path, np.array(encoded, dtype=f"S{max(width, 1)}"))


def export_wtalc(
    source: FeatureDataset | DataConfig,
    out: str | Path,
    name: str = "Thumos14reduced",
    overwrite: bool = False,
) -> Path:
    """Write ``source`` (a loaded dataset, or a :class:`DataConfig` to load) as the W-TALC bundle
    ``<out>/<name>-I3D-JOINTFeatures.npy`` + ``<out>/<name>-Annotations/`` (module docstring).

    Read it back with ``DataConfig(layout="wtalc", root=out, name=name, feature_dim=D,
    train_subset=..., test_subset=...)``, D the dataset's feature width. Returns ``out``.
    """
    dataset = _dataset(source)
    _check_name(name, str(out), "name (the bundle prefix)")
    out = _prepare(out, overwrite)
    folder = out / f"{name}-Annotations"
    bundle = out / f"{name}-I3D-JOINTFeatures.npy"
    annotations = dataset.annotations
    videos = list(annotations.videos.values())
    if not videos:
        raise WtalError(f"{dataset.source}: no videos to export")
    for video in videos:
        _check_name(video.name, str(folder / "videoname.npy"), "video name")
        _check_name(video.subset, str(folder / "subset.npy"), f"video {video.name!r}: subset")
    for label in annotations.classes:
        if not label or "\n" in label:
            raise WtalError(f"{folder / 'classlist.npy'}: class name {label!r} cannot be written")

    features = [_features(dataset, v.name, str(bundle)) for v in videos]
    _save_object_array(bundle, features)
    _save_bytes(folder / "videoname.npy", [v.name for v in videos])
    _save_bytes(folder / "subset.npy", [v.subset for v in videos])
    _save_bytes(folder / "classlist.npy", list(annotations.classes))
    _save_object_array(folder / "labels.npy", [list(v.labels) for v in videos])
    _save_object_array(folder / "labels_all.npy", [list(v.video_labels) for v in videos])
    _save_object_array(
        folder / "segments.npy",
        [[[float(s), float(e)] for s, e in np.asarray(v.segments, np.float64).reshape(-1, 2)] for v in videos],
    )
    save_npy(
        folder / "duration.npy",
        np.array([[_duration(dataset, v)] for v in videos], dtype=np.float64).reshape(len(videos), 1),
    )
    lines = []
    for video in videos:  # the videos' order, then each video's regions in stored order
        regions = np.asarray(annotations.ambiguous.get(video.name, np.zeros((0, 2))), np.float64).reshape(-1, 2)
        for start, end in regions:
            lines.append(f"{video.name}  {float(start)!r} {float(end)!r}\n")
    write_text(folder / "Ambiguous_test.txt", "".join(lines))
    return out


def export_per_video(
    source: FeatureDataset | DataConfig,
    out: str | Path,
    train_subset: str | None = None,
    test_subset: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the videos of ``train_subset`` and ``test_subset`` of ``source`` in the per-video
    layout of BaS-Net and UM (module docstring).

    The subsets default to the DataConfig's when ``source`` is one, else to DataConfig's
    defaults (``validation``, ``test``). Read it back with ``DataConfig(layout="per_video",
    root=out, feature_dim=D, train_subset=..., test_subset=...)``. Returns ``out``.
    """
    dataset = _dataset(source)
    defaults = source if isinstance(source, DataConfig) else DataConfig()
    subsets = {
        "train": train_subset if train_subset is not None else defaults.train_subset,
        "test": test_subset if test_subset is not None else defaults.test_subset,
    }
    if subsets["train"] == subsets["test"]:
        raise WtalError(f"export: train_subset and test_subset are both {subsets['train']!r}; expected two subsets")
    out_path = Path(out)
    width = dataset.feature_dim
    if width % 2:
        raise WtalError(
            f"{out_path / 'features'}: features: the per_video layout stores rgb and flow halves of equal "
            f"width; the dataset's width {width} is odd"
        )
    annotations = dataset.annotations
    split_videos = {}
    for split, subset in subsets.items():
        videos = annotations.subset(subset)
        if not videos:
            raise WtalError(
                f"{dataset.source}: {split}_subset: no videos in subset {subset!r}; expected one of "
                f"{annotations.subsets()}"
            )
        for video in videos:
            _check_name(video.name, str(out_path / f"split_{split}.txt"), "video name")
        split_videos[split] = videos
    out = _prepare(out, overwrite)

    half = width // 2
    database = {}
    for split, videos in split_videos.items():
        folder = out / "features" / split
        for video in videos:
            array = _features(dataset, video.name, str(folder))
            save_npy(folder / "rgb" / f"{video.name}.npy", np.ascontiguousarray(array[:, :half]))
            save_npy(folder / "flow" / f"{video.name}.npy", np.ascontiguousarray(array[:, half:]))
            entry = {
                "subset": split,
                "duration": _duration(dataset, video),
                "annotations": [
                    {"segment": [repr(float(s)), repr(float(e))], "label": label}
                    for (s, e), label in zip(np.asarray(video.segments, np.float64).reshape(-1, 2), video.labels)
                ],
            }
            if video.name in annotations.ambiguous:
                entry["ambiguous"] = np.asarray(annotations.ambiguous[video.name], np.float64).reshape(-1, 2).tolist()
            database[video.name] = entry
        write_text(out / f"split_{split}.txt", "".join(f"{v.name}\n" for v in videos))
    write_text(out / "gt.json", json.dumps({"database": database, "classes": list(annotations.classes)}) + "\n")
    return out
