"""Seconds to turn THUMOS14-sized test scores into detections (``wtal.localize.localize``).

Videos: the 212 THUMOS14 test videos of the bundled annotations, T = their snippet count
at 0.64 s per snippet (``wtal.data.synthetic.num_snippets``), C = 20. Scores come from a
seeded generator meant to look like a trained model's: smooth bumps over the real
instances (attention and the instance's class column of the CAS), slowly varying noise,
weaker bumps on the same classes' nearby background, and video scores high for the
video's classes with a few false positives. Each InferenceConfig variant (default hard
NMS on attention; soft-NMS; proposal_source "both") is timed best of N, and the mAP of
its detections is printed as a sanity check of the generator.

    python benchmarks/bench_localize.py [--repeat 5] [--json out.json]
"""

from __future__ import annotations

import dataclasses
import sys

import _common
import numpy as np

from wtal.config import InferenceConfig
from wtal.data.synthetic import num_snippets
from wtal.data.wtalc import bundled_thumos14
from wtal.evaluate import THUMOS_THRESHOLDS, evaluate_detection
from wtal.localize import localize

SNIPPET_SECONDS = 16 / 25
VARIANTS = {
    "default": {},
    "soft_nms": {"nms": "soft_nms"},
    "proposal_both": {"proposal_source": "both"},
}


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], width: int) -> np.ndarray:
    """Unit-scale noise smoothed along axis 0 by a moving average of ``width`` snippets."""
    noise = rng.standard_normal((shape[0] + width - 1,) + shape[1:])
    cum = np.cumsum(noise, axis=0)
    cum = np.concatenate([np.zeros((1,) + shape[1:]), cum], axis=0)
    return (cum[width:] - cum[:-width]) / np.sqrt(width)


def _bumps(length: int, segments: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[T] sum of soft boxes over ``segments`` (snippets), each with a random height in [0.6, 1.2]."""
    t = np.arange(length)[:, None] + 0.5
    s, e = segments[:, 0][None, :], segments[:, 1][None, :]
    edge = 1.5  # snippets of soft edge
    box = _sigmoid((t - s) * 4 / edge) * _sigmoid((e - t) * 4 / edge)
    return (box * rng.uniform(0.6, 1.2, segments.shape[0])).sum(axis=1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # no overflow for large |x|


def make_scores(annotations, subset: str, seed: int, limit: int = 0) -> list[tuple]:
    """Records ``(name, attention [T], cas [T, C], video_scores [C], duration)`` for ``subset``."""
    rng = np.random.default_rng(seed)
    videos = annotations.subset(subset)[: limit or None]
    num_classes = len(annotations.classes)
    records = []
    for video in videos:
        length = num_snippets(video.duration, SNIPPET_SECONDS)
        segments = video.segments / SNIPPET_SECONDS
        labels = np.array([annotations.class_index[label] for label in video.labels], dtype=np.int64)
        logits = -3.0 + 1.0 * _smooth(rng, (length, num_classes), 5)
        attention_logit = -2.5 + 1.0 * _smooth(rng, (length,), 5)
        for c in np.unique(labels):
            own = _bumps(length, segments[labels == c], rng)
            context = _bumps(length, segments[labels == c] + rng.normal(0, 8, (int((labels == c).sum()), 1)), rng)
            logits[:, c] += 5.0 * own + 1.5 * context
            attention_logit += 5.0 * own
        attention = _sigmoid(attention_logit)
        cas = _sigmoid(logits)
        video_scores = rng.beta(1, 20, num_classes)
        video_scores[np.unique(labels)] = rng.uniform(0.5, 0.95, np.unique(labels).size)
        false = rng.random(num_classes) < 0.05
        video_scores[false] = np.maximum(video_scores[false], rng.uniform(0.2, 0.5, int(false.sum())))
        records.append((video.name, attention, cas, video_scores, video.duration))
    return records


def main(argv: list[str] | None = None) -> int:
    p = _common.parser(__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=None, help="test videos to use (default all 212; smoke 16)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _common.apply_threads(args.threads)
    repeat = args.repeat or (1 if args.smoke else 5)
    limit = args.videos if args.videos is not None else (16 if args.smoke else 0)
    machine = _common.machine_info()
    _common.print_machine(machine)

    annotations = bundled_thumos14()
    records = make_scores(annotations, "test", args.seed, limit)
    snippets = sum(len(r[1]) for r in records)
    print(
        f"{len(records)} test videos, {snippets} snippets (T {min(len(r[1]) for r in records)}.."
        f"{max(len(r[1]) for r in records)}), C = {len(annotations.classes)}; "
        f"{np.mean([np.sum(r[3] >= InferenceConfig().class_threshold) for r in records]):.2f} classes/video "
        "at or above the default class_threshold"
    )

    scored = annotations if not limit else _restrict(annotations, {r[0] for r in records})
    results: dict = {"videos": len(records), "snippets": snippets, "variants": {}}
    for name, changes in VARIANTS.items():
        cfg = dataclasses.replace(InferenceConfig(), **changes)
        timing, detections = _common.best_of(
            lambda: localize(records, annotations.classes, SNIPPET_SECONDS, cfg), repeat
        )
        mAP = evaluate_detection(scored, detections, "test", THUMOS_THRESHOLDS).averages()["avg(0.1:0.7)"]
        print(
            f"{name:>14}: best {timing['best_s']:.3f} s, median {timing['median_s']:.3f} s of {repeat}; "
            f"{len(detections)} detections, mAP avg(0.1:0.7) {mAP:.2f}%  ({changes or 'InferenceConfig()'})"
        )
        results["variants"][name] = {**timing, "changes": changes, "detections": len(detections), "mAP": mAP}

    best = {name: v["best_s"] for name, v in results["variants"].items()}
    summary = f"{len(records)} videos -> detections in " + ", ".join(f"{k} {v:.3f} s" for k, v in best.items())
    return _common.finish("bench_localize", args, machine, results, summary)


def _restrict(annotations, names: set[str]):
    """``annotations`` keeping only the videos in ``names`` (smoke runs score a few videos)."""
    from wtal.data.annotations import Annotations

    kept = {n: v for n, v in annotations.videos.items() if n in names}
    return Annotations(annotations.classes, kept, annotations.ambiguous, annotations.source)


if __name__ == "__main__":
    sys.exit(main())
