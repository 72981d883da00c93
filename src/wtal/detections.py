"""Detections: the arrays that flow from ``localize`` to ``evaluate``.

Stored on disk as the ActivityNet results JSON,
``{"results": {video: [{"label": str, "score": float, "segment": [start, end]}]}}``
with times in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from wtal.errors import WtalError
from wtal.io import read_json, write_json


@dataclass
class Detections:
    """N detections as parallel arrays.

    ``video``: [N] object (str); ``label``: [N] int64 class index into
    ``classes``; ``start``/``end``/``score``: [N] float64 (seconds, seconds, score).
    """

    video: np.ndarray
    label: np.ndarray
    start: np.ndarray
    end: np.ndarray
    score: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.score)

    @classmethod
    def empty(cls, classes: Iterable[str]) -> "Detections":
        return cls.concatenate([], tuple(classes))

    @classmethod
    def concatenate(cls, parts: list["Detections"], classes: tuple[str, ...]) -> "Detections":
        if not parts:
            return cls(
                video=np.zeros(0, dtype=object),
                label=np.zeros(0, dtype=np.int64),
                start=np.zeros(0),
                end=np.zeros(0),
                score=np.zeros(0),
                classes=tuple(classes),
            )
        return cls(
            video=np.concatenate([p.video for p in parts]).astype(object),
            label=np.concatenate([p.label for p in parts]).astype(np.int64),
            start=np.concatenate([p.start for p in parts]).astype(np.float64),
            end=np.concatenate([p.end for p in parts]).astype(np.float64),
            score=np.concatenate([p.score for p in parts]).astype(np.float64),
            classes=tuple(classes),
        )

    def to_json(self) -> dict[str, Any]:
        results: dict[str, list] = {}
        for v, c, s, e, p in zip(self.video, self.label, self.start, self.end, self.score):
            results.setdefault(v, []).append(
                {"label": self.classes[c], "score": float(p), "segment": [float(s), float(e)]}
            )
        return {"results": results}

    def save(self, path) -> None:
        """Write the ActivityNet results JSON atomically."""
        write_json(path, self.to_json(), indent=None)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any], classes: Iterable[str], source: str) -> "Detections":
        """Parse and validate ActivityNet results JSON against ``classes``.

        Rejects, naming the video and entry: unknown labels, non-finite scores
        or times, a segment whose end precedes its start, zero-length segments.
        """
        classes = tuple(classes)
        index = {name: i for i, name in enumerate(classes)}
        if not isinstance(obj, Mapping) or not isinstance(obj.get("results"), Mapping):
            raise WtalError(f"{source}: expected an object with a 'results' mapping")
        video, label, start, end, score = [], [], [], [], []
        for name, entries in obj["results"].items():
            if not isinstance(entries, list):
                raise WtalError(f"{source}: results[{name!r}]: expected a list of detections")
            for i, entry in enumerate(entries):
                where = f"{source}: results[{name!r}][{i}]"
                if not isinstance(entry, Mapping):
                    raise WtalError(f"{where}: expected {{'label', 'score', 'segment'}}")
                for key in ("label", "score", "segment"):
                    if key not in entry:
                        raise WtalError(f"{where}: missing field '{key}'")
                if not isinstance(entry["label"], str) or entry["label"] not in index:
                    raise WtalError(
                        f"{where}.label: unknown label {entry['label']!r}; expected one of the "
                        f"{len(classes)} dataset classes"
                    )
                seg = entry["segment"]
                if not isinstance(seg, (list, tuple)) or len(seg) != 2:
                    raise WtalError(f"{where}.segment: expected [start, end], found {seg!r}")
                try:
                    s, e, p = float(seg[0]), float(seg[1]), float(entry["score"])
                except (TypeError, ValueError, OverflowError):
                    raise WtalError(f"{where}: segment and score must be numbers") from None
                if not np.isfinite(p):
                    raise WtalError(f"{where}.score: expected a finite number, found {entry['score']!r}")
                if not (np.isfinite(s) and np.isfinite(e)):
                    raise WtalError(f"{where}.segment: expected finite seconds, found {seg!r}")
                if e < s:
                    raise WtalError(f"{where}.segment: end {e} precedes start {s}")
                if e == s:
                    raise WtalError(f"{where}.segment: zero-length segment [{s}, {e}]")
                video.append(name)
                label.append(index[entry["label"]])
                start.append(s)
                end.append(e)
                score.append(p)
        return cls(
            video=np.asarray(video, dtype=object),
            label=np.asarray(label, dtype=np.int64),
            start=np.asarray(start, dtype=np.float64),
            end=np.asarray(end, dtype=np.float64),
            score=np.asarray(score, dtype=np.float64),
            classes=classes,
        )

    @classmethod
    def load(cls, path, classes: Iterable[str]) -> "Detections":
        return cls.from_json(read_json(path), classes, str(path))
