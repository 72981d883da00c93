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

:func:`train` calls named pieces in a fixed order that exact resume depends on (the RNG
draws of building, then the restored states): :func:`_build` (seeds, data, model, optimizer,
schedule, sampler), :func:`_open_run` (a new run directory, or the checkpoint's states),
then per step :func:`_step`, :func:`_evaluate` and :func:`_checkpoint`, and :func:`_finish`.
They share one :class:`TrainState`. The optimizer and the schedule come from
:mod:`wtal.engine.optim` (``train.optimizer``, ``train.scheduler``, ``train.grad_clip``).
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from wtal import __version__
from wtal.config import Config, apply_overrides, config_from_dict, dump_config
from wtal.data.annotations import Video
from wtal.data.readers import FeatureDataset, load_dataset
from wtal.data.sampling import TrainBatches, hold_out
from wtal.detections import Detections
from wtal.engine.checkpoint import (
    MetricsLog,
    load_checkpoint,
    restore_rng,
    resumable_checkpoint,
    save_checkpoint,
)
from wtal.engine.distributed import DistContext, setup
from wtal.engine.inference import VideoScores, detect, predict, resolve_device, score_detections
from wtal.engine.optim import LearningRate, make_optimizer, make_scheduler, set_learning_rate
from wtal.errors import WtalError
from wtal.io import read_json, write_json, write_text
from wtal.models import build_model

PRIMARY_METRIC = "avg"

# metrics.json's "checkpoint" for each train.select
CHECKPOINT_RULES = {
    "best_test": "best test mAP (field practice)",
    "best_val": "best validation mAP ({n} held-out {subset} videos)",
    "last": "last",
}


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    metrics: dict
    scores: list[VideoScores]
    dataset: FeatureDataset
    detections: Detections | None  # None on the ranks other than 0 under torchrun


@dataclass
class TrainState:
    """What the pieces of :func:`train` share."""

    cfg: Config
    dist: DistContext
    device: torch.device
    dataset: FeatureDataset
    test_videos: list[Video]
    val_videos: list[Video]  # held out of training for train.select=best_val
    held_out: frozenset[str]
    fit_names: list[str]  # the training videos trained on, left out of the validation mAP
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_at: LearningRate | None  # None: the optimizer's constant train.lr
    batches: TrainBatches
    run_dir: Path = Path()
    log: MetricsLog | None = None
    net: torch.nn.Module | None = None  # the model, in DistributedDataParallel under torchrun
    first_step: int = 1
    best: float = -math.inf
    started: float = 0.0  # time.time() of the run's start, less the time before a resume
    best_scores: list[VideoScores] | None = None  # test scores of best.pt when this process wrote it
    last_scores: list[VideoScores] | None = None  # test scores of the last evaluation
    eval_steps: set[int] = field(default_factory=set)

    def save(self, name: str, step: int) -> None:
        save_checkpoint(
            self.run_dir / name, self.model, self.optimizer, step, self.best, self.batches, self.cfg,
            self.log.lines, time.time() - self.started,
        )


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
        saved = resumable_checkpoint(cfg) if resume else None
        state = _build(cfg, dist, device)
        _open_run(state, saved, overwrite)
        bar = tqdm(
            range(state.first_step, cfg.train.iterations + 1),
            desc="train",
            disable=not progress or not dist.is_main,
            dynamic_ncols=True,
            initial=state.first_step - 1,
            total=cfg.train.iterations,
        )
        state.model.train()
        for step in bar:
            loss = _step(state, step)
            postfix = {"loss": f"{loss:.4f}"}
            evaluated = step in state.eval_steps
            if evaluated and dist.is_main:
                postfix["mAP"] = f"{_evaluate(state, step):.2f}"
            if evaluated or step == 1 or step % cfg.train.log_every == 0:
                bar.set_postfix(postfix)
            if evaluated or (cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0):
                _checkpoint(state, step)
        bar.close()
        return _finish(state)
    finally:
        dist.close()


def _build(cfg: Config, dist: DistContext, device: torch.device) -> TrainState:
    """Seed, read the data (the held-out split too), build the model, optimizer, schedule and sampler."""
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
    model = build_model(cfg.model, dataset.feature_dim, dataset.num_classes).to(device)
    batches = TrainBatches(
        dataset,
        cfg.data.train_subset,
        cfg.train.batch_size,
        cfg.data.max_seqlen,
        cfg.data.sampling,
        cfg.train.seed,
        held_out=held_out,
        similar_pairs=getattr(cfg.model, "similar_pairs", 0),
        draw=cfg.data.batch_draw,
    )
    eval_every = cfg.train.eval_every or cfg.train.iterations + 1
    return TrainState(
        cfg=cfg,
        dist=dist,
        device=device,
        dataset=dataset,
        test_videos=test_videos,
        val_videos=[v for v in train_videos if v.name in held_out],
        held_out=held_out,
        fit_names=[v.name for v in train_videos if v.name not in held_out],
        model=model,
        optimizer=make_optimizer(cfg.train, model.parameters()),
        lr_at=make_scheduler(cfg.train),
        batches=batches,
        eval_steps={*range(eval_every, cfg.train.iterations + 1, eval_every), cfg.train.iterations},
    )


def _open_run(state: TrainState, saved: tuple[Path, dict] | None, overwrite: bool) -> None:
    """A new run directory and log, or (``saved``: the checkpoint's path and contents) the model,
    optimizer, sampler and RNG states of the checkpoint and its log cut back to that step."""
    cfg, dist = state.cfg, state.dist
    elapsed = 0.0
    if saved is None:
        state.run_dir = _on_main(dist, lambda: make_run_dir(cfg, overwrite))
        state.log = _on_main(dist, lambda: MetricsLog(state.run_dir / "metrics.jsonl"))
    else:
        source, checkpoint = saved
        state.run_dir = source.parent
        try:
            state.model.load_state_dict(checkpoint["model"])
            state.optimizer.load_state_dict(checkpoint["optimizer"])
            state.batches.load_state_dict(json.loads(checkpoint["sampler"]))
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise WtalError(f"{source}: --resume: the checkpoint does not fit this model/data ({exc})") from None
        restore_rng(checkpoint, source)
        state.first_step, state.best = int(checkpoint["step"]) + 1, float(checkpoint["best"])
        elapsed = float(checkpoint.get("elapsed", 0.0))
        keep = int(checkpoint["metrics_lines"])
        state.log = _on_main(dist, lambda: MetricsLog(state.run_dir / "metrics.jsonl", keep=keep))
        if dist.is_main:
            for stale in state.run_dir.glob(".*.tmp"):  # atomic writes the killed process never finished
                stale.unlink()
    if dist.is_main:
        write_text(state.run_dir / "config.yaml", dump_config(cfg))
    state.net = dist.wrap(state.model, state.device)
    state.started = time.time() - elapsed


def _step(state: TrainState, step: int) -> float:
    """One optimizer step on the next batch; logs the losses every ``train.log_every`` steps and
    stops on a non-finite loss. Returns the total loss (the global batch's under torchrun)."""
    cfg, model, dist = state.cfg, state.model, state.dist
    model.progress = (step - 1) / cfg.train.iterations
    batch = dist.shard(next(state.batches))  # this rank's slice of the global batch
    features, mask, labels = (batch[k].to(state.device) for k in ("features", "mask", "labels"))
    losses = model.loss(state.net(features, mask), labels, mask)
    total = losses["total"]
    if dist.enabled:  # global-batch means: the same on every rank, logged and checked
        reduced = dist.mean(torch.stack([v.detach().float() for v in losses.values()]))
        losses = dict(zip(losses, reduced))
    if not torch.isfinite(losses["total"]):
        _stop_on_non_finite(state, step, losses)
    if state.lr_at is not None:
        set_learning_rate(state.optimizer, state.lr_at(step))
    state.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    state.optimizer.step()
    if dist.is_main and (step % cfg.train.log_every == 0 or step == 1):
        record = {"step": step, "split": "train", **{k: round(v.item(), 6) for k, v in losses.items()}}
        if state.lr_at is not None:
            record["lr"] = state.optimizer.param_groups[0]["lr"]
        state.log.write(record)
    return losses["total"].item()


def _stop_on_non_finite(state: TrainState, step: int, losses: dict[str, torch.Tensor]) -> None:
    last = state.run_dir / "last.pt"
    kept = (
        f"the last good checkpoint is {last} (step {load_checkpoint(last)['step']}; resume with --resume "
        "after changing the config only in train.iterations, or start again with --overwrite)"
        if last.is_file()
        else "no checkpoint was saved yet"
    )
    raise WtalError(
        f"{state.run_dir}: training stopped at step {step}: the loss is {losses['total'].item()} "
        f"(components: { {k: v.item() for k, v in losses.items()} }); {kept}. "
        "Lower train.lr or check the features for extreme values."
    )


def _evaluate(state: TrainState, step: int) -> float:
    """Test (and held-out) detection mAP, logged; best.pt when the selection metric improves.
    Returns the test average mAP. Rank 0 only."""
    cfg, dataset, model, device = state.cfg, state.dataset, state.model, state.device
    scores = predict(model, dataset, state.test_videos, device, cfg.inference)
    result, cls_map = score_detections(detect(scores, dataset, cfg), scores, dataset, cfg)
    summary = result.summary()
    state.log.write({"step": step, "split": "test", **summary, "cls_mAP": cls_map, "seconds": round(time.time() - state.started, 1)})
    state.last_scores = scores
    selected = summary[PRIMARY_METRIC]
    if state.val_videos:
        val_scores = predict(model, dataset, state.val_videos, device, cfg.inference)
        val_result, val_cls = score_detections(
            detect(val_scores, dataset, cfg), val_scores, dataset, cfg, cfg.data.train_subset, state.fit_names
        )
        val_summary = val_result.summary()
        state.log.write({"step": step, "split": "val", **val_summary, "cls_mAP": val_cls})
        if cfg.train.select == "best_val":
            selected = val_summary[PRIMARY_METRIC]
    if selected > state.best:
        state.best = selected
        state.best_scores = scores
        # best.pt before last.pt: a crash in between resumes from an older last.pt,
        # which replays this step and rewrites the same best.pt.
        state.save("best.pt", step)
    return summary[PRIMARY_METRIC]


def _checkpoint(state: TrainState, step: int) -> None:
    """last.pt, after everything this step does: the RNG states, sampler and log length are the
    next step's start."""
    if state.dist.is_main:
        state.save("last.pt", step)
    state.dist.barrier()  # the other ranks wait for rank 0's evaluation and checkpoints


def _finish(state: TrainState) -> RunResult:
    """Detections and metrics.json of the checkpoint ``train.select`` chose (rank 0 writes them)."""
    cfg, dist, run_dir = state.cfg, state.dist, state.run_dir
    state.model.progress = 1.0
    if not dist.is_main:
        dist.barrier()
        return RunResult(run_dir=run_dir, metrics=read_metrics(run_dir), scores=[], dataset=state.dataset, detections=None)
    select_best = cfg.train.select != "last"
    chosen_path = run_dir / ("best.pt" if select_best else "last.pt")
    chosen = state.best_scores if select_best else state.last_scores
    if chosen is None:  # resumed after the chosen checkpoint was written: score it again
        model = build_model(cfg.model, state.dataset.feature_dim, state.dataset.num_classes).to(state.device)
        model.load_state_dict(load_checkpoint(chosen_path, map_location=state.device)["model"])
        chosen = predict(model, state.dataset, state.test_videos, state.device, cfg.inference)
    detections = detect(chosen, state.dataset, cfg)
    detections.save(run_dir / "detections.json")
    result, cls_map = score_detections(detections, chosen, state.dataset, cfg)
    metrics = {
        **result.to_json(),
        "cls_mAP": cls_map,
        "checkpoint": CHECKPOINT_RULES[cfg.train.select].format(n=len(state.val_videos), subset=cfg.data.train_subset),
        "step": int(load_checkpoint(chosen_path)["step"]),
        "train_seconds": round(time.time() - state.started, 1),
        "device": str(state.device),
        "environment": environment(state.device),
        **({"held_out": sorted(state.held_out)} if state.held_out else {}),
    }
    write_json(run_dir / "metrics.json", metrics)
    dist.barrier()
    return RunResult(run_dir=run_dir, metrics=metrics, scores=chosen, dataset=state.dataset, detections=detections)


def environment(device: torch.device) -> dict:
    """What the process that finished a run ran on: versions, the processor, the kernels torch picked
    and its threads. Float reductions differ between CPU kernel sets (AVX2, AVX512), so the same
    config and seed follow the same trajectory only where these match; the record says whether two
    runs could have been identical."""
    info = {
        "python": platform.python_version(),
        "wtal": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "system": platform.system(),
        "processor": _processor_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _processor_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform reports)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def read_metrics(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / "metrics.json")
