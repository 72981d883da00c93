"""Run a trained model over whole videos and turn its scores into detections and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from wtal.config import Config
from wtal.data.annotations import Video
from wtal.data.readers import FeatureDataset
from wtal.data.sampling import pad_batch
from wtal.detections import Detections
from wtal.evaluate import DetectionResult, classification_map, evaluate_detection, resolve_thresholds
from wtal.localize import InferenceConfig, localize

@dataclass
class VideoScores:
    """One video's inference scores (``model.scores``): attention [N], cas [N, C], video_scores [C].

    N is the number of snippets the model saw: the video's own T, or ``inference.test_seqlen``
    when the video was resampled (:func:`scored_snippets`); each entry then stands for T / N of the
    video's snippets and lasts ``snippet_seconds`` = the dataset's seconds per snippet x T / N.
    """

    name: str
    duration: float
    attention: np.ndarray
    cas: np.ndarray
    video_scores: np.ndarray
    snippet_seconds: float  # seconds per entry of attention and cas


def resolve_device(spec: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as torch spells it."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec)


def scored_snippets(length: int, seqlen: int = 0, resample: str = "longer") -> np.ndarray:
    """Indices [N] of the snippets a video of ``length`` snippets is scored on.

    ``seqlen`` 0: all of them. Otherwise the video is resampled to ``seqlen`` snippets, position
    i taking snippet ``floor(i * length / seqlen)`` (BaS-Net's and UM's test loaders): with
    ``resample="longer"`` only a video longer than ``seqlen`` (UM; a shorter one keeps its own
    snippets), with ``"all"`` every video (BaS-Net; a shorter one repeats snippets).
    """
    if seqlen == 0 or (resample == "longer" and length <= seqlen):
        return np.arange(length)
    return np.arange(seqlen) * length // seqlen


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    dataset: FeatureDataset,
    videos: Iterable[Video],
    device: torch.device,
    inference: InferenceConfig,
    batch_size: int = 4,
) -> list[VideoScores]:
    """Score videos, ``batch_size`` at a time (padding is masked out): whole, or resampled to
    ``inference.test_seqlen`` snippets as :func:`scored_snippets` says; video scores pool the top
    T // ``inference.video_topk_divisor`` snippets."""
    was_training = model.training
    model.eval()
    videos = list(videos)
    results: list[VideoScores] = []
    for begin in range(0, len(videos), batch_size):
        chunk = videos[begin : begin + batch_size]
        whole = [dataset.features(v.name) for v in chunk]
        picks = [scored_snippets(len(f), inference.test_seqlen, inference.test_resample) for f in whole]
        features, mask = pad_batch([f[p] for f, p in zip(whole, picks)])
        features, mask = features.to(device), mask.to(device)
        outputs = model(features, mask)
        scores = {k: v.float().cpu().numpy() for k, v in model.scores(outputs, mask, inference.video_topk_divisor).items()}
        lengths = mask.sum(dim=1).cpu().numpy()
        for i, video in enumerate(chunk):
            length = int(lengths[i])
            results.append(
                VideoScores(
                    name=video.name,
                    duration=video.duration,
                    attention=scores["attention"][i, :length],
                    cas=scores["cas"][i, :length],
                    video_scores=scores["video_scores"][i],
                    snippet_seconds=dataset.snippet_seconds * len(whole[i]) / length,
                )
            )
    model.train(was_training)
    return results


def detect(scores: list[VideoScores], dataset: FeatureDataset, cfg: Config) -> Detections:
    """Localize every scored video with ``cfg.inference``."""
    records = ((s.name, s.attention, s.cas, s.video_scores, s.duration, s.snippet_seconds) for s in scores)
    return localize(records, dataset.classes, dataset.snippet_seconds, cfg.inference)


def score_detections(
    detections: Detections,
    scores: list[VideoScores],
    dataset: FeatureDataset,
    cfg: Config,
    subset: str | None = None,
    exclude: tuple[str, ...] | list[str] = (),
) -> tuple[DetectionResult, float]:
    """Detection mAP and video classification mAP (%) on ``subset`` (default
    ``cfg.data.test_subset``) less ``cfg.data.exclude_videos`` and ``exclude``."""
    result = evaluate_detection(
        dataset.annotations,
        detections,
        subset or cfg.data.test_subset,
        resolve_thresholds(cfg.eval.thresholds),
        ambiguous_filter=cfg.eval.ambiguous_filter,
        units=cfg.eval.units,
        snippet_seconds=dataset.snippet_seconds,
        exclude_videos=[*cfg.data.exclude_videos, *exclude],
    )
    videos = [dataset.annotations.videos[s.name] for s in scores]
    cls_map = classification_map(np.stack([s.video_scores for s in scores]), dataset.label_matrix(videos))
    return result, cls_map
