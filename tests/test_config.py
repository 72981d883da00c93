"""Configs: shipped YAML files, overrides, round trip, errors."""

import functools
import re
from pathlib import Path

import pytest
import yaml

from wtal.config import config_from_dict, config_to_dict, dump_config, load_config
from wtal.errors import WtalError

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
SWEEPS = sorted((Path(__file__).parents[1] / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    assert config_from_dict(yaml.safe_load(dump_config(cfg))) == cfg


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_give_valid_configs(path):
    from wtal.engine.sweep import read_variants

    rows = read_variants(path)
    assert rows
    base = CONFIGS[0].parent / "thumos14_synthetic.yaml"
    configs = [load_config(base, row.overrides) for row in rows]
    assert len({dump_config(c) for c in configs}) == len(rows), "two rows of the sweep train the same config"


def test_protocol_defaults():
    thumos = load_config(CONFIGS[0].parent / "thumos14.yaml")
    assert (thumos.data.layout, thumos.data.train_subset, thumos.data.test_subset) == ("wtalc", "validation", "test")
    assert thumos.data.snippet_seconds == pytest.approx(16 / 25)
    assert thumos.eval.ambiguous_filter and thumos.eval.thresholds == "thumos"
    anet = load_config(CONFIGS[0].parent / "activitynet12.yaml")
    assert (anet.data.max_seqlen, anet.model.base.topk_r, anet.eval.thresholds) == (60, 5, "anet")
    assert (thumos.model.base.name, thumos.data.sampling, thumos.data.max_seqlen) == ("co2net", "resample", 500)


def test_the_authors_schedule_config_is_the_real_config_at_reduced_widths():
    """reports/authors_schedule/README.md measures configs/thumos14.yaml's training settings through
    configs/thumos14_synthetic_authors_schedule.yaml: given the real config's data place and size,
    widths and checkpoint rule (no held-out videos), the reduced one is the real one."""
    real = load_config(CONFIGS[0].parent / "thumos14.yaml")
    keys = ["data.layout", "data.root", "data.feature_dim", "data.val_fraction", "train.select",
            "model.base.embed_dim", "model.base.attention_dim"]
    back = [f"{key}={functools.reduce(getattr, key.split('.'), real)}" for key in keys]
    assert load_config(CONFIGS[0].parent / "thumos14_synthetic_authors_schedule.yaml", back) == real


def test_overrides_are_typed():
    cfg = load_config(None, ["train.iterations=7", "train.lr=1e-3", "model.lam=2", "inference.thresholds=[0.2,0.4]"])
    assert cfg.train.iterations == 7 and cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.lam == 2.0 and isinstance(cfg.model.lam, float)
    assert cfg.inference.thresholds == [0.2, 0.4]
    assert config_to_dict(cfg)["model"]["name"] == "whole_video_bg"


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iterations=many", "train.iterations: expected an integer"),
        ("train.nonsense=1", "unknown key(s) ['nonsense']"),
        ("data.layout=zip", "data.layout: expected one of"),
        ("model.name=nope", "unknown model 'nope'"),
        ("model.window=0", "model.window: expected an integer >= 1"),
        ("train", "expected key=value"),
        ("data.val_fraction=1", "data.val_fraction: expected a value in [0, 1), found 1.0"),
        ("train.select=best_val", "train.select: best_val needs held-out training videos; set data.val_fraction"),
    ],
)
def test_bad_values_name_the_field(override, message):
    with pytest.raises(WtalError, match=re.escape(message)):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(WtalError, match="c.yaml: expected a mapping"):
        load_config(path)


# One bad value for every inference key: each is refused by load_config, naming the key.
BAD_INFERENCE = {
    "pipeline": "fastest",
    "test_seqlen": -1,
    "test_resample": "some",
    "class_threshold": ".nan",
    "class_inclusive": "maybe",
    "class_fallback": 2,
    "video_topk_divisor": 0,
    "proposal_source": "flow",
    "thresholds": "[]",
    "attention_thresholds": "[.nan]",
    "normalize": "yes please",
    "inclusive": 0,
    "require_positive": "x",
    "upsample": 0,
    "upsample_mode": "cubic",
    "min_length": -2,
    "segment_score": "mean",
    "zero_below_threshold": "no way",
    "outer_margin": -0.1,
    "margin_rule": "floor",
    "class_score_weight": ".inf",
    "class_score": "rank",
    "clip_to_duration": 5,
    "dedup": "twice",
    "nms": "greedy",
    "nms_iou": 1.5,
    "nms_inclusive": "x",
    "soft_nms_sigma": 0,
    "nms_length_offset": -1,
    "nms_offset_unit": "frames",
    "max_per_video": -5,
}


def test_every_inference_key_has_a_bad_value_here():
    from dataclasses import fields

    from wtal.localize import InferenceConfig

    assert set(BAD_INFERENCE) == {f.name for f in fields(InferenceConfig)}


@pytest.mark.parametrize("model", ["whole_video_bg", "co2net", "um"])
@pytest.mark.parametrize("key", sorted(BAD_INFERENCE))
def test_a_bad_inference_value_is_refused_at_load_naming_the_key(key, model):
    with pytest.raises(WtalError, match=re.escape(f"inference.{key}")):
        load_config(None, [f"model.name={model}", f"inference.{key}={BAD_INFERENCE[key]}"])
