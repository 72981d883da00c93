"""Configuration: dataclasses with defaults, loaded from YAML plus ``key=value`` overrides.

The defaults below are the THUMOS14 protocol of ``docs/method.md``; a YAML file
(``configs/thumos14.yaml``) changes only what differs. Every run writes its
resolved config to ``<run>/config.yaml``, which loads back to the same object.

Override syntax: ``train.iterations=2000``, ``model.lam=5``,
``inference.thresholds=[0.1,0.5]``; values are parsed as YAML and checked
against the field's type.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from wtal.errors import WtalError
from wtal.extensions import import_extensions
from wtal.io import read_yaml_mapping
from wtal.localize import InferenceConfig
from wtal.models.registry import ModelConfig, model_config_class


@dataclass
class DataConfig:
    layout: str = "canonical"  # canonical | wtalc | per_video (see wtal.data.readers)
    root: str = ""  # dataset folder (canonical: holds dataset.yaml; wtalc: holds the bundle)
    name: str = "Thumos14reduced"  # wtalc: bundle prefix of <name>-I3D-JOINTFeatures.npy
    annotations: str = ""  # per_video: path of gt.json (default <root>/gt.json)
    train_subset: str = "validation"  # subset used for training
    test_subset: str = "test"  # subset used for evaluation
    classes: list[str] = field(default_factory=list)  # restrict and order classes (empty: all)
    exclude_videos: list[str] = field(default_factory=list)  # videos dropped (test-set variants)
    snippet_seconds: float = 16 / 25  # seconds per snippet (16 frames at 25 fps)
    modality: str = "both"  # rgb | flow | both
    feature_dim: int = 2048  # stored feature width (rgb + flow) expected in the files
    max_seqlen: int = 320  # snippets sampled per training video
    sampling: str = "random_perturb"  # resample (UM, CO2-Net: every video to max_seqlen) | random_perturb | uniform | crop
    batch_draw: str = "epochs"  # epochs (shuffled, full batches) | with_replacement (W-TALC, CO2-Net, DELU) | epochs_short_last (BaS-Net, UM)
    cache: bool = True  # keep features in memory after first read
    val_fraction: float = 0.0  # share of train_subset's videos held out for train.select=best_val
    val_seed: int = 0  # seeds the held-out draw (fixed across train.seed, so seeds share one split)


@dataclass
class TrainConfig:
    iterations: int = 5000  # optimizer steps
    batch_size: int = 10  # videos per step
    optimizer: str = "adam"  # adam (every method's authors') | adamw | sgd
    lr: float = 5e-5  # learning rate (the peak one under a schedule)
    weight_decay: float = 1e-3  # weight decay (adam, sgd: L2 added to the gradient; adamw: decoupled)
    momentum: float = 0.9  # sgd momentum
    scheduler: str = "none"  # learning-rate schedule after the warm-up: none (constant) | cosine | step
    warmup: int = 0  # steps of linear warm-up from 0 to lr (any scheduler)
    min_lr: float = 0.0  # cosine: learning rate at the last step
    milestones: list[int] = field(default_factory=list)  # step: steps from which lr is multiplied by gamma
    gamma: float = 0.1  # step: factor at each milestone
    grad_clip: float = 0.0  # clip the gradients' total norm to this before each step (0: off)
    eval_every: int = 200  # steps between evaluations on the test subset (0: only at the end)
    seed: int = 0  # seeds python, numpy and torch
    device: str = "auto"  # auto (cuda when present) | cpu | cuda | cuda:N
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    select: str = "best_test"  # final checkpoint: best_test (field practice) | best_val | last
    log_every: int = 20  # steps between training-loss lines in metrics.jsonl
    checkpoint_every: int = 100  # steps between last.pt checkpoints besides evaluations (0: evaluations only)


@dataclass
class EvalConfig:
    thresholds: str = "thumos"  # thumos (0.1:0.1:0.7) | anet (0.5:0.05:0.95) | comma list
    ambiguous_filter: bool = True  # drop detections overlapping "Ambiguous" regions (CO2-Net family)
    units: str = "seconds"  # seconds | snippets (CO2-Net computes tIoU in snippet units)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: _default_model_config())
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs"  # parent folder of run directories
    run_name: str = ""  # run directory name (empty: <model>-<timestamp>)
    imports: list[str] = field(default_factory=list)  # .py files or modules imported first: a method of one's own (wtal.extensions)


DEFAULT_MODEL = "whole_video_bg"


def _default_model_config() -> ModelConfig:
    import wtal.models  # noqa: F401  (registers the models)

    return model_config_class(DEFAULT_MODEL)(name=DEFAULT_MODEL)


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return value
    if origin is list:
        (item_type,) = typing.get_args(annotation) or (Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise WtalError(f"{where}: expected a list, found {value!r}")
        return [_convert(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise WtalError(f"{where}: expected true or false, found {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WtalError(f"{where}: expected an integer, found {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise WtalError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise WtalError(f"{where}: expected a string, found {value!r}")
        return str(value)
    return value


def _build(cls: type, values: Mapping[str, Any], where: str) -> Any:
    if not isinstance(values, Mapping):
        raise WtalError(f"{where}: expected a mapping, found {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise WtalError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(fields)}{_nested_hint(cls, values, unknown, where)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if hint is ModelConfig:
            kwargs[key] = _build_model_config(value, f"{where}.{key}", fields[key].default_factory().name)
        elif dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _convert(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def _nested_hint(cls: type, values: Mapping[str, Any], unknown: list[str], where: str) -> str:
    """Where an unknown key is a key of a nested model config (the paper's model's base), say so."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if hints[f.name] is not ModelConfig:
            continue
        chosen = values.get(f.name)
        chosen = chosen.get("name") if isinstance(chosen, Mapping) else chosen
        try:
            nested = model_config_class(chosen) if isinstance(chosen, str) else type(f.default_factory())
        except WtalError:
            continue
        own = [k for k in unknown if k in {g.name for g in dataclasses.fields(nested)}]
        if own:
            section = where.rsplit(": ", 1)[-1]
            return f"; the {f.name}'s key is " + ", ".join(f"{section}.{f.name}.{k}" for k in own)
    return ""


def _build_model_config(values: Any, where: str, default_name: str) -> ModelConfig:
    """A registered model's config from its mapping (or its name alone), ``name`` selecting the class."""
    values = {"name": values} if isinstance(values, str) else values
    if not isinstance(values, Mapping):
        raise WtalError(f"{where}: expected a model name or a mapping of its keys, found {values!r}")
    name = values.get("name", default_name)
    if not isinstance(name, str):
        raise WtalError(f"{where}.name: expected a string, found {name!r}")
    try:
        config_class = model_config_class(name)
    except WtalError as exc:
        raise WtalError(f"{where}.name: {str(exc).removeprefix('model.name: ')}") from None
    return _build(config_class, {**values, "name": name}, where)


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from nested mappings (unknown keys are errors)."""
    import wtal.models  # noqa: F401  (registers the models)

    values = dict(values or {})
    import_extensions(values.get("imports", []), source)
    model_values = values.pop("model", None) or {}
    model = _build_model_config(model_values, f"{source}: model", DEFAULT_MODEL)
    inference_values = values.get("inference")
    if inference_values is None or isinstance(inference_values, Mapping):
        # The model's own post-processing first, then what the file or the overrides say.
        own = model_values if isinstance(model_values, Mapping) else {}
        defaults = dataclasses.asdict(type(model).inference_defaults_for(own))
        values["inference"] = {**defaults, **(inference_values or {})}
    cfg = _build(Config, values, source)
    cfg.model = model
    validate(cfg, source)
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` in the nested ``tree``. A model section (``model``, ``model.base``) may be
    given by its name alone: a string there and a section under it are one section with that name."""
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        if isinstance(node.get(key), str):
            node[key] = {"name": node[key]}
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise WtalError(f"override {dotted}: '{key}' is not a section")
    if isinstance(value, str) and isinstance(node.get(keys[-1]), dict):
        node[keys[-1]]["name"] = value
    else:
        node[keys[-1]] = value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings (dotted keys, YAML values) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise WtalError(f"override {item!r}: expected key=value, e.g. train.iterations=2000")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_dotted(values, key.strip(), value)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``."""
    values: dict = {}
    source = "config"
    if path is not None:
        source = str(path)
        values = read_yaml_mapping(path, "sections data, model, train, inference, eval")
    values = apply_overrides(values, overrides or [])
    return config_from_dict(values, source)


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


_CHOICES = {
    ("data", "layout"): ("canonical", "wtalc", "per_video"),
    ("data", "modality"): ("rgb", "flow", "both"),
    ("data", "sampling"): ("resample", "random_perturb", "uniform", "crop"),
    ("data", "batch_draw"): ("epochs", "with_replacement", "epochs_short_last"),
    ("train", "select"): ("best_test", "best_val", "last"),
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "scheduler"): ("none", "cosine", "step"),
    ("eval", "units"): ("seconds", "snippets"),
}
_POSITIVE = {
    ("data", "snippet_seconds"),
    ("data", "max_seqlen"),
    ("data", "feature_dim"),
    ("train", "iterations"),
    ("train", "batch_size"),
    ("train", "lr"),
}


def validate(cfg: Config, source: str = "config") -> None:
    """Check choices and ranges; raise :class:`WtalError` naming the field."""
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise WtalError(f"{source}: {section}.{key}: expected one of {list(choices)}, found {value!r}")
    for section, key in _POSITIVE:
        value = getattr(getattr(cfg, section), key)
        if not value > 0:
            raise WtalError(f"{source}: {section}.{key}: expected a positive number, found {value!r}")
    if not 0.0 <= cfg.data.val_fraction < 1.0:
        raise WtalError(f"{source}: data.val_fraction: expected a value in [0, 1), found {cfg.data.val_fraction!r}")
    if cfg.train.select == "best_val" and cfg.data.val_fraction == 0:
        raise WtalError(
            f"{source}: train.select: best_val needs held-out training videos; set data.val_fraction "
            "(e.g. data.val_fraction=0.2)"
        )
    for key in ("eval_every", "warmup", "checkpoint_every", "weight_decay", "momentum", "min_lr", "grad_clip"):
        if not getattr(cfg.train, key) >= 0:
            raise WtalError(f"{source}: train.{key}: expected >= 0, found {getattr(cfg.train, key)!r}")
    if not 0 < cfg.train.gamma <= 1:
        raise WtalError(f"{source}: train.gamma: expected a factor in (0, 1], found {cfg.train.gamma!r}")
    if any(m < 1 for m in cfg.train.milestones):
        raise WtalError(f"{source}: train.milestones: expected steps >= 1, found {cfg.train.milestones}")
    if cfg.train.scheduler == "step" and not cfg.train.milestones:
        raise WtalError(f"{source}: train.milestones: expected at least one step with train.scheduler=step")
    if cfg.train.scheduler == "cosine" and not cfg.train.min_lr <= cfg.train.lr:
        raise WtalError(
            f"{source}: train.min_lr: expected at most train.lr ({cfg.train.lr!r}) with train.scheduler=cosine, "
            f"found {cfg.train.min_lr!r}"
        )
    cfg.inference.validate(source)
    if hasattr(cfg.model, "validate"):
        cfg.model.validate(source)
    if cfg.model.two_streams() and cfg.data.modality != "both":
        raise WtalError(
            f"{source}: data.modality: expected both with {cfg.model.describe()}, whose network reads RGB and "
            f"flow as two streams; found {cfg.data.modality!r} (for a single stream use "
            f"{cfg.model.single_stream_hint()})"
        )
