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
from wtal.io import read_yaml_mapping
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
class InferenceConfig:
    """Post-processing (``wtal.localize``). These are the defaults of a model that declares none;
    a model config's ``inference_defaults`` (its authors' post-processing) replaces them, and
    ``inference.*`` keys in a YAML file or an override replace both."""

    test_seqlen: int = 0  # score each test video on this many snippets, at floor(i * T / n) (0: all its T snippets)
    test_resample: str = "longer"  # longer: resample only videos longer than test_seqlen | all: every video
    class_threshold: float = 0.2  # keep classes whose video score passes this (class_inclusive, class_fallback)
    class_inclusive: bool = True  # a class passes when its video score >= class_threshold (false: > it)
    class_fallback: bool = True  # when no class passes, keep the best one (false: the video gets no detections)
    video_topk_divisor: int = 10  # video score: mean of top T // divisor snippets
    proposal_source: str = "attention"  # attention | cas | both: what is thresholded
    thresholds: list[float] = field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )  # proposal thresholds (of the cas; of the attention too unless attention_thresholds is set)
    attention_thresholds: list[float] = field(default_factory=list)  # thresholds of the attention (empty: thresholds)
    normalize: bool = True  # min-max normalise each proposal sequence before thresholding (false: raw values)
    inclusive: bool = True  # a snippet is active when its value >= the threshold (false: > the threshold)
    require_positive: bool = False  # an active snippet must also be > 0
    upsample: int = 1  # upsample each proposal and scoring sequence this many times before thresholding
    upsample_mode: str = "repeat"  # repeat: each snippet upsample times | linear: interpolate and extrapolate
    min_length: int = 0  # drop candidates shorter than this many (upsampled) snippets
    segment_score: str = "contrast"  # contrast: outer-inner contrast of the cas | max: the cas's maximum inside
    zero_below_threshold: bool = False  # score a cas candidate on the cas with values below its threshold set to 0
    outer_margin: float = 0.25  # outer-inner contrast margin, as a fraction of the length
    margin_rule: str = "round"  # round: max(1, round(m * len)) each side | ceil_floor: ceil before, floor after
    class_score_weight: float = 0.2  # weight of the class term added to each segment's score
    class_score: str = "score"  # class term: score: the video score | binary: 1 if the class passed class_threshold
    clip_to_duration: bool = True  # clip segments to [0, duration] when the video's duration is known
    dedup: bool = True  # merge candidates with the same class, start and end (keeping the best) before NMS
    nms: str = "nms"  # nms | soft_nms | none
    nms_iou: float = 0.6  # IoU for hard NMS
    nms_inclusive: bool = False  # hard NMS drops boxes whose IoU >= nms_iou (false: > nms_iou)
    soft_nms_sigma: float = 0.3  # Gaussian soft-NMS sigma
    nms_length_offset: float = 0.0  # added to each length and overlap in NMS IoU, in nms_offset_unit
    nms_offset_unit: str = "snippets"  # unit of nms_length_offset: snippets (upsampled) | seconds
    max_per_video: int = 100  # keep the best detections per video after NMS (0: all)


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
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise WtalError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{where}.{key}")
        else:
            kwargs[key] = _convert(value, hint, f"{where}.{key}")
    return cls(**kwargs)


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config` from nested mappings (unknown keys are errors)."""
    import wtal.models  # noqa: F401  (registers the models)

    values = dict(values or {})
    model_values = dict(values.pop("model", None) or {})
    model_name = model_values.get("name", DEFAULT_MODEL)
    if not isinstance(model_name, str):
        raise WtalError(f"{source}: model.name: expected a string, found {model_name!r}")
    try:
        model_cls = model_config_class(model_name)
    except WtalError as exc:
        raise WtalError(f"{source}: {exc}") from None
    model_values["name"] = model_name
    inference_values = values.get("inference")
    if inference_values is None or isinstance(inference_values, Mapping):
        # The model's own post-processing first, then what the file or the overrides say.
        values["inference"] = {**model_cls.inference_defaults_for(model_values), **(inference_values or {})}
    cfg = _build(Config, values, source)
    cfg.model = _build(model_cls, model_values, f"{source}: model")
    validate(cfg, source)
    return cfg


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise WtalError(f"override {dotted}: '{key}' is not a section")
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
    ("train", "select"): ("best_test", "best_val", "last"),
    ("train", "optimizer"): ("adam", "adamw", "sgd"),
    ("train", "scheduler"): ("none", "cosine", "step"),
    ("inference", "proposal_source"): ("attention", "cas", "both"),
    ("inference", "nms"): ("nms", "soft_nms", "none"),
    ("inference", "margin_rule"): ("round", "ceil_floor"),
    ("inference", "test_resample"): ("longer", "all"),
    ("inference", "upsample_mode"): ("repeat", "linear"),
    ("inference", "segment_score"): ("contrast", "max"),
    ("inference", "class_score"): ("score", "binary"),
    ("inference", "nms_offset_unit"): ("snippets", "seconds"),
    ("eval", "units"): ("seconds", "snippets"),
}
_POSITIVE = {
    ("data", "snippet_seconds"),
    ("data", "max_seqlen"),
    ("data", "feature_dim"),
    ("train", "iterations"),
    ("train", "batch_size"),
    ("train", "lr"),
    ("inference", "video_topk_divisor"),
    ("inference", "upsample"),
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
    if not cfg.inference.thresholds:
        raise WtalError(f"{source}: inference.thresholds: expected at least one threshold")
    for key in ("thresholds", "attention_thresholds"):
        values = getattr(cfg.inference, key)
        if cfg.inference.normalize and not all(0.0 <= t <= 1.0 for t in values):
            raise WtalError(
                f"{source}: inference.{key}: expected values in [0, 1] (the proposal sequence is min-max "
                f"normalised), found {values}"
            )
    for key in ("test_seqlen", "min_length", "max_per_video"):
        if getattr(cfg.inference, key) < 0:
            raise WtalError(f"{source}: inference.{key}: expected >= 0, found {getattr(cfg.inference, key)!r}")
    if cfg.inference.nms_length_offset < 0:
        raise WtalError(
            f"{source}: inference.nms_length_offset: expected >= 0, found {cfg.inference.nms_length_offset!r}"
        )
    if hasattr(cfg.model, "validate"):
        cfg.model.validate(source)
    if cfg.model.two_streams() and cfg.data.modality != "both":
        raise WtalError(
            f"{source}: data.modality: expected both with {cfg.model.describe()}, whose network reads RGB and "
            f"flow as two streams; found {cfg.data.modality!r} (for a single stream use "
            f"{cfg.model.single_stream_hint()})"
        )
