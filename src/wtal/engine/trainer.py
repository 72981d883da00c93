"""The training loop: sample batches, step the optimizer, evaluate, checkpoint.

A run directory holds everything a run produced:

    config.yaml        the resolved config (loads back with ``wtal train --config``)
    metrics.jsonl      one JSON line per logged training step and per evaluation
                       (split "test", and "val" when videos are held out)
    last.pt, best.pt   checkpoints (model, optimizer, sampler and RNG states, step, best
                       metric, metrics.jsonl length); they load with ``weights_only=True``
    detections.json    final detections on the test subset (ActivityNet results JSON)
    metrics.json       final detection mAP table and classification mAP

Every file is written atomically. Papers in this field report the checkpoint
with the best test mAP; ``train.select`` says which one the final files use
(``best_test``, ``last``, or ``best_val``: the best detection mAP on
``data.val_fraction`` of the training videos, held out of training and
evaluated with their temporal annotations at each evaluation) and
``metrics.json`` records it. best.pt is the best checkpoint under that rule
(under ``last``, the best test one).

Resume (``train(cfg, resume=True)``, ``wtal train --resume``): ``last.pt`` is
written at every evaluation and every ``train.checkpoint_every`` steps, after
everything that step does (log lines, evaluation, best.pt), so a process killed
at any moment (SIGKILL included) continues from the last checkpoint: the model,
optimizer, sampler and the python/numpy/torch RNG states are restored and
metrics.jsonl is cut back to its length at that step. On CPU the resumed run
ends with exactly the metrics of an uninterrupted one. Only ``train.iterations``
and the hardware keys ``train.threads`` and ``train.device`` may differ from the
checkpoint's config (a run started on one core can finish on more, or on a GPU; the
results then match an uninterrupted run up to floating-point summation order).

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank trains its slice of each global
batch in DistributedDataParallel and rank 0 alone evaluates and writes the run
directory (see :mod:`wtal.engine.distributed`); all ranks resume from ``last.pt``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from wtal.config import Config, apply_overrides, config_from_dict, dump_config
from wtal.data.readers import FeatureDataset, load_dataset
from wtal.data.sampling import TrainBatches, hold_out
from wtal.detections import Detections
from wtal.engine.distributed import DistContext, setup
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
    detections: Detections | None  # None on the ranks other than 0 under torchrun


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def timestamped_run_name(output_dir: str | Path, prefix: str) -> str:
    """``prefix-YYYYmmdd-HHMMSS``, with ``-2``, ``-3``, ... added when runs started in the same second."""
    stem = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stem, 1
    while (Path(output_dir) / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def make_run_dir(cfg: Config, overwrite: bool) -> Path:
    """Create ``output_dir/run_name``; refuse to reuse a non-empty one without ``overwrite``."""
    name = cfg.run_name or timestamped_run_name(cfg.output_dir, cfg.model.name)
    run_dir = Path(cfg.output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise WtalError(f"{run_dir}: run directory exists and is not empty; pass --overwrite to replace its files")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    step: int,
    best: float,
    batches: TrainBatches,
    cfg: Config,
    metrics_lines: int = 0,
    elapsed: float = 0.0,
) -> None:
    """Write a checkpoint atomically; everything in it loads with ``weights_only=True``
    (tensors, numbers, strings: sampler and python/numpy RNG states are JSON text)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": step,
        "best": best,
        "sampler": json.dumps(batches.state_dict(), default=_jsonable),
        "config": dump_config(cfg),
        "metrics_lines": metrics_lines,
        "elapsed": elapsed,
        "rng_python": json.dumps(random.getstate()),
        "rng_numpy": json.dumps(np.random.get_state(), default=_jsonable),
        "rng_torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["rng_cuda"] = torch.cuda.get_rng_state_all()
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _restore_rng(state: dict, source: Path) -> None:
    try:
        version, internal, gauss = json.loads(state["rng_python"])
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = json.loads(state["rng_numpy"])
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state["rng_torch"])
        if "rng_cuda" in state and torch.cuda.is_available() and len(state["rng_cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise WtalError(f"{source}: rng states: not restorable ({type(exc).__name__}: {exc})") from None


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# metrics.json's "checkpoint" for each train.select
CHECKPOINT_RULES = {
    "best_test": "best test mAP (field practice)",
    "best_val": "best validation mAP ({n} held-out {subset} videos)",
    "last": "last",
}

# Keys a resumed run may change; everything else must equal the checkpoint's config.
RESUMABLE_CHANGES = {"train.iterations", "train.threads", "train.device"}


def _check_resume_config(cfg: Config, saved_text: str, source: Path) -> None:
    import yaml

    try:
        saved = _flatten(yaml.safe_load(saved_text) or {})
    except (yaml.YAMLError, AttributeError) as exc:
        raise WtalError(f"{source}: config: not readable ({exc})") from None
    current = _flatten(yaml.safe_load(dump_config(cfg)))
    differ = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k))
    if differ:
        details = ", ".join(f"{k}: checkpoint {saved.get(k, '<absent>')!r}, now {current.get(k, '<absent>')!r}" for k in differ)
        raise WtalError(
            f"{source}: cannot resume with a different config (only train.iterations, train.threads and "
            "train.device may change); "
            f"differing keys: {details}"
        )


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


def load_run(run_dir: str | Path, checkpoint: str = "selected", device: str = "cpu", overrides: Sequence[str] = ()):
    """(config, dataset, model) of a finished run; ``checkpoint`` is best, last or selected.

    ``overrides`` (``key=value``) apply to the run's config before the dataset is read, so that
    ``data.root=...`` scores another feature set with the trained model (``model.*`` keys must
    still describe the checkpoint's network)."""
    import yaml

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise WtalError(f"{run_dir}: not a run directory (no config.yaml)")
    cfg = config_from_dict(apply_overrides(yaml.safe_load(config_path.read_text()), overrides), str(config_path))
    if checkpoint == "selected":
        checkpoint = "best" if cfg.train.select != "last" and (run_dir / "best.pt").is_file() else "last"
    state = load_checkpoint(run_dir / f"{checkpoint}.pt")
    dataset = load_dataset(cfg.data)
    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes)
    model.load_state_dict(state["model"])
    model.to(resolve_device(device)).eval()
    return cfg, dataset, model


class MetricsLog:
    """Append-only JSON lines; each line is flushed so a crash loses at most one line.

    ``keep`` (resume): keep the first ``keep`` lines of the existing file and drop
    the rest (lines written after the checkpoint, possibly a partial one).
    """

    def __init__(self, path: Path, keep: int | None = None):
        self.path = path
        if keep is None:
            self.path.write_text("")
            self.lines = 0
            return
        text = self.path.read_text() if self.path.is_file() else ""
        complete = text.split("\n")[:-1]  # a final line without its newline is partial
        if len(complete) < keep:
            raise WtalError(
                f"{self.path}: has {len(complete)} complete lines, the checkpoint expects at least {keep}; "
                "the run directory was changed after the checkpoint (start again with --overwrite)"
            )
        write_text(self.path, "".join(line + "\n" for line in complete[:keep]))
        self.lines = keep

    def write(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        self.lines += 1


def _checkpoint_scores(path: Path, cfg: Config, dataset: FeatureDataset, test_videos, device) -> list[VideoScores]:
    """Test-subset scores of the model stored in a checkpoint (a resumed run's best/last)."""
    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes).to(device)
    model.load_state_dict(load_checkpoint(path, map_location=device)["model"])
    return predict(model, dataset, test_videos, device, cfg.inference)


def _on_main(dist: DistContext, make):
    """``make()`` on rank 0, its result (or its WtalError) on every rank."""
    if not dist.enabled:
        return make()
    result, error = None, None
    if dist.is_main:
        try:
            result = make()
        except WtalError as exc:
            error = str(exc)
    result, error = dist.broadcast((result, error))
    if error is not None:
        raise WtalError(error)
    return result


def train(cfg: Config, overwrite: bool = False, progress: bool = True, resume: bool = False) -> RunResult:
    """Train ``cfg.model`` on ``cfg.data`` and write a run directory.

    ``resume``: continue ``output_dir/run_name`` from its ``last.pt`` (see the module docstring).
    Under torchrun: one rank of a DistributedDataParallel run (see :mod:`wtal.engine.distributed`).
    """
    dist, device = setup(resolve_device(cfg.train.device), cfg.train.batch_size)
    try:
        return _train(cfg, overwrite, progress, resume, dist, device)
    finally:
        dist.close()


def _train(cfg: Config, overwrite: bool, progress: bool, resume: bool, dist: DistContext, device) -> RunResult:
    if cfg.train.checkpoint_every < 0:
        raise WtalError(f"train.checkpoint_every: expected >= 0, found {cfg.train.checkpoint_every}")
    if resume:
        if not cfg.run_name:
            raise WtalError("--resume: run_name: not set; name the run directory to continue (run_name=NAME)")
        run_dir = Path(cfg.output_dir) / cfg.run_name
        if not (run_dir / "last.pt").is_file():
            raise WtalError(
                f"{run_dir / 'last.pt'}: --resume: no checkpoint to continue from (the run saved none yet, "
                "or output_dir/run_name name another run); start it again with --overwrite"
            )
        state = load_checkpoint(run_dir / "last.pt")
        for key in ("model", "optimizer", "step", "best", "sampler", "config", "metrics_lines"):
            if key not in state:
                raise WtalError(f"{run_dir / 'last.pt'}: --resume: the checkpoint has no {key!r} (not resumable)")
        _check_resume_config(cfg, state["config"], run_dir / "last.pt")
        if state["step"] > cfg.train.iterations:
            raise WtalError(
                f"{run_dir / 'last.pt'}: --resume: the checkpoint is at step {state['step']}, past "
                f"train.iterations={cfg.train.iterations}"
            )

    seed_everything(cfg.train.seed)
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    dataset = load_dataset(cfg.data)
    train_videos = dataset.videos(cfg.data.train_subset)
    test_videos = dataset.videos(cfg.data.test_subset)
    if not train_videos:
        raise WtalError(f"{dataset.source}: data.train_subset: no videos in subset {cfg.data.train_subset!r}")
    if not test_videos:
        raise WtalError(f"{dataset.source}: data.test_subset: no videos in subset {cfg.data.test_subset!r}")

    held_out = (
        frozenset(hold_out([v.name for v in train_videos], cfg.data.val_fraction, cfg.data.val_seed))
        if cfg.data.val_fraction > 0
        else frozenset()
    )
    val_videos = [v for v in train_videos if v.name in held_out]
    fit_names = [v.name for v in train_videos if v.name not in held_out]  # left out of validation mAP

    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    batches = TrainBatches(
        dataset,
        cfg.data.train_subset,
        cfg.train.batch_size,
        cfg.data.max_seqlen,
        cfg.data.sampling,
        cfg.train.seed,
        held_out=held_out,
        similar_pairs=getattr(cfg.model, "similar_pairs", 0),
    )
    first_step, best, elapsed = 1, -math.inf, 0.0
    if resume:
        source = run_dir / "last.pt"
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            batches.load_state_dict(json.loads(state["sampler"]))
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise WtalError(f"{source}: --resume: the checkpoint does not fit this model/data ({exc})") from None
        _restore_rng(state, source)
        first_step, best = int(state["step"]) + 1, float(state["best"])
        elapsed = float(state.get("elapsed", 0.0))
        keep = int(state["metrics_lines"])
        del state
        log = _on_main(dist, lambda: MetricsLog(run_dir / "metrics.jsonl", keep=keep))
        if dist.is_main:
            for stale in run_dir.glob(".*.tmp"):  # atomic writes the killed process never finished
                stale.unlink()
    else:
        run_dir = _on_main(dist, lambda: make_run_dir(cfg, overwrite))
        log = _on_main(dist, lambda: MetricsLog(run_dir / "metrics.jsonl"))
    if dist.is_main:
        write_text(run_dir / "config.yaml", dump_config(cfg))
    net = dist.wrap(model, device)  # model itself for scores, checkpoints, progress

    eval_steps = set(range(cfg.train.eval_every, cfg.train.iterations + 1, cfg.train.eval_every or cfg.train.iterations + 1))
    eval_steps.add(cfg.train.iterations)
    every = cfg.train.checkpoint_every

    best_scores: list[VideoScores] | None = None
    last_scores: list[VideoScores] | None = None
    started = time.time() - elapsed
    bar = tqdm(
        range(first_step, cfg.train.iterations + 1),
        desc="train",
        disable=not progress or not dist.is_main,
        dynamic_ncols=True,
        initial=first_step - 1,
        total=cfg.train.iterations,
    )
    model.train()
    for step in bar:
        model.progress = (step - 1) / cfg.train.iterations
        batch = dist.shard(next(batches))  # this rank's slice of the global batch
        features, mask, labels = (batch[k].to(device) for k in ("features", "mask", "labels"))
        outputs = net(features, mask)
        losses = model.loss(outputs, labels, mask)
        total = losses["total"]
        if dist.enabled:  # global-batch means: the same on every rank, logged and checked
            reduced = dist.mean(torch.stack([v.detach().float() for v in losses.values()]))
            losses = dict(zip(losses, reduced))
        if not torch.isfinite(losses["total"]):
            last = run_dir / "last.pt"
            kept = (
                f"the last good checkpoint is {last} (step {load_checkpoint(last)['step']}; resume with --resume "
                "after changing the config only in train.iterations, or start again with --overwrite)"
                if last.is_file()
                else "no checkpoint was saved yet"
            )
            raise WtalError(
                f"{run_dir}: training stopped at step {step}: the loss is {losses['total'].item()} "
                f"(components: { {k: v.item() for k, v in losses.items()} }); {kept}. "
                "Lower train.lr or check the features for extreme values."
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if dist.is_main and (step % cfg.train.log_every == 0 or step == 1):
            record = {"step": step, "split": "train", **{k: round(v.item(), 6) for k, v in losses.items()}}
            log.write(record)
            bar.set_postfix(loss=f"{record['total']:.4f}")
        evaluated = step in eval_steps
        if evaluated and dist.is_main:
            scores = predict(model, dataset, test_videos, device, cfg.inference)
            result, cls_map = score_detections(detect(scores, dataset, cfg), scores, dataset, cfg)
            summary = result.summary()
            log.write({"step": step, "split": "test", **summary, "cls_mAP": cls_map, "seconds": round(time.time() - started, 1)})
            last_scores = scores
            selected = summary[PRIMARY_METRIC]
            if val_videos:
                val_scores = predict(model, dataset, val_videos, device, cfg.inference)
                val_result, val_cls = score_detections(
                    detect(val_scores, dataset, cfg), val_scores, dataset, cfg, cfg.data.train_subset, fit_names
                )
                val_summary = val_result.summary()
                log.write({"step": step, "split": "val", **val_summary, "cls_mAP": val_cls})
                if cfg.train.select == "best_val":
                    selected = val_summary[PRIMARY_METRIC]
            if selected > best:
                best = selected
                best_scores = scores
                # best.pt before last.pt: a crash in between resumes from an older last.pt,
                # which replays this step and rewrites the same best.pt.
                save_checkpoint(run_dir / "best.pt", model, optimizer, step, best, batches, cfg, log.lines, time.time() - started)
            bar.set_postfix(loss=f"{losses['total'].item():.4f}", mAP=f"{summary[PRIMARY_METRIC]:.2f}")
        if evaluated or (every and step % every == 0):
            # After everything this step does: the RNG states, sampler and log length are the next step's start.
            if dist.is_main:
                save_checkpoint(run_dir / "last.pt", model, optimizer, step, best, batches, cfg, log.lines, time.time() - started)
            dist.barrier()  # the other ranks wait for rank 0's evaluation and checkpoints
    bar.close()
    model.progress = 1.0
    if not dist.is_main:  # rank 0 writes the final files
        dist.barrier()
        return RunResult(run_dir=run_dir, metrics=read_metrics(run_dir), scores=[], dataset=dataset, detections=None)

    select_best = cfg.train.select != "last"
    chosen_path = run_dir / ("best.pt" if select_best else "last.pt")
    chosen = best_scores if select_best else last_scores
    if chosen is None:  # resumed after the chosen checkpoint was written: score it again
        chosen = _checkpoint_scores(chosen_path, cfg, dataset, test_videos, device)
    detections = detect(chosen, dataset, cfg)
    detections.save(run_dir / "detections.json")
    result, cls_map = score_detections(detections, chosen, dataset, cfg)
    metrics = {
        **result.to_json(),
        "cls_mAP": cls_map,
        "checkpoint": CHECKPOINT_RULES[cfg.train.select].format(n=len(val_videos), subset=cfg.data.train_subset),
        "step": int(load_checkpoint(chosen_path)["step"]),
        "train_seconds": round(time.time() - started, 1),
        "device": str(device),
        **({"held_out": sorted(held_out)} if held_out else {}),
    }
    write_json(run_dir / "metrics.json", metrics)
    dist.barrier()
    return RunResult(run_dir=run_dir, metrics=metrics, scores=chosen, dataset=dataset, detections=detections)


def read_metrics(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / "metrics.json")
