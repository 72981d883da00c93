"""Snippet features on disk, read into one :class:`FeatureDataset`.

Three layouts, read as the community ships them (``DataConfig.layout``):

``wtalc`` (W-TALC, CO2-Net, DELU)
    ``<root>/<name>-I3D-JOINTFeatures.npy``: an object array with one
    ``[T_i, D]`` array per video (rgb then flow, ``D = data.feature_dim``), in
    ``videoname.npy`` order;
    ``<root>/<name>-Annotations/`` (see :mod:`wtal.data.wtalc`). The object
    array goes through the restricted unpickler of :func:`wtal.io.load_npy`.
``per_video`` (BaS-Net, UM)
    ``<root>/features/{train,test}/{rgb,flow}/<video>.npy`` (each ``[T, D/2]``),
    ActivityNet-style ``gt.json`` (``data.annotations``, default
    ``<root>/gt.json``) and ``<root>/split_{train,test}.txt``. The split files
    decide membership: their videos are read from ``features/train`` and
    ``features/test`` and get the subsets ``data.train_subset`` and
    ``data.test_subset``; gt.json's own subsets and videos in neither split are
    ignored. gt.json has no durations: a missing duration becomes
    ``T * snippet_seconds``.
``canonical`` (ours)
    ``<root>/dataset.yaml``, ``annotations.json`` and ``features/<video>.npy``
    ``[T, D]`` float32 (read through a memory map). dataset.yaml describes its files, so
    its ``snippet_seconds``, ``feature_dim`` and ``modalities`` override the
    config. Its ``subsets: {train, test}`` are defaults: when
    ``data.train_subset`` and ``data.test_subset`` are not both subsets of
    annotations.json, the subsets dataset.yaml names are used instead, renamed
    to the config's names (the trainer and evaluator select by those names).

Checks, each a :class:`WtalError` naming the file or video: missing files,
train/test videos without features, non-numeric or non-2-D arrays, empty
videos and wrong widths when the dataset is loaded (from ``.npy`` headers, no
data read); NaN or infinite values when a video's features are first read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

import numpy as np

from wtal.config import DataConfig
from wtal.data.annotations import Annotations, Video
from wtal.data.wtalc import read_wtalc_annotations
from wtal.errors import WtalError
from wtal.io import load_npy, npy_header, read_json, read_yaml_mapping

LAYOUTS = ("canonical", "wtalc", "per_video")
MODALITIES = ("rgb", "flow", "both")


def _check_array(shape, dtype, width: int, where: str) -> int:
    """Validate a feature array's header; return its number of snippets T."""
    if dtype.kind not in "fiu":
        raise WtalError(f"{where}: features: expected a numeric array, found dtype {dtype}")
    if len(shape) != 2:
        raise WtalError(f"{where}: features: expected a 2-D [T, {width}] array, found shape {tuple(shape)}")
    if shape[0] == 0:
        raise WtalError(f"{where}: features: the video is empty (T = 0 snippets)")
    if shape[1] != width:
        raise WtalError(f"{where}: features: expected width {width}, found shape {tuple(shape)}")
    return int(shape[0])


class _ArrayStore:
    """Features already in memory: the W-TALC bundle, or arrays given by the caller."""

    def __init__(self, arrays: Mapping[str, np.ndarray], origin: str):
        self.arrays = arrays
        self.origin = origin

    def describe(self, name: str) -> str:
        return f"{self.origin}: video {name!r}"

    def header(self, name: str, width: int) -> int:
        if name not in self.arrays:
            raise WtalError(f"{self.describe(name)}: no features")
        array = self.arrays[name]
        return _check_array(array.shape, array.dtype, width, self.describe(name))

    def read(self, name: str, columns: slice) -> np.ndarray:
        return self.arrays[name][:, columns]


class _FileStore:
    """One ``<folder>/<video>.npy`` per video (canonical layout)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def describe(self, name: str) -> str:
        return f"{self.folder / (name + '.npy')} (video {name!r})"

    def header(self, name: str, width: int) -> int:
        path = self.folder / f"{name}.npy"
        if not path.is_file():
            raise WtalError(
                f"{path}: features of video {name!r} not found "
                "(the canonical layout expects features/<video>.npy for every annotated video)"
            )
        return _check_array(*npy_header(path), width, self.describe(name))

    def read(self, name: str, columns: slice) -> np.ndarray:
        # np.array copies the mapped rows into memory, so no file stays mapped. Values beyond
        # float32's range become inf here, which FeatureDataset.features reports.
        with np.errstate(over="ignore"):
            return np.array(load_npy(self.folder / f"{name}.npy", mmap=True)[:, columns], dtype=np.float32)


class _StreamStore:
    """BaS-Net files: ``features/<split>/{rgb,flow}/<video>.npy``, concatenated rgb then flow."""

    def __init__(self, features: Path, split_of: Mapping[str, str], stream_width: int):
        self.features = features
        self.split_of = split_of
        self.stream_width = stream_width

    def paths(self, name: str) -> tuple[Path, Path]:
        folder = self.features / self.split_of[name]
        return folder / "rgb" / f"{name}.npy", folder / "flow" / f"{name}.npy"

    def describe(self, name: str) -> str:
        rgb, flow = self.paths(name)
        return f"{rgb} and {flow} (video {name!r})"

    def header(self, name: str, width: int) -> int:
        lengths = []
        for path in self.paths(name):
            if not path.is_file():
                raise WtalError(
                    f"{path}: features of video {name!r} not found (the per_video layout expects "
                    "features/{train,test}/{rgb,flow}/<video>.npy for every video of split_{train,test}.txt)"
                )
            lengths.append(_check_array(*npy_header(path), self.stream_width, f"{path} (video {name!r})"))
        if lengths[0] != lengths[1]:
            rgb, flow = self.paths(name)
            raise WtalError(
                f"{rgb} ({lengths[0]} snippets) and {flow} ({lengths[1]} snippets): video {name!r}: "
                "rgb and flow features must have the same number of snippets"
            )
        return lengths[0]

    def read(self, name: str, columns: slice) -> np.ndarray:
        # Read only the stream(s) the columns touch (rgb only: the flow file is never opened).
        parts = []
        for k, path in enumerate(self.paths(name)):
            lo = max(columns.start - k * self.stream_width, 0)
            hi = min(columns.stop - k * self.stream_width, self.stream_width)
            if lo < hi:
                parts.append(load_npy(path, mmap=True)[:, lo:hi])
        return np.concatenate(parts, axis=1, dtype=np.float32)


class FeatureDataset:
    """Annotations plus per-video snippet features ``[T, D]`` float32.

    ``D = feature_dim`` after modality selection; one snippet lasts
    ``snippet_seconds`` seconds. Build it with :func:`load_dataset` (files) or
    :meth:`from_arrays` (memory); ``store`` is a layout's reader (``header``,
    ``read``, ``describe``) and ``columns`` the selected range of its ``width``
    stored columns.
    """

    def __init__(
        self,
        annotations: Annotations,
        store,
        width: int,
        columns: slice,
        snippet_seconds: float,
        source: str,
        cache: bool = True,
        lengths: Mapping[str, int] | None = None,
    ):
        self.annotations = annotations
        self.snippet_seconds = float(snippet_seconds)
        self.source = source
        self.feature_dim = columns.stop - columns.start
        self._store = store
        self._width = width
        self._columns = columns
        self._cache_on = cache
        self._cache: dict[str, np.ndarray] = {}
        self._lengths: dict[str, int] = dict(lengths or {})
        self._finite: set[str] = set()

    @classmethod
    def from_arrays(
        cls,
        annotations: Annotations,
        arrays: Mapping[str, np.ndarray],
        snippet_seconds: float,
        source: str = "<memory>",
    ) -> "FeatureDataset":
        """A dataset over in-memory ``{video: [T, D]}`` arrays (all modalities)."""
        arrays = {name: np.asarray(a) for name, a in arrays.items()}
        widths = {a.shape[-1] for a in arrays.values()}
        if len(widths) != 1:
            raise WtalError(f"{source}: features: expected one width for all videos, found {sorted(widths)}")
        (width,) = widths
        return cls(annotations, _ArrayStore(arrays, source), width, slice(0, width), snippet_seconds, source)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.annotations.classes

    @property
    def num_classes(self) -> int:
        return len(self.annotations.classes)

    def videos(self, subset: str) -> list[Video]:
        """The videos of ``subset`` (empty when there is none), in annotation order."""
        return self.annotations.subset(subset)

    def label_matrix(self, videos) -> np.ndarray:
        """Multi-hot ``[V, C]`` float32 labels of ``videos`` (Video objects)."""
        matrix = np.zeros((len(videos), self.num_classes), dtype=np.float32)
        for row, video in zip(matrix, videos):
            row[:] = self.annotations.label_vector(video)
        return matrix

    def num_snippets(self, name: str) -> int:
        """T of a video, from the file header (no features read)."""
        if name not in self._lengths:
            self._require(name)
            self._lengths[name] = self._store.header(name, self._width)
        return self._lengths[name]

    def features(self, name: str) -> np.ndarray:
        """``[T, feature_dim]`` float32 of a video (read-only; cached when ``cache``)."""
        if name in self._cache:
            return self._cache[name]
        self.num_snippets(name)
        array = np.ascontiguousarray(self._store.read(name, self._columns), dtype=np.float32)
        if name not in self._finite:
            bad = array.size - np.count_nonzero(np.isfinite(array))
            if bad:
                raise WtalError(
                    f"{self._store.describe(name)}: features: {bad} NaN or infinite values "
                    f"(of {array.size}; values beyond float32's range count as infinite); "
                    "regenerate or drop the video (data.exclude_videos)"
                )
            self._finite.add(name)
        array.flags.writeable = False
        if self._cache_on:
            self._cache[name] = array
        return array

    def _require(self, name: str) -> None:
        if name not in self.annotations.videos:
            raise WtalError(f"{self.source}: video {name!r} is not in the dataset (excluded, or not annotated)")


def load_dataset(cfg: DataConfig) -> FeatureDataset:
    """Read ``cfg.root`` in ``cfg.layout``; see the module docstring for the layouts.

    Applies ``cfg.exclude_videos`` (names absent from the dataset are ignored,
    so one list serves every layout), then ``cfg.classes`` (restrict and order
    the classes; a video whose labels all fall outside is dropped, others lose
    those labels), then ``cfg.modality``.
    """
    if cfg.layout not in LAYOUTS:
        raise WtalError(f"data.layout: expected one of {list(LAYOUTS)}, found {cfg.layout!r}")
    if cfg.modality not in MODALITIES:
        raise WtalError(f"data.modality: expected one of {list(MODALITIES)}, found {cfg.modality!r}")
    if not cfg.root:
        raise WtalError(f"data.root: not set (the folder of the {cfg.layout} dataset)")
    root = Path(cfg.root)
    if not root.is_dir():
        raise WtalError(f"{root}: data.root: folder not found")
    loader = {"canonical": _load_canonical, "wtalc": _load_wtalc, "per_video": _load_per_video}[cfg.layout]
    annotations, store, width, ranges, snippet_seconds = loader(cfg, root)
    annotations = _restrict(annotations, cfg)

    if cfg.modality != "both" and cfg.modality not in ranges:
        raise WtalError(f"{root}: data.modality: {cfg.modality!r} is not stored; available: {sorted(ranges)} or 'both'")
    lo, hi = (0, width) if cfg.modality == "both" else ranges[cfg.modality]
    dataset = FeatureDataset(annotations, store, width, slice(lo, hi), snippet_seconds, str(root), cache=cfg.cache)
    # Cheap checks now for the videos a run will read; other subsets are checked when read.
    used = annotations.subset([cfg.train_subset, cfg.test_subset])
    for video in used:
        dataset.num_snippets(video.name)
        if not np.isfinite(video.duration):
            annotations.videos[video.name] = dataclasses.replace(
                video, duration=dataset.num_snippets(video.name) * dataset.snippet_seconds
            )
    return dataset


def _restrict(annotations: Annotations, cfg: DataConfig) -> Annotations:
    """Apply ``cfg.exclude_videos`` and ``cfg.classes``."""
    excluded = set(cfg.exclude_videos)
    videos = {name: v for name, v in annotations.videos.items() if name not in excluded}
    classes = annotations.classes
    if cfg.classes:
        unknown = [c for c in cfg.classes if c not in annotations.class_index]
        if unknown:
            raise WtalError(
                f"data.classes: {unknown} not among the classes of {annotations.source} "
                f"({', '.join(annotations.classes)})"
            )
        if len(set(cfg.classes)) != len(cfg.classes):
            raise WtalError(f"data.classes: duplicated class names in {cfg.classes}")
        keep = set(cfg.classes)
        restricted = {}
        for name, video in videos.items():
            chosen = [i for i, label in enumerate(video.labels) if label in keep]
            weak = tuple(label for label in video.weak_labels if label in keep)
            if video.video_labels and not (chosen or weak):
                continue
            restricted[name] = dataclasses.replace(
                video, segments=video.segments[chosen], labels=tuple(video.labels[i] for i in chosen), weak_labels=weak
            )
        videos, classes = restricted, tuple(cfg.classes)
    ambiguous = {name: a for name, a in annotations.ambiguous.items() if name in videos}
    return Annotations(classes=classes, videos=videos, ambiguous=ambiguous, source=annotations.source)


def _halves(width: int) -> dict[str, tuple[int, int]]:
    return {"rgb": (0, width // 2), "flow": (width // 2, width)}


def _load_wtalc(cfg: DataConfig, root: Path):
    bundle = root / f"{cfg.name}-I3D-JOINTFeatures.npy"
    folder = root / f"{cfg.name}-Annotations"
    for path in (bundle, folder):
        if not path.exists():
            raise WtalError(
                f"{path}: not found (the wtalc layout expects <root>/<name>-I3D-JOINTFeatures.npy and "
                f"<root>/<name>-Annotations/ with name = data.name = {cfg.name!r})"
            )
    annotations = read_wtalc_annotations(folder)
    arrays = load_npy(bundle)
    names = list(annotations.videos)
    if arrays.ndim == 0 or len(arrays) != len(names):
        raise WtalError(
            f"{bundle}: holds {len(arrays) if arrays.ndim else 0} feature arrays, expected {len(names)} "
            f"(one per video of {folder / 'videoname.npy'}, in the same order)"
        )
    store = _ArrayStore({name: np.asarray(a) for name, a in zip(names, arrays)}, str(bundle))
    return annotations, store, cfg.feature_dim, _halves(cfg.feature_dim), cfg.snippet_seconds


def _read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise WtalError(f"{path}: not found (the per_video layout expects split_train.txt and split_test.txt in root)")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _load_per_video(cfg: DataConfig, root: Path):
    if cfg.feature_dim % 2:
        raise WtalError(
            f"data.feature_dim: the per_video layout concatenates rgb and flow of equal width, "
            f"so it must be even; found {cfg.feature_dim}"
        )
    gt_path = Path(cfg.annotations) if cfg.annotations else root / "gt.json"
    features = root / "features"
    if not features.is_dir():
        raise WtalError(
            f"{features}: folder not found (the per_video layout expects features/{{train,test}}/{{rgb,flow}}/)"
        )
    parsed = Annotations.from_activitynet(read_json(gt_path), str(gt_path))
    split_of: dict[str, str] = {}
    videos: dict[str, Video] = {}
    for split, subset in (("train", cfg.train_subset), ("test", cfg.test_subset)):
        split_file = root / f"split_{split}.txt"
        for name in _read_split(split_file):
            if name in split_of:
                raise WtalError(f"{split_file}: video {name!r} is also listed in split_{split_of[name]}.txt")
            if name not in parsed.videos:
                raise WtalError(f"{split_file}: video {name!r} has no entry in {gt_path}")
            split_of[name] = split
            videos[name] = dataclasses.replace(parsed.videos[name], subset=subset)
    annotations = Annotations(classes=parsed.classes, videos=videos, source=str(gt_path))
    store = _StreamStore(features, split_of, cfg.feature_dim // 2)
    return annotations, store, cfg.feature_dim, _halves(cfg.feature_dim), cfg.snippet_seconds


def _load_canonical(cfg: DataConfig, root: Path):
    meta_path = root / "dataset.yaml"
    if not meta_path.is_file():
        raise WtalError(f"{meta_path}: not found (the canonical layout expects dataset.yaml in data.root)")
    meta = read_yaml_mapping(meta_path, "name, snippet_seconds, feature_dim, ...")

    snippet_seconds = meta.get("snippet_seconds", cfg.snippet_seconds)
    if isinstance(snippet_seconds, bool) or not isinstance(snippet_seconds, (int, float)) or not snippet_seconds > 0:
        raise WtalError(f"{meta_path}: snippet_seconds: expected a positive number, found {snippet_seconds!r}")
    width = meta.get("feature_dim", cfg.feature_dim)
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise WtalError(f"{meta_path}: feature_dim: expected a positive integer, found {width!r}")
    modalities = meta.get("modalities")
    if modalities is not None and not isinstance(modalities, dict):
        raise WtalError(f"{meta_path}: modalities: expected {{rgb: [start, end], flow: [start, end]}}")
    ranges = _halves(width) if modalities is None else {}
    for key, value in (modalities or {}).items():
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int for v in value)
        if not ok or not 0 <= value[0] < value[1] <= width:
            raise WtalError(
                f"{meta_path}: modalities.{key}: expected [start, end] columns within [0, {width}], found {value!r}"
            )
        ranges[key] = (value[0], value[1])
    classes = meta.get("classes")
    if classes is not None and (not isinstance(classes, list) or not all(isinstance(c, str) for c in classes)):
        raise WtalError(f"{meta_path}: classes: expected a list of class names")
    files = {"annotations": meta.get("annotations", "annotations.json"), "features": meta.get("features", "features")}
    for key, value in files.items():
        if not isinstance(value, str):
            raise WtalError(f"{meta_path}: {key}: expected a path relative to {root}, found {value!r}")
    features = root / files["features"]
    if not features.is_dir():
        raise WtalError(f"{features}: folder not found (named by {meta_path}: features)")
    ann_path = root / files["annotations"]
    annotations = Annotations.from_activitynet(read_json(ann_path), str(ann_path), classes)
    subsets = meta.get("subsets") or {}
    if not isinstance(subsets, dict):
        raise WtalError(f"{meta_path}: subsets: expected {{train: <subset>, test: <subset>}}, found {subsets!r}")
    annotations = _default_subsets(annotations, cfg, subsets, meta_path)
    return annotations, _FileStore(features), width, ranges, float(snippet_seconds)


def _default_subsets(annotations: Annotations, cfg: DataConfig, subsets: dict, meta_path: Path) -> Annotations:
    """Rename dataset.yaml's train/test subsets to the config's names when those are not both stored."""
    present = set(annotations.subsets())
    if {cfg.train_subset, cfg.test_subset} <= present:
        return annotations
    renames = {
        old: new
        for old, new in ((subsets.get("train"), cfg.train_subset), (subsets.get("test"), cfg.test_subset))
        if old in present
    }
    clash = (present - set(renames)) & set(renames.values())
    if clash:
        raise WtalError(
            f"{meta_path}: subsets: cannot use them as defaults, annotations.json already has subset(s) "
            f"{sorted(clash)}; set data.train_subset and data.test_subset to subsets of {sorted(present)}"
        )
    videos = {
        name: dataclasses.replace(v, subset=renames.get(v.subset, v.subset)) for name, v in annotations.videos.items()
    }
    return Annotations(annotations.classes, videos, annotations.ambiguous, annotations.source)
