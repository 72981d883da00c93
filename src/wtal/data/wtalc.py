"""The W-TALC annotation bundle (W-TALC, CO2-Net, DELU, DDG-Net).

A folder ``<Name>-Annotations/`` with ``videoname.npy``, ``subset.npy``,
``classlist.npy``, ``duration.npy``, ``labels.npy``, ``segments.npy`` and,
for THUMOS14, ``Ambiguous_test.txt``. Strings may be bytes or str; object
arrays are read with the restricted unpickler of :func:`wtal.io.load_npy`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wtal.data.annotations import Annotations, Video
from wtal.errors import WtalError
from wtal.io import load_npy

RESOURCES = Path(__file__).parent / "resources"


def _text(value) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    return str(value)


def read_ambiguous(path: Path) -> dict[str, np.ndarray]:
    """``video start end`` lines (any whitespace) -> {video: [M, 2] seconds}."""
    regions: dict[str, list] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise WtalError(f"{path}: line {number}: expected 'video start end', found {line!r}")
        try:
            start, end = float(parts[1]), float(parts[2])
        except ValueError:
            raise WtalError(f"{path}: line {number}: start and end must be seconds, found {line!r}") from None
        regions.setdefault(parts[0], []).append((start, end))
    return {name: np.asarray(v, dtype=np.float64).reshape(-1, 2) for name, v in regions.items()}


def read_wtalc_annotations(folder: str | Path) -> Annotations:
    """Read a W-TALC ``<Name>-Annotations`` folder into :class:`Annotations`.

    Video order is the file order (the JOINT feature array is aligned to it).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise WtalError(f"{folder}: annotation folder not found")
    arrays = {
        key: load_npy(folder / f"{key}.npy")
        for key in ("videoname", "subset", "classlist", "duration", "labels", "segments")
    }
    for key, array in arrays.items():
        if array.ndim == 0:
            raise WtalError(f"{folder / (key + '.npy')}: expected one entry per video, found a 0-d array")
    count = len(arrays["videoname"])
    if count == 0:
        raise WtalError(f"{folder / 'videoname.npy'}: no videos")
    for key in ("subset", "duration", "labels", "segments"):
        if len(arrays[key]) != count:
            raise WtalError(
                f"{folder / (key + '.npy')}: has {len(arrays[key])} entries, expected {count} "
                f"(one per video in videoname.npy)"
            )
    classes = tuple(_text(c) for c in arrays["classlist"])
    try:
        durations = np.asarray(arrays["duration"], dtype=np.float64).reshape(count, -1)[:, 0]
    except (TypeError, ValueError, IndexError, OverflowError):
        raise WtalError(f"{folder / 'duration.npy'}: expected one number (seconds) per video") from None
    videos: dict[str, Video] = {}
    for i in range(count):
        name = _text(arrays["videoname"][i])
        try:
            labels = tuple(_text(label) for label in arrays["labels"][i])
        except TypeError:
            raise WtalError(
                f"{folder / 'labels.npy'}: video {name!r}: expected a list of class names, found {arrays['labels'][i]!r}"
            ) from None
        try:
            segments = np.asarray(arrays["segments"][i], dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError, OverflowError):
            raise WtalError(
                f"{folder / 'segments.npy'}: video {name!r}: expected a list of [start, end] seconds, "
                f"found {arrays['segments'][i]!r}"
            ) from None
        if not np.isfinite(segments).all() or (segments[:, 1] < segments[:, 0]).any():
            raise WtalError(
                f"{folder / 'segments.npy'}: video {name!r}: expected finite [start, end] seconds with "
                f"start <= end, found {segments.tolist()}"
            )
        if len(segments) != len(labels):
            raise WtalError(
                f"{folder}: video {name!r}: {len(segments)} segments but {len(labels)} labels "
                "(segments.npy and labels.npy must align)"
            )
        if name in videos:
            raise WtalError(f"{folder / 'videoname.npy'}: video {name!r} appears twice")
        videos[name] = Video(
            name=name,
            subset=_text(arrays["subset"][i]),
            duration=float(durations[i]),
            segments=segments,
            labels=labels,
        )
    ambiguous_file = folder / "Ambiguous_test.txt"
    ambiguous = read_ambiguous(ambiguous_file) if ambiguous_file.is_file() else {}
    annotations = Annotations(classes=classes, videos=videos, ambiguous=ambiguous, source=str(folder))
    known = set(classes)
    for video in videos.values():
        unknown = sorted(set(video.labels) - known)
        if unknown:
            raise WtalError(f"{folder / 'labels.npy'}: video {video.name!r}: labels {unknown} not in classlist.npy")
    return annotations


def bundled_thumos14() -> Annotations:
    """THUMOS14's real annotations (W-TALC 412-video layout), shipped with the package."""
    return read_wtalc_annotations(RESOURCES / "thumos14")
