"""The training loop: sample batches, step the optimizer, evaluate, checkpoint.

A run directory holds everything a run produced:

    config.yaml        the resolved config (loads back with ``wtal train --config``)
    metrics.jsonl      one JSON line per logged training step and per evaluation
    last.pt, best.pt   checkpoints (model, optimizer, sampler state, step)
    detections.json    final detections on the test subset (ActivityNet results JSON)
    metrics.json       final detection mAP table and classification mAP

Every file is written atomically. Papers in this field report the checkpoint
with the best test mAP; ``train.select`` says which one the final files use
and ``metrics.json`` records it.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from wtal.config import Config, config_from_dict, dump_config
from wtal.data.readers import FeatureDataset, load_dataset
from wtal.data.sampling import TrainBatches
from wtal.engine.inference import VideoScores, detect, predict, resolve_device, score_detections
from wtal.errors import WtalError
from wtal.io import atomic_path, read_json, write_json, write_text
from wtal.models import build_model

PRIMARY_METRIC = "avg"


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict
    scores: list[VideoScores]
    dataset: FeatureDataset


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_run_dir(cfg: Config, overwrite: bool) -> Path:
    """Create ``output_dir/run_name``; refuse to reuse a non-empty one without ``overwrite``."""
    name = cfg.run_name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise WtalError(f"{run_dir}: run directory exists and is not empty; pass --overwrite to replace its files")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(path: Path, model, optimizer, step: int, best: float, batches: TrainBatches, cfg: Config) -> None:
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best": best,
        "sampler": json.dumps(batches.state_dict(), default=_jsonable),
        "config": dump_config(cfg),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WtalError(f"{path}: not a readable wtal checkpoint ({type(exc).__name__}: {exc})") from None


def load_run(run_dir: str | Path, checkpoint: str = "selected", device: str = "cpu"):
    """(config, dataset, model) of a finished run; ``checkpoint`` is best, last or selected."""
    import yaml

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise WtalError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = config_from_dict(yaml.safe_load(config_path.read_text()), str(config_path))
    if checkpoint == "selected":
        checkpoint = "best" if cfg.train.select == "best_test" and (run_dir / "best.pt").is_file() else "last"
    state = load_checkpoint(run_dir / f"{checkpoint}.pt")
    dataset = load_dataset(cfg.data)
    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes)
    model.load_state_dict(state["model"])
    model.to(resolve_device(device)).eval()
    return cfg, dataset, model


class MetricsLog:
    """Append-only JSON lines; each line is flushed so a crash loses at most one line."""

    def __init__(self, path: Path):
        self.path = path
        self.path.write_text("")

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


def train(cfg: Config, overwrite: bool = False, progress: bool = True) -> RunResult:
    """Train ``cfg.model`` on ``cfg.data`` and write a run directory."""
    seed_everything(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    dataset = load_dataset(cfg.data)
    train_videos = dataset.videos(cfg.data.train_subset)
    test_videos = dataset.videos(cfg.data.test_subset)
    if not train_videos:
        raise WtalError(f"{dataset.source}: data.train_subset: no videos in subset {cfg.data.train_subset!r}")
    if not test_videos:
        raise WtalError(f"{dataset.source}: data.test_subset: no videos in subset {cfg.data.test_subset!r}")

    run_dir = make_run_dir(cfg, overwrite)
    write_text(run_dir / "config.yaml", dump_config(cfg))
    log = MetricsLog(run_dir / "metrics.jsonl")

    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batches = TrainBatches(
        dataset, cfg.data.train_subset, cfg.train.batch_size, cfg.data.max_seqlen, cfg.data.sampling, cfg.train.seed
    )
    eval_steps = set(range(cfg.train.eval_every, cfg.train.iterations + 1, cfg.train.eval_every or cfg.train.iterations + 1))
    eval_steps.add(cfg.train.iterations)

    best = -math.inf
    best_scores: list[VideoScores] | None = None
    last_scores: list[VideoScores] | None = None
    started = time.time()
    bar = tqdm(range(1, cfg.train.iterations + 1), desc="train", disable=not progress, dynamic_ncols=True)
    model.train()
    for step in bar:
        model.progress = (step - 1) / cfg.train.iterations
        batch = next(batches)
        features, mask, labels = (batch[k].to(device) for k in ("features", "mask", "labels"))
        outputs = model(features, mask)
        losses = model.loss(outputs, labels, mask)
        total = losses["total"]
        if not torch.isfinite(total):
            raise WtalError(
                f"{run_dir}: training stopped at step {step}: the loss is {total.item()} "
                f"(components: { {k: float(v) for k, v in losses.items()} }); the last good checkpoint is "
                f"{run_dir / 'last.pt'}. Lower train.lr or check the features for extreme values."
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if step % cfg.train.log_every == 0 or step == 1:
            record = {"step": step, "split": "train", **{k: round(v.item(), 6) for k, v in losses.items()}}
            log.write(record)
            bar.set_postfix(loss=f"{record['total']:.4f}")
        if step in eval_steps:
            scores = predict(model, dataset, test_videos, device, cfg.inference.video_topk_divisor)
            result, cls_map = score_detections(detect(scores, dataset, cfg), scores, dataset, cfg)
            summary = result.summary()
            log.write({"step": step, "split": "test", **summary, "cls_mAP": cls_map, "seconds": round(time.time() - started, 1)})
            save_checkpoint(run_dir / "last.pt", model, optimizer, step, best, batches, cfg)
            last_scores = scores
            if summary[PRIMARY_METRIC] > best:
                best = summary[PRIMARY_METRIC]
                best_scores = scores
                save_checkpoint(run_dir / "best.pt", model, optimizer, step, best, batches, cfg)
            bar.set_postfix(loss=f"{total.item():.4f}", mAP=f"{summary[PRIMARY_METRIC]:.2f}")
    bar.close()
    model.progress = 1.0

    chosen = best_scores if cfg.train.select == "best_test" else last_scores
    detections = detect(chosen, dataset, cfg)
    detections.save(run_dir / "detections.json")
    result, cls_map = score_detections(detections, chosen, dataset, cfg)
    metrics = {
        **result.to_json(),
        "cls_mAP": cls_map,
        "checkpoint": "best test mAP (field practice)" if cfg.train.select == "best_test" else "last",
        "step": int(load_checkpoint(run_dir / ("best.pt" if cfg.train.select == "best_test" else "last.pt"))["step"]),
        "train_seconds": round(time.time() - started, 1),
        "device": str(device),
    }
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir=run_dir, metrics=metrics, scores=chosen, dataset=dataset)


def read_metrics(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / "metrics.json")
