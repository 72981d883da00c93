"""Optical flow for the I3D flow stream (OpenCV; optional extra ``wtal[video]``).

The recipe:

* **Frames.** The same prepared frames as the RGB stream (25 fps, shorter side 256,
  centre crop 224x224, see :mod:`wtal.features.video`), converted to grey levels
  (ITU-R 601 luma, ``0.299 R + 0.587 G + 0.114 B``).
* **Method.** TV-L1 (``cv2.optflow.DualTVL1OpticalFlow_create``, default
  parameters), the method of the I3D paper and of the community's THUMOS14 flow
  features, when OpenCV has it -- it ships only in ``opencv-contrib-python``.
  Otherwise Farneback (``cv2.calcOpticalFlowFarneback`` with OpenCV's documented
  example parameters: pyramid scale 0.5, 3 levels, window 15, 3 iterations,
  poly_n 5, poly_sigma 1.2), which is in every OpenCV build and far faster
  (benchmarks/README.md). TV-L1 is what published I3D flow features use, so
  features from the two methods are *not* interchangeable (the manifest records
  which was used).
* **Fields.** Field ``k`` is the flow from frame ``k`` to frame ``k + 1``
  ``[H, W, 2]`` as ``(dx, dy)`` in pixels (positive x to the right, positive y
  down). Snippet ``t`` holds fields ``16 t .. 16 t + 15``, so its last field looks
  at the first frame of snippet ``t + 1``; the last snippet of a video repeats its
  15th field as its 16th (the frame after it is not decoded). So the flow stream
  has exactly the RGB stream's snippets.
* **Scaling.** Clipped to ``[-20, 20]`` pixels and divided by 20, i.e. in
  ``[-1, 1]``, the usual I3D flow input preparation (Carreira & Zisserman 2017).

Snippets are ``[16, 224, 224, 2]`` float32. Importing this module does not import OpenCV.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import numpy as np

from wtal.errors import WtalError

FLOW_BOUND = 20.0
METHODS = ("auto", "tvl1", "farneback")
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _cv2():
    try:
        import cv2
    except ImportError:
        raise WtalError(
            "optical flow needs OpenCV: pip install 'wtal[video]' (or pip install opencv-python-headless; "
            "opencv-contrib-python-headless adds TV-L1)"
        ) from None
    return cv2


def tvl1_available() -> bool:
    """Whether this OpenCV build has TV-L1 (``cv2.optflow``, from opencv-contrib)."""
    cv2 = _cv2()
    return hasattr(getattr(cv2, "optflow", None), "DualTVL1OpticalFlow_create")


def to_grey(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., H, W, 3]`` -> uint8 grey ``[..., H, W]`` (ITU-R 601 luma, rounded)."""
    grey = np.asarray(frames, dtype=np.float32) @ _LUMA
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def scale_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Pixels -> ``[-1, 1]``: clip to ``[-bound, bound]`` and divide by ``bound``."""
    return (np.clip(flow, -bound, bound) / bound).astype(np.float32)


class FlowComputer:
    """Dense optical flow between grey frames with OpenCV.

    ``method``: ``"auto"`` (TV-L1 when available, else Farneback), ``"tvl1"`` or
    ``"farneback"``; :attr:`method` is the one in use.
    """

    def __init__(self, method: str = "auto"):
        if method not in METHODS:
            raise WtalError(f"flow method: expected one of {list(METHODS)}, found {method!r}")
        self._cv2 = _cv2()
        if method == "auto":
            method = "tvl1" if tvl1_available() else "farneback"
        if method == "tvl1":
            if not tvl1_available():
                raise WtalError("flow method 'tvl1' needs opencv-contrib (pip install opencv-contrib-python-headless)")
            self._tvl1 = self._cv2.optflow.DualTVL1OpticalFlow_create()
        self.method = method

    @property
    def description(self) -> str:
        if self.method == "tvl1":
            return "TV-L1 (cv2.optflow.DualTVL1OpticalFlow, default parameters)"
        params = ", ".join(f"{k}={v}" for k, v in FARNEBACK.items())
        return f"Farneback (cv2.calcOpticalFlowFarneback, {params})"

    def pair(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow ``[H, W, 2]`` float32 ``(dx, dy)`` in pixels from grey ``first`` to grey ``second``."""
        if self.method == "tvl1":
            flow = self._tvl1.calc(first, second, None)
        else:
            flow = self._cv2.calcOpticalFlowFarneback(first, second, None, **FARNEBACK)
        return np.asarray(flow, dtype=np.float32)

    def fields(self, grey: np.ndarray) -> np.ndarray:
        """Flow between consecutive grey frames ``[N, H, W]`` -> ``[N - 1, H, W, 2]`` pixels."""
        height, width = grey.shape[-2:]
        out = np.empty((max(len(grey) - 1, 0), height, width, 2), dtype=np.float32)
        for k in range(len(grey) - 1):
            out[k] = self.pair(grey[k], grey[k + 1])
        return out


def flow_snippets(
    snippets: Iterable[np.ndarray], computer: FlowComputer | None = None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rgb snippet, flow snippet)`` pairs from uint8 RGB snippets ``[16, H, W, 3]``.

    Flow snippets are ``[16, H, W, 2]`` in ``[-1, 1]`` (see the module docstring;
    one snippet of look-ahead, so memory holds two snippets).
    """
    computer = computer or FlowComputer()
    pending = pending_grey = None
    for snippet in snippets:
        grey = to_grey(snippet)
        if pending is not None:
            fields = computer.fields(np.concatenate([pending_grey, grey[:1]]))
            yield pending, scale_flow(fields)
        pending, pending_grey = snippet, grey
    if pending is not None:
        fields = computer.fields(pending_grey)
        if len(fields) == 0:  # a one-frame snippet: no motion to measure
            fields = np.zeros(pending_grey.shape + (2,), dtype=np.float32)
        else:
            fields = np.concatenate([fields, fields[-1:]])
        yield pending, scale_flow(fields)
