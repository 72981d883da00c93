"""Parity with W-TALC's own code (sujoyp/wtalc-pytorch): forward, MILL, CASL and gradients.

tests/fixtures/parity_wtalc.npz holds a batch of 8 videos (D = H = 16, C = 5, lengths 20..32,
zero rows as padding; the first 6 videos are 3 same-class pairs), the authors' freshly
initialised parameters under their state_dict names (``param/<name>``), their eval-mode
outputs (``out/``), their MILL, CASL and total loss (Lambda 0.5; ``loss/``) and the gradients
of that total (``grad/<name>``). tests/fixtures/parity_wtalc_train.npz holds the same quantities
for another batch with the authors' model in training mode, its dropout on, and the keep mask it
drew (``mask/0``). tests/fixtures/parity_wtalc_proposals.npz holds the segments
their detection code (detectionMAP.getLocMAP) predicts from seeded logits of 8 test videos. See
tests/fixtures/README.md for how they are made.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.config import load_config
from wtal.errors import WtalError
from wtal.losses import topk_mean, video_cross_entropy
from wtal.models import build_model
from wtal.models.wtalc import AUTHORS_STATE_DICT_NAMES, WTALC, WTALCConfig

from model_checks import assert_gradients_match_the_authors, assert_proposals_match, replay_dropout

torch.set_num_threads(1)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "parity_wtalc.npz"
PROPOSALS = Path(__file__).resolve().parent / "fixtures" / "parity_wtalc_proposals.npz"
TRAIN = Path(__file__).resolve().parent / "fixtures" / "parity_wtalc_train.npz"
SNIPPET_SECONDS = 16 / 25  # the authors' 16 frames per snippet at 25 fps
TOL = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURE) as data:
        return {key: torch.from_numpy(np.asarray(data[key])) for key in data.files}


def authors_model(fixture) -> WTALC:
    """wtal's W-TALC at the fixture's widths, holding the authors' parameters, in eval mode."""
    features, labels = fixture["features"], fixture["labels"]
    cfg = WTALCConfig(embed_dim=features.shape[-1], similar_pairs=int(fixture["n_similar"]))
    model = build_model(cfg, in_dim=features.shape[-1], num_classes=labels.shape[-1])
    state = {key[len("param/") :]: value for key, value in fixture.items() if key.startswith("param/")}
    model.load_authors_state_dict(state)
    return model.eval()


def batch(fixture, extra_padding: int = 0):
    """features [B, T + extra, D] (garbage on the extra padding), mask [B, T + extra], labels [B, C]."""
    features, lengths = fixture["features"], fixture["lengths"]
    if extra_padding:
        garbage = torch.full((features.shape[0], extra_padding, features.shape[2]), 37.0)
        features = torch.cat([features, garbage], 1)
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    return features, mask, fixture["labels"]


def test_forward_matches_the_authors(fixture):
    model = authors_model(fixture)
    features, mask, _ = batch(fixture)
    with torch.no_grad():
        out = model(features, mask)
    for ours, theirs in (("embedding", "out/embedding"), ("cas_logits", "out/element_logits")):
        torch.testing.assert_close(out[ours][mask], fixture[theirs][mask], **TOL)


@pytest.mark.parametrize("extra_padding", [0, 9])
def test_losses_match_the_authors(fixture, extra_padding):
    model = authors_model(fixture)
    features, mask, labels = batch(fixture, extra_padding)
    with torch.no_grad():
        losses = model.loss(model(features, mask), labels, mask)
    assert set(losses) == {"total", "mil", "casl"}
    for key in ("mil", "casl", "total"):
        torch.testing.assert_close(losses[key], fixture[f"loss/{key}"], **TOL)


def test_gradients_match_the_authors(fixture):
    model = authors_model(fixture)
    features, mask, labels = batch(fixture)
    model.loss(model(features, mask), labels, mask)["total"].backward()
    assert_gradients_match_the_authors(model, fixture, partial(torch.testing.assert_close, **TOL))


@pytest.fixture(scope="module")
def train_fixture():
    with np.load(TRAIN) as data:
        return {key: torch.from_numpy(np.asarray(data[key])) for key in data.files}


def test_training_mode_matches_the_authors_with_their_dropout_masks(train_fixture, monkeypatch):
    """Training mode, dropout on: the authors' recorded keep mask replayed (one draw, rate 0.7,
    after the fully connected layer) gives their outputs, MILL, CASL, total and every gradient."""
    model = authors_model(train_fixture).train()
    replay = replay_dropout(monkeypatch, train_fixture)
    features, mask, labels = batch(train_fixture)
    out = model(features, mask)
    replay.assert_all_replayed()
    for ours, theirs in (("embedding", "train/out/embedding"), ("cas_logits", "train/out/element_logits")):
        torch.testing.assert_close(out[ours][mask], train_fixture[theirs][mask], **TOL)
    losses = model.loss(out, labels, mask)
    for key in ("mil", "casl", "total"):
        torch.testing.assert_close(losses[key], train_fixture[f"train/loss/{key}"], **TOL)
    losses["total"].backward()
    assert_gradients_match_the_authors(model, train_fixture, partial(torch.testing.assert_close, **TOL))


def test_fixture_tells_ceil_k_from_floor_k(fixture):
    """The MIL-only baseline's k = T // 8 misses the fixture: the parity test can fail."""
    model = authors_model(fixture)
    features, mask, labels = batch(fixture)
    with torch.no_grad():
        floor_k = video_cross_entropy(topk_mean(model(features, mask)["cas_logits"], mask, 8), labels)
    assert not torch.allclose(floor_k, fixture["loss/mil"], **TOL)


def test_state_dict_mapping(fixture):
    state = {key[len("param/") :]: value for key, value in fixture.items() if key.startswith("param/")}
    assert set(state) == set(AUTHORS_STATE_DICT_NAMES)
    mapped = {v for v in AUTHORS_STATE_DICT_NAMES.values() if v is not None}
    assert mapped == set(authors_model(fixture).state_dict())
    with pytest.raises(WtalError, match="fc2.weight"):
        authors_model(fixture).load_authors_state_dict({**state, "fc2.weight": state["fc.weight"]})


def test_xavier_uniform_weights_zero_biases():
    """The authors initialise every linear weight Xavier-uniform and every bias to 0
    (torch's default would draw both from U(+-1/sqrt(fan_in)), a narrower range here)."""
    torch.manual_seed(0)
    in_dim, hidden, classes = 96, 64, 20
    model = build_model(WTALCConfig(embed_dim=hidden), in_dim=in_dim, num_classes=classes)
    for layer, fan_in, fan_out in ((model.fc, in_dim, hidden), (model.classifier, hidden, classes)):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach()
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.97 * bound > 1.1 / math.sqrt(fan_in)
        assert abs(w.std().item() - bound / math.sqrt(3.0)) < 0.05 * bound
        assert torch.equal(layer.bias.detach(), torch.zeros(fan_out))


def test_post_processing_reproduces_the_authors_segments():
    """The declared inference defaults turn the raw logits of the authors' test videos into the
    segments (start, end in snippets, score, class) their detection code predicts."""
    cfg = load_config(None, ["model.name=wtalc"]).inference
    with np.load(PROPOSALS) as data:
        ref = {key: data[key] for key in data.files}
    classes = ref["v0/logits"].shape[1]
    model = build_model(WTALCConfig(embed_dim=4), in_dim=4, num_classes=classes).eval()
    found = 0
    for v, length in enumerate(ref["lengths"].tolist()):
        logits = torch.from_numpy(ref[f"v{v}/logits"])[None]  # [1, T, C]
        duration = 0.5 * length * SNIPPET_SECONDS  # shorter than the segments reach: the authors clip nothing
        found += assert_proposals_match(
            model, {"cas_logits": logits}, cfg, SNIPPET_SECONDS, duration, ref[f"v{v}/proposals"], unit=SNIPPET_SECONDS
        )
    assert found > 100


def test_the_authors_inference_settings_are_the_default_and_overrides_win():
    cfg = load_config(None, ["model.name=wtalc"]).inference
    assert (cfg.test_seqlen, cfg.video_topk_divisor) == (0, 8)
    assert (cfg.class_threshold, cfg.class_inclusive, cfg.class_fallback) == (0.0, False, False)
    assert (cfg.proposal_source, cfg.thresholds, cfg.normalize, cfg.inclusive) == ("cas", [0.5], True, False)
    assert (cfg.upsample, cfg.min_length, cfg.segment_score, cfg.zero_below_threshold) == (1, 2, "max", False)
    assert (cfg.class_score_weight, cfg.class_score, cfg.clip_to_duration) == (0.7, "score", False)
    assert (cfg.nms, cfg.max_per_video, cfg.dedup) == ("none", 0, False)
    changed = load_config(None, ["model.name=wtalc", "inference.nms=nms", "inference.max_per_video=100"]).inference
    assert (changed.nms, changed.max_per_video, changed.segment_score) == ("nms", 100, "max")
