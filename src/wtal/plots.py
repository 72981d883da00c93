"""Timelines of what a model saw in a video (attention, class activations, ground truth, detections)
and curves of a test metric over training."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from wtal.data.annotations import Video
from wtal.detections import Detections
from wtal.errors import WtalError
from wtal.io import atomic_path, read_jsonl


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def action_share(video: Video) -> float:
    """The fraction of ``video``'s duration inside the union of its annotated segments."""
    if video.duration <= 0 or not len(video.segments):
        return 0.0
    spans = np.clip(np.sort(np.asarray(video.segments, dtype=np.float64), axis=0), 0.0, video.duration)
    spans = spans[np.argsort(spans[:, 0])]
    ends = np.maximum.accumulate(spans[:, 1])  # [N]: furthest end so far
    starts = np.maximum(spans[:, 0], np.concatenate([[0.0], ends[:-1]]))  # what each adds beyond the ones before
    return float(np.clip(ends - starts, 0.0, None).sum() / video.duration)


def readable_videos(
    videos: Sequence[Video], count: int = 3, share: tuple[float, float] = (0.25, 0.6), instances: tuple[int, int] = (3, 10)
) -> list[Video]:
    """Up to ``count`` videos whose actions and background each take a visible share of the timeline:
    actions within ``share`` of the duration, in ``instances`` separate segments (fewest first), one
    video per class where possible; other annotated videos fill in only if too few qualify."""
    annotated = [v for v in videos if len(v.labels)]
    low, high = share

    def rank(video: Video) -> tuple:
        n = len(video.labels)
        return (not low <= action_share(video) <= high, not instances[0] <= n <= instances[1], n, video.name)

    ranked = sorted(annotated, key=rank)
    chosen, classes = [], set()
    for video in ranked:  # first pass: new classes only
        if len(chosen) < count and not classes & set(video.labels):
            chosen.append(video)
            classes.update(video.labels)
    chosen += [v for v in ranked if v not in chosen][: count - len(chosen)]
    return chosen


def strongest_activations(cas: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """The ``top`` classes of ``cas`` [T, C] with the highest peak, their curves [T, top] and whether
    the curves were min-max scaled over time (done when any value lies outside [0, 1])."""
    strongest = np.argsort(-cas.max(axis=0))[:top]
    shown = cas[:, strongest]
    scaled = bool(shown.size) and bool(shown.min() < 0 or shown.max() > 1)
    if scaled:
        low = shown.min(axis=0)
        shown = (shown - low) / np.maximum(shown.max(axis=0) - low, 1e-12)
    return strongest, shown, scaled


def plot_timelines(
    path: str | Path,
    videos: Sequence[Video | None],
    names: Sequence[str],
    attention: Sequence[np.ndarray],
    cas: Sequence[np.ndarray],
    classes: Sequence[str],
    snippet_seconds: Sequence[float],
    detections: Detections | None = None,
    top_classes: int = 2,
) -> Path:
    """Write a PNG with one panel per video.

    Per video: attention [T] and the ``top_classes`` strongest class
    activations ``cas`` [T, C] over time in seconds (``snippet_seconds[i]`` per entry of
    video i: a video scored on a resampled sequence has its own; class activations outside [0, 1],
    such as CO2-Net's logits times attention, are drawn min-max scaled over the video); ground-truth segments
    (``videos[i]`` may be None for an unannotated video) and detections as bars.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(names)
    fig, axes = plt.subplots(count, 1, figsize=(12, 2.6 * count), squeeze=False)
    palette = plt.get_cmap("tab10")
    for row, name in enumerate(names):
        ax = axes[row, 0]
        length = len(attention[row])
        seconds = (np.arange(length) + 0.5) * snippet_seconds[row]
        ax.plot(seconds, attention[row], color="black", lw=1.2, label="attention")
        strongest, shown, scaled = strongest_activations(cas[row], top_classes)
        for k, c in enumerate(strongest):
            label = f"CAS {classes[c]}" + (" (min-max)" if scaled else "")
            ax.plot(seconds, shown[:, k], color=palette(k), lw=1.0, alpha=0.8, label=label)
        video = videos[row]
        if video is not None:
            for (start, end), label in zip(video.segments, video.labels):
                ax.fill_between([start, end], -0.07, -0.02, color="tab:green", alpha=0.9)
            ax.plot([], [], color="tab:green", lw=6, label="ground truth")
        if detections is not None:
            keep = np.flatnonzero(detections.video == name)
            keep = keep[np.argsort(-detections.score[keep])][:10]
            for rank, i in enumerate(keep):
                y = -0.11 - 0.045 * (rank % 4)
                ax.plot([detections.start[i], detections.end[i]], [y, y], color="tab:red", lw=3, alpha=0.8)
                if rank < 4:
                    ax.text(
                        detections.start[i], y - 0.035,
                        f"{classes[detections.label[i]]} {detections.score[i]:.2f}", fontsize=6, color="tab:red",
                    )
            ax.plot([], [], color="tab:red", lw=3, label="detections (top 10)")
        ax.set_ylim(-0.32, 1.05)
        ax.set_xlim(0, max(length * snippet_seconds[row], 1e-6))
        ax.set_title(name, fontsize=9, loc="left")
        ax.legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1, 0].set_xlabel("seconds")
    return save_figure(fig, path)


def evaluation_curve(run_dir: str | Path, metric: str = "avg") -> tuple[np.ndarray, np.ndarray]:
    """Steps [E] and values [E] of ``metric`` at each test evaluation in ``run_dir/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    tests = [record for record in read_jsonl(path) if record.get("split") == "test"]
    if not tests:
        raise WtalError(f"{path}: no test evaluation yet (lines with split 'test')")
    if metric not in tests[0]:
        keys = sorted(k for k in tests[0] if k not in ("step", "split"))
        raise WtalError(f"{path}: no metric {metric!r} in its test evaluations; expected one of {keys}")
    return np.array([r["step"] for r in tests]), np.array([r[metric] for r in tests], dtype=float)


def plot_curves(path: str | Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], metric: str) -> Path:
    """Write a PNG of each named curve (steps, values) of ``metric`` over training steps, its best
    evaluation marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, (steps, values) in curves.items():
        (line,) = ax.plot(steps, values, marker="o", ms=3, lw=1.2, label=name)
        best = int(np.argmax(values))
        ax.plot(steps[best], values[best], marker="*", ms=11, color=line.get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_curve_groups(path: str | Path, groups: dict[str, tuple[np.ndarray, np.ndarray]], metric: str) -> Path:
    """Write a PNG of each named group of curves (steps [E], values [runs, E] of ``metric``): its mean
    over runs as a line, its lowest and highest run as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for name, (steps, values) in groups.items():
        (line,) = ax.plot(steps, values.mean(0), marker="o", ms=3, lw=1.4, label=f"{name} (mean of {len(values)})")
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.2, lw=0)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
