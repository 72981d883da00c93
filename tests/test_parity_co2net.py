"""CO2-Net against its authors' code: the same weights give the same outputs, losses, proposals and,
in training mode with the authors' dropout masks, gradients.

``tests/fixtures/parity_co2net.npz`` and ``parity_co2net_train.npz`` were made by running the
authors' code (reduced widths, CPU); ``tests/fixtures/README.md`` says how.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.config import load_config
from wtal.models.co2net import AUTHORS_STATE_DICT_NAMES, CO2Net, CO2NetConfig
from wtal.errors import WtalError

from model_checks import assert_gradients_match_the_authors, assert_proposals_match, replay_dropout

torch.set_num_threads(1)

FIXTURE = Path(__file__).parent / "fixtures" / "parity_co2net.npz"
TRAIN = Path(__file__).parent / "fixtures" / "parity_co2net_train.npz"
WIDTH, EMBED, ATTENTION, CLASSES = 32, 32, 8, 5
SNIPPET_SECONDS = 16 / 25
TERMS = ("orig", "supp", "coactivity", "mutual", "norm", "guide", "total")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def authors_model(ref) -> CO2Net:
    cfg = CO2NetConfig(embed_dim=EMBED, attention_dim=ATTENTION)
    model = CO2Net(cfg, in_dim=WIDTH, num_classes=CLASSES)
    params = {k[len("param/") :]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("param/")}
    model.load_authors_state_dict(params)
    return model.eval()


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), atol=1e-5, rtol=1e-5)


def test_forward_and_every_loss_term_match_the_authors(ref):
    model = authors_model(ref)
    features = torch.from_numpy(ref["features"])
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        out = model(features, mask)
        losses = model.loss(out, torch.from_numpy(ref["labels"]), mask)
    close(out["cas_logits"], ref["out/cas"])
    close(out["attention"], ref["out/attn"][..., 0])
    close(out["attention_rgb"], ref["out/v_atn"][..., 0])
    close(out["attention_flow"], ref["out/f_atn"][..., 0])
    close(out["fused"], ref["out/feat"])
    for name in ("orig", "supp", "coactivity", "mutual", "norm", "guide", "total"):
        close(losses[name], ref[f"loss/{name}"])


@pytest.fixture(scope="module")
def train_ref():
    with np.load(TRAIN) as data:
        return {k: data[k] for k in data.files}


def test_training_mode_matches_the_authors_with_their_dropout_masks(train_ref, monkeypatch):
    """Training mode, dropout on: the authors' 11 recorded keep masks replayed in their order (per
    consensus module, rate 0.5: global context, local context, the attention head's two; then,
    rate 0.7, the fusion's and the classifier's two) give their outputs, every loss term, the
    total and the gradient of every parameter."""
    model = authors_model(train_ref).train()
    replay = replay_dropout(monkeypatch, train_ref)
    features, labels = torch.from_numpy(train_ref["features"]), torch.from_numpy(train_ref["labels"])
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    out = model(features, mask)
    replay.assert_all_replayed()
    close(out["cas_logits"], train_ref["train/out/cas"])
    close(out["attention"], train_ref["train/out/attn"][..., 0])
    close(out["attention_rgb"], train_ref["train/out/v_atn"][..., 0])
    close(out["attention_flow"], train_ref["train/out/f_atn"][..., 0])
    close(out["fused"], train_ref["train/out/feat"])
    losses = model.loss(out, labels, mask)
    for name in TERMS:
        close(losses[name], train_ref[f"train/loss/{name}"])
    losses["total"].backward()
    assert_gradients_match_the_authors(model, train_ref, close)


def test_padding_leaves_the_authors_numbers_unchanged(ref):
    """A batch padded to a longer length gives each video the numbers it gets alone, unpadded."""
    model = authors_model(ref)
    features = torch.from_numpy(ref["features"])
    b, t, d = features.shape
    padded = torch.cat([features, torch.full((b, 9, d), 50.0)], 1)
    mask = torch.arange(t + 9)[None, :] < t
    with torch.no_grad():
        out = model(padded, mask.expand(b, -1))
        losses = model.loss(out, torch.from_numpy(ref["labels"]), mask.expand(b, -1))
    close(out["cas_logits"][:, :t], ref["out/cas"])
    for name in ("orig", "supp", "coactivity", "mutual", "norm", "guide", "total"):
        close(losses[name], ref[f"loss/{name}"])


def test_initialisation_is_kaiming_uniform_with_zero_biases():
    torch.manual_seed(0)
    model = CO2Net(CO2NetConfig(embed_dim=64, attention_dim=16), in_dim=256, num_classes=CLASSES)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert (p == 0).all(), name
            continue
        fan_in = p.shape[1] * p.shape[2]
        bound = math.sqrt(6 / fan_in)  # kaiming_uniform_, a = 0: gain sqrt(2) x sqrt(3 / fan_in)
        assert p.abs().max() <= bound, name
        if p.numel() >= 1000:
            assert abs(p.std().item() - bound / math.sqrt(3)) < 0.05 * bound, name
    torch.manual_seed(0)
    default = CO2Net(CO2NetConfig(embed_dim=64, attention_dim=16, init="torch"), in_dim=256, num_classes=CLASSES)
    assert (default.fusion.bias != 0).any()


def test_mapping_covers_every_parameter_and_refuses_unknown_names(ref):
    params = {k[len("param/") :] for k in ref if k.startswith("param/")}
    assert params == set(AUTHORS_STATE_DICT_NAMES)
    model = authors_model(ref)
    assert {v for v in AUTHORS_STATE_DICT_NAMES.values() if v} == set(model.state_dict())
    with pytest.raises(WtalError, match="vAttn.extra.weight"):
        model.load_authors_state_dict({"vAttn.extra.weight": torch.zeros(1)})


def test_post_processing_reproduces_the_authors_proposals(ref):
    """The model's declared inference defaults turn the authors' score arrays into their proposals."""
    model = authors_model(ref)
    cfg = load_config(None, ["model.name=co2net"]).inference
    for v in range(3):
        cas = torch.from_numpy(ref[f"pp{v}/cas"])[None]  # [1, T, C+1] logits
        attn = torch.from_numpy(ref[f"pp{v}/attn"])[None, :, 0]  # [1, T]
        outputs = {"cas_logits": cas, "attention": attn}
        theirs = ref[f"pp{v}/proposals"]
        assert_proposals_match(model, outputs, cfg, SNIPPET_SECONDS, 0.0, theirs, unit=SNIPPET_SECONDS)


def test_the_authors_inference_settings_are_the_default_and_overrides_win():
    cfg = load_config(None, ["model.name=co2net"]).inference
    assert cfg.thresholds == pytest.approx([0.1 + k * 0.8 / 9 for k in range(10)])
    assert (cfg.normalize, cfg.inclusive, cfg.dedup, cfg.margin_rule) == (False, False, False, "ceil_floor")
    assert (cfg.nms, cfg.soft_nms_sigma, cfg.nms_length_offset, cfg.max_per_video) == ("soft_nms", 0.3, 1.0, 0)
    assert (cfg.class_threshold, cfg.class_score_weight, cfg.video_topk_divisor, cfg.upsample) == (0.2, 0.2, 10, 1)
    changed = load_config(None, ["model.name=co2net", "inference.nms=nms", "inference.max_per_video=100"]).inference
    assert (changed.nms, changed.max_per_video, changed.soft_nms_sigma) == ("nms", 100, 0.3)
    plain = load_config(None, ["model.name=mil"]).inference  # a model without declared settings
    assert (plain.normalize, plain.inclusive, plain.nms, plain.max_per_video) == (True, True, "nms", 100)
