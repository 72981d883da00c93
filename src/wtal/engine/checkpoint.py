"""A run directory's files that make exact resume possible: checkpoints, RNG states and the log.

A checkpoint holds the model, the optimizer, the sampler and the python/numpy/torch RNG states,
the step, the best selection metric so far, the resolved config and the length of
``metrics.jsonl`` at that step; everything in it loads with ``weights_only=True`` (tensors,
numbers, strings: sampler and python/numpy RNG states are JSON text).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from wtal.config import Config, config_from_dict, dump_config
from wtal.data.sampling import TrainBatches
from wtal.errors import WtalError
from wtal.io import atomic_path, write_text

# Keys a resumed run may change; everything else must equal the checkpoint's config.
RESUMABLE_CHANGES = {"train.iterations", "train.threads", "train.device"}
# What a checkpoint must hold for --resume.
RESUME_KEYS = ("model", "optimizer", "step", "best", "sampler", "config", "metrics_lines")


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
    """Write a checkpoint atomically (the RNG states are this process's at the call)."""
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


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise WtalError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WtalError(f"{path}: not a readable wtal checkpoint ({type(exc).__name__}: {exc})") from None


def resumable_checkpoint(cfg: Config) -> tuple[Path, dict]:
    """(path, state) of ``output_dir/run_name/last.pt``, checked for ``--resume`` with ``cfg``."""
    if not cfg.run_name:
        raise WtalError("--resume: run_name: not set; name the run directory to continue (run_name=NAME)")
    path = Path(cfg.output_dir) / cfg.run_name / "last.pt"
    if not path.is_file():
        raise WtalError(
            f"{path}: --resume: no checkpoint to continue from (the run saved none yet, "
            "or output_dir/run_name name another run); start it again with --overwrite"
        )
    state = load_checkpoint(path)
    for key in RESUME_KEYS:
        if key not in state:
            raise WtalError(f"{path}: --resume: the checkpoint has no {key!r} (not resumable)")
    _check_resume_config(cfg, state["config"], path)
    if state["step"] > cfg.train.iterations:
        raise WtalError(
            f"{path}: --resume: the checkpoint is at step {state['step']}, past train.iterations={cfg.train.iterations}"
        )
    return path, state


def restore_rng(state: dict, source: Path) -> None:
    """Set the python, numpy, torch (and CUDA, where it fits) RNG states saved in ``state``."""
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


def _check_resume_config(cfg: Config, saved_text: str, source: Path) -> None:
    """Refuse to resume when the run's saved config differs from ``cfg`` outside RESUMABLE_CHANGES.
    A key the saved config lacks (written before the key existed) counts as its default."""
    try:
        tree = yaml.safe_load(saved_text) or {}
        written = _flatten(tree)
    except (yaml.YAMLError, AttributeError) as exc:
        raise WtalError(f"{source}: config: not readable ({exc})") from None
    try:
        saved = _flatten(yaml.safe_load(dump_config(config_from_dict(tree, str(source)))))
    except WtalError:
        saved = written  # not loadable as it stands (a key since removed): compared as written
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
