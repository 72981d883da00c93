"""Ground truth in memory: videos, their subsets, durations and labelled segments.

Every dataset layout is read into an :class:`Annotations`; the evaluator and
the synthetic generator speak the same type. Times are in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from wtal.errors import WtalError


@dataclass(frozen=True)
class Video:
    """One video's annotation.

    ``segments`` is ``[N, 2]`` float64 (start, end) in seconds and ``labels``
    holds the N class names; ``duration`` is in seconds. ``weak_labels`` are classes
    the video contains without temporal annotation (what weak supervision trains on);
    evaluation reads only ``segments`` and ``labels``.
    """

    name: str
    subset: str
    duration: float
    segments: np.ndarray
    labels: tuple[str, ...]
    weak_labels: tuple[str, ...] = ()

    @property
    def video_labels(self) -> tuple[str, ...]:
        """The distinct class names present in the video (annotated or weak), sorted."""
        return tuple(sorted(set(self.labels) | set(self.weak_labels)))


@dataclass
class Annotations:
    """A dataset's classes, videos and (optional) ambiguous segments.

    ``ambiguous`` maps a video name to ``[M, 2]`` seconds: regions the
    THUMOS14 annotators marked "Ambiguous", used only by the optional
    ambiguous-detection filter of the evaluator.
    """

    classes: tuple[str, ...]
    videos: dict[str, Video]
    ambiguous: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self):
        self.class_index = {name: i for i, name in enumerate(self.classes)}
        if len(self.class_index) != len(self.classes):
            raise WtalError(f"{self.source}: classes: duplicated class names")

    def subset(self, subset: str | Iterable[str]) -> list[Video]:
        """Videos whose subset is ``subset`` (or one of several), in file order."""
        wanted = {subset} if isinstance(subset, str) else set(subset)
        return [v for v in self.videos.values() if v.subset in wanted]

    def subsets(self) -> list[str]:
        return sorted({v.subset for v in self.videos.values()})

    def label_vector(self, video: Video) -> np.ndarray:
        """Multi-hot ``[C]`` float32 vector of the video's classes."""
        vector = np.zeros(len(self.classes), dtype=np.float32)
        for name in video.video_labels:
            vector[self.class_index[name]] = 1.0
        return vector

    def to_activitynet(self) -> dict[str, Any]:
        """ActivityNet-style ``{"database": {...}}`` (with an extra "classes" list)."""
        database = {}
        for video in self.videos.values():
            database[video.name] = {
                "subset": video.subset,
                "duration": float(video.duration),
                "annotations": [
                    {"segment": [float(s), float(e)], "label": label}
                    for (s, e), label in zip(video.segments.tolist(), video.labels)
                ],
            }
            if video.weak_labels:
                database[video.name]["labels"] = list(video.weak_labels)
            if video.name in self.ambiguous:
                database[video.name]["ambiguous"] = self.ambiguous[video.name].tolist()
        return {"classes": list(self.classes), "database": database}

    @classmethod
    def from_activitynet(
        cls, obj: Mapping[str, Any], source: str, classes: Iterable[str] | None = None
    ) -> "Annotations":
        """Parse an ActivityNet-style ``database`` (segments may be strings of seconds).

        Class order comes from ``classes``, else the file's "classes" list, else
        the sorted labels found. Raises :class:`WtalError` naming the video and
        field for any malformed entry.
        """
        if not isinstance(obj, Mapping) or not isinstance(obj.get("database"), Mapping):
            raise WtalError(f"{source}: expected an object with a 'database' mapping")
        videos: dict[str, Video] = {}
        ambiguous: dict[str, np.ndarray] = {}
        for name, entry in obj["database"].items():
            where = f"{source}: database[{name!r}]"
            if not isinstance(entry, Mapping):
                raise WtalError(f"{where}: expected an object")
            subset = entry.get("subset")
            if not isinstance(subset, str):
                raise WtalError(f"{where}.subset: expected a string, found {subset!r}")
            duration = _number(entry.get("duration", np.nan), f"{where}.duration")
            raw = entry.get("annotations", [])
            if not isinstance(raw, list):
                raise WtalError(f"{where}.annotations: expected a list")
            segments, labels = [], []
            for i, ann in enumerate(raw):
                field_name = f"{where}.annotations[{i}]"
                if not isinstance(ann, Mapping) or "segment" not in ann or "label" not in ann:
                    raise WtalError(f"{field_name}: expected {{'segment': [start, end], 'label': name}}")
                segments.append(_segment(ann["segment"], f"{field_name}.segment"))
                if not isinstance(ann["label"], str):
                    raise WtalError(f"{field_name}.label: expected a string, found {ann['label']!r}")
                labels.append(ann["label"])
            weak = entry.get("labels", [])
            if not isinstance(weak, list) or not all(isinstance(label, str) for label in weak):
                raise WtalError(f"{where}.labels: expected a list of class names (the video's classes), found {weak!r}")
            videos[name] = Video(
                name=name,
                subset=subset,
                duration=duration,
                segments=np.asarray(segments, dtype=np.float64).reshape(-1, 2),
                labels=tuple(labels),
                weak_labels=tuple(weak),
            )
            if "ambiguous" in entry:
                if not isinstance(entry["ambiguous"], list):
                    raise WtalError(f"{where}.ambiguous: expected a list of [start, end]")
                ambiguous[name] = np.asarray(
                    [_segment(s, f"{where}.ambiguous") for s in entry["ambiguous"]], dtype=np.float64
                ).reshape(-1, 2)
        found = sorted({label for v in videos.values() for label in v.video_labels})
        if classes is None:
            classes = obj.get("classes") or found
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise WtalError(f"{source}: classes: expected a list of class names, found {classes!r}")
        classes = tuple(classes)
        known = set(classes)
        for video in videos.values():
            for label in video.video_labels:
                if label not in known:
                    raise WtalError(
                        f"{source}: database[{video.name!r}]: label {label!r} is not one of the "
                        f"{len(classes)} dataset classes"
                    )
        return cls(classes=classes, videos=videos, ambiguous=ambiguous, source=source)


def _number(value: Any, field_name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise WtalError(f"{field_name}: expected a number, found {value!r}") from None
    return number


def _segment(value: Any, field_name: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise WtalError(f"{field_name}: expected [start, end], found {value!r}")
    start, end = (_number(v, field_name) for v in value)
    if not (np.isfinite(start) and np.isfinite(end)):
        raise WtalError(f"{field_name}: expected finite seconds, found {value!r}")
    if end < start:
        raise WtalError(f"{field_name}: end {end} precedes start {start}")
    return start, end
