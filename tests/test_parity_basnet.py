"""BaS-Net parity: wtal's model against numbers from the authors' code (tests/fixtures/parity_basnet.npz).

The fixture holds the authors' BaS_Net (Pilhyeon/BaSNet-pytorch, widths patched to 16 / 24) at
its seeded default initialisation, a batch of 4 videos x 32 snippets x 32 features with 5
classes, the eval-mode forward outputs, the authors' test-time min-max normalisation of the
suppression CAS and every term of BaS_Net_loss (alpha 1e-4). tests/fixtures/parity_basnet_train.npz
holds the same model in training mode on another batch: the two dropout keep masks it drew
(``mask/<i>``), its outputs, every loss term and the gradient of every parameter. A third fixture,
tests/fixtures/parity_basnet_proposals.npz, holds the proposals their test loop makes from seeded
suppression-branch logits of 750-snippet videos. See tests/fixtures/README.md.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.config import load_config
from wtal.engine.inference import scored_snippets
from wtal.models import build_model
from wtal.models.basnet import BaSNetConfig

from model_checks import (
    assert_authors_mapping,
    assert_gradients_match_the_authors,
    assert_proposals_match,
    assert_pytorch_default_conv_init,
    assert_seeded_init_equals_the_authors,
    replay_dropout,
)

torch.set_num_threads(1)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "parity_basnet.npz"
PROPOSALS = Path(__file__).resolve().parent / "fixtures" / "parity_basnet_proposals.npz"
TRAIN = Path(__file__).resolve().parent / "fixtures" / "parity_basnet_train.npz"
SNIPPET_SECONDS = 16 / 25  # the authors' 16 frames per snippet at 25 fps
TOL = {"atol": 1e-5, "rtol": 1e-5}
LOSS_KEYS = {"total": "loss_total", "base": "loss_base", "supp": "loss_supp", "norm": "loss_norm"}
EXTRA = 5  # padded snippets appended to every video in the padded check


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    with np.load(FIXTURE) as data:
        return {key: torch.from_numpy(np.asarray(data[key])) for key in data.files}


def authors_state(ref) -> dict[str, torch.Tensor]:
    return {key[len("param/") :]: value for key, value in ref.items() if key.startswith("param/")}


def build(ref, **kw):
    """wtal's BaS-Net at the fixture's widths, seeded as the authors' model was."""
    state = authors_state(ref)
    cfg = BaSNetConfig(
        embed_dim=state["cas_module.conv_1.0.weight"].shape[0],
        attention_dim=state["filter_module.conv_1.0.weight"].shape[0],
        norm_weight=float(ref["alpha"]),
        **kw,
    )
    torch.manual_seed(int(ref["seed"]))
    _, _, width = ref["features"].shape
    return build_model(cfg, in_dim=width, num_classes=ref["labels"].shape[1])


def loaded(ref, **kw):
    model = build(ref, **kw)
    model.load_authors_state_dict(authors_state(ref))
    return model.eval()


def test_mapping_covers_every_parameter(ref):
    assert_authors_mapping(build(ref), authors_state(ref), "cas_module.conv_4.weight")


def test_seeded_initialisation_matches_the_authors(ref):
    """Same seed, same default PyTorch initialisation, same creation order -> the same weights."""
    assert_seeded_init_equals_the_authors(build(ref), authors_state(ref))


def test_default_initialisation_statistics():
    """The authors keep PyTorch's default Conv1d initialisation."""
    torch.manual_seed(0)
    model = build_model(BaSNetConfig(embed_dim=256, attention_dim=64), in_dim=128, num_classes=20)
    assert_pytorch_default_conv_init(model)
    assert model.classifier.bias is None


def test_forward_matches_the_authors(ref):
    model = loaded(ref)
    features = ref["features"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        out = model(features, mask)
        torch.testing.assert_close(out["attention"], ref["out/fore_weights"][..., 0], **TOL)
        torch.testing.assert_close(out["base_logits"], ref["out/cas_base"], **TOL)
        torch.testing.assert_close(out["supp_logits"], ref["out/cas_supp"], **TOL)
        torch.testing.assert_close(model.video_probabilities(out["base_logits"], mask), ref["out/score_base"], **TOL)
        torch.testing.assert_close(model.video_probabilities(out["supp_logits"], mask), ref["out/score_supp"], **TOL)


def test_loss_matches_the_authors(ref):
    model = loaded(ref)
    features, labels = ref["features"], ref["labels"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        losses = model.loss(model(features, mask), labels, mask)
    for ours, theirs in LOSS_KEYS.items():
        torch.testing.assert_close(losses[ours], ref[f"loss/{theirs}"], **TOL)


@pytest.fixture(scope="module")
def train_ref() -> dict[str, torch.Tensor]:
    with np.load(TRAIN) as data:
        return {key: torch.from_numpy(np.asarray(data[key])) for key in data.files}


def test_training_mode_matches_the_authors_with_their_dropout_masks(train_ref, monkeypatch):
    """Training mode, dropout on: the authors' two recorded keep masks replayed (rate 0.7 before
    the classifier, the base branch's draw first, then the suppression branch's) give their
    outputs, every loss term, the total and the gradient of every parameter."""
    model = loaded(train_ref).train()
    replay = replay_dropout(monkeypatch, train_ref)
    features, labels = train_ref["features"], train_ref["labels"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    out = model(features, mask)
    replay.assert_all_replayed()
    torch.testing.assert_close(out["attention"], train_ref["train/out/fore_weights"][..., 0], **TOL)
    for branch in ("base", "supp"):
        logits = out[f"{branch}_logits"]
        torch.testing.assert_close(logits, train_ref[f"train/out/cas_{branch}"], **TOL)
        scores = model.video_probabilities(logits, mask)
        torch.testing.assert_close(scores, train_ref[f"train/out/score_{branch}"], **TOL)
    losses = model.loss(out, labels, mask)
    for ours, theirs in LOSS_KEYS.items():
        torch.testing.assert_close(losses[ours], train_ref[f"train/loss/{theirs}"], **TOL)
    losses["total"].backward()
    assert_gradients_match_the_authors(model, train_ref, partial(torch.testing.assert_close, **TOL))


def test_scores_match_the_authors_test_time_quantities(ref):
    """cas: the authors' min-max normalised suppression CAS (action channels); video_scores: their
    score_supp (top-k divisor 8)."""
    model = loaded(ref)
    features = ref["features"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        scores = model.scores(model(features, mask), mask, video_topk_divisor=8)
    torch.testing.assert_close(scores["cas"], ref["out/cas_supp_minmax"][..., :-1], **TOL)
    torch.testing.assert_close(scores["video_scores"], ref["out/score_supp"][:, :-1], **TOL)


def test_padding_changes_nothing(ref):
    """The fixture batch padded with garbage snippets gives the authors' numbers on the real ones."""
    model = loaded(ref)
    features, labels = ref["features"], ref["labels"]
    b, t, d = features.shape
    padded = torch.cat([features, torch.full((b, EXTRA, d), 50.0)], 1)
    mask = torch.arange(t + EXTRA)[None].expand(b, -1) < t
    with torch.no_grad():
        out = model(padded, mask)
        losses = model.loss(out, labels, mask)
        scores = model.scores(out, mask, video_topk_divisor=8)
    torch.testing.assert_close(out["supp_logits"][:, :t], ref["out/cas_supp"], **TOL)
    torch.testing.assert_close(out["base_logits"][:, :t], ref["out/cas_base"], **TOL)
    for ours, theirs in LOSS_KEYS.items():
        torch.testing.assert_close(losses[ours], ref[f"loss/{theirs}"], **TOL)
    torch.testing.assert_close(scores["cas"][:, :t], ref["out/cas_supp_minmax"][..., :-1], **TOL)
    torch.testing.assert_close(scores["video_scores"], ref["out/score_supp"][:, :-1], **TOL)


def test_post_processing_reproduces_the_authors_proposals():
    """The declared inference defaults turn the suppression branch's logits of the authors' test
    videos (750 resampled snippets each) into their test loop's proposals, in seconds."""
    cfg = load_config(None, ["model.name=basnet"]).inference
    model = build_model(BaSNetConfig(embed_dim=4, attention_dim=4), in_dim=4, num_classes=5).eval()
    with np.load(PROPOSALS) as data:
        ref = {key: data[key] for key in data.files}
    found = 0
    for v, length in enumerate(ref["lengths"].tolist()):
        picks = scored_snippets(length, cfg.test_seqlen, cfg.test_resample)
        np.testing.assert_array_equal(picks, ref[f"v{v}/sample_idx"])
        logits = torch.from_numpy(ref[f"v{v}/cas_supp"])[None]  # [1, 750, C + 1]
        outputs = {"supp_logits": logits, "attention": torch.zeros(logits.shape[:2])}
        seconds = SNIPPET_SECONDS * length / picks.size  # one resampled snippet
        duration = 0.5 * length * SNIPPET_SECONDS  # shorter than the segments reach: the authors clip nothing
        found += assert_proposals_match(model, outputs, cfg, seconds, duration, ref[f"v{v}/proposals"])
    assert found > 500  # many proposals, several classes per video, one video without any


def test_the_authors_inference_settings_are_the_default_and_overrides_win():
    cfg = load_config(None, ["model.name=basnet"]).inference
    assert (cfg.test_seqlen, cfg.test_resample, cfg.video_topk_divisor) == (750, "all", 8)
    assert (cfg.class_threshold, cfg.class_inclusive, cfg.class_fallback) == (0.25, True, False)
    assert cfg.proposal_source == "cas" and cfg.thresholds == pytest.approx([0.025 * i for i in range(10)])
    assert (cfg.normalize, cfg.inclusive, cfg.require_positive) == (False, True, True)
    assert (cfg.upsample, cfg.upsample_mode, cfg.min_length) == (24, "linear", 0)
    assert (cfg.segment_score, cfg.zero_below_threshold, cfg.outer_margin, cfg.margin_rule) == (
        "contrast", True, 0.25, "ceil_floor"
    )
    assert (cfg.class_score_weight, cfg.class_score, cfg.clip_to_duration, cfg.dedup) == (0.2, "binary", False, False)
    assert (cfg.nms, cfg.nms_iou, cfg.nms_inclusive) == ("nms", 0.7, True)
    assert (cfg.nms_length_offset, cfg.nms_offset_unit, cfg.max_per_video) == (1.0, "seconds", 0)
    changed = load_config(None, ["model.name=basnet", "inference.test_seqlen=0", "inference.upsample=1"]).inference
    assert (changed.test_seqlen, changed.upsample, changed.upsample_mode) == (0, 1, "linear")
