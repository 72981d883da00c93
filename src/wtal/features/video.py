"""Video decoding and frame preparation for I3D features (PyAV).

The recipe of the community's THUMOS14 / ActivityNet I3D RGB features:

* **25 fps, nearest frame by timestamp.** Output frame ``k`` is shown at
  ``k / 25`` s (times relative to the first decoded frame); it is the decoded
  frame whose timestamp is nearest to that time (ties go to the earlier frame).
  The video lasts ``last_timestamp + 1 / source_fps`` seconds and yields every
  output time before that: ``ceil(duration * 25)`` frames (132 frames at 25 fps
  stay 132 frames; 40 frames at 30 fps become 34).
* **Resize the shorter side to 256 (bilinear), centre crop 224x224.** I3D was
  trained on 224x224 crops of 256-pixel frames; WTAL features are computed the same
  way, so a model trained on them sees the statistics it expects.
* **RGB scaled to [-1, 1]** (``x / 127.5 - 1``), as the Kinetics I3D expects.
* **Non-overlapping 16-frame snippets** (0.64 s each); trailing frames that do not
  fill a snippet are dropped, so ``T = frames_at_25fps // 16``.

Frames are streamed: memory holds one snippet at a time, not the whole video.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from wtal.errors import WtalError

FPS = 25.0
SNIPPET_FRAMES = 16
SHORT_SIDE = 256
CROP = 224


def _av():
    try:
        import av
    except ImportError:
        raise WtalError("video decoding needs PyAV: pip install 'wtal[video]' (or pip install av)") from None
    return av


@dataclass
class VideoInfo:
    """What the decoder found, filled in while frames are read."""

    path: str
    source_fps: float = 0.0
    source_frames: int = 0  # decoded frames
    width: int = 0
    height: int = 0
    frames: int = 0  # frames at the target fps
    fps: float = FPS

    @property
    def duration(self) -> float:
        """Seconds covered by the decoded frames."""
        return self.source_frames / self.source_fps if self.source_fps else 0.0


def resized_size(width: int, height: int, short_side: int = SHORT_SIDE) -> tuple[int, int]:
    """(width, height) with the shorter side ``short_side`` and the aspect ratio kept."""
    if width <= height:
        return short_side, max(short_side, int(round(height * short_side / width)))
    return max(short_side, int(round(width * short_side / height))), short_side


def _prepare(frame, short_side: int, crop: int) -> np.ndarray:
    """An ``av.VideoFrame`` -> uint8 RGB ``[crop, crop, 3]`` (bilinear resize, centre crop)."""
    width, height = resized_size(frame.width, frame.height, short_side)
    image = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR").to_ndarray()
    top, left = (height - crop) // 2, (width - crop) // 2
    return np.ascontiguousarray(image[top : top + crop, left : left + crop])


def _frame_time(frame, index: int, rate: float) -> float:
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / rate


def iter_frames(
    path: str | Path,
    fps: float = FPS,
    short_side: int = SHORT_SIDE,
    crop: int = CROP,
    threads: int = 0,
    info: VideoInfo | None = None,
    max_frames: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield prepared uint8 frames ``[crop, crop, 3]`` resampled to ``fps``.

    ``info`` (if given) is filled in as decoding proceeds; it is complete when the
    iterator is exhausted. ``threads``: decoder threads (0: FFmpeg's choice).
    ``max_frames`` stops after that many output frames.
    """
    av = _av()
    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: video file not found")
    info = info if info is not None else VideoInfo(str(path))
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise WtalError(f"{path}: cannot open the video ({exc})") from None
    with container:
        if not container.streams.video:
            raise WtalError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        rate = float(stream.average_rate or stream.guessed_rate or 0) or fps
        info.source_fps = rate
        info.fps = fps
        step = 1.0 / fps
        start = None
        prev = prev_time = prev_array = None
        emitted = 0
        try:
            for frame in container.decode(stream):
                time = _frame_time(frame, info.source_frames, rate)
                if start is None:
                    start = time
                    info.width, info.height = frame.width, frame.height
                time -= start
                info.source_frames += 1
                if prev is None:
                    prev, prev_time, prev_array = frame, time, None
                    continue
                # every target time up to this frame's time is decided now
                while emitted * step <= time + 1e-9:
                    target = emitted * step
                    if target - prev_time <= time - target:  # prev is nearer (ties -> earlier)
                        if prev_array is None:
                            prev_array = _prepare(prev, short_side, crop)
                        yield prev_array
                    else:
                        break
                    emitted += 1
                    info.frames = emitted
                    if max_frames is not None and emitted >= max_frames:
                        return
                if time > prev_time:
                    prev, prev_time, prev_array = frame, time, None
        except WtalError:
            raise
        except Exception as exc:
            raise WtalError(f"{path}: decoding failed after {info.source_frames} frames ({exc})") from None
        if prev is None:
            raise WtalError(f"{path}: the video has no frames")
        end = prev_time + 1.0 / rate
        while emitted * step < end - 1e-9:
            if prev_array is None:
                prev_array = _prepare(prev, short_side, crop)
            yield prev_array
            emitted += 1
            info.frames = emitted
            if max_frames is not None and emitted >= max_frames:
                return


def to_unit_range(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 in [-1, 1]."""
    return frames.astype(np.float32) / 127.5 - 1.0


def iter_snippets(
    path: str | Path,
    snippet_frames: int = SNIPPET_FRAMES,
    info: VideoInfo | None = None,
    max_snippets: int | None = None,
    **kwargs,
) -> Iterator[np.ndarray]:
    """Yield uint8 snippets ``[snippet_frames, 224, 224, 3]`` (non-overlapping, trailing frames dropped)."""
    max_frames = None if max_snippets is None else max_snippets * snippet_frames
    buffer: list[np.ndarray] = []
    for frame in iter_frames(path, info=info, max_frames=max_frames, **kwargs):
        buffer.append(frame)
        if len(buffer) == snippet_frames:
            yield np.stack(buffer)
            buffer = []


def probe(path: str | Path) -> VideoInfo:
    """Decode the whole video (no resizing) and report frame counts; mostly for checks."""
    av = _av()
    info = VideoInfo(str(path))
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            info.source_fps = float(stream.average_rate or 0)
            info.width, info.height = stream.codec_context.width, stream.codec_context.height
            info.source_frames = sum(1 for _ in container.decode(stream))
    except Exception as exc:
        raise WtalError(f"{path}: cannot read the video ({exc})") from None
    info.frames = math.ceil(info.duration * FPS - 1e-6)
    return info
