"""UM parity: wtal's model against numbers from the authors' code (tests/fixtures/parity_um.npz).

The fixture holds the authors' Model (Pilhyeon/WTAL-Uncertainty-Modeling, embedding width
patched to 32) at its seeded default initialisation, 32 input features, 5 classes, r_act 9,
r_bkg 4, and UM_loss with margin 13.5, alpha (our um_weight) 0.01, beta (our be_weight) 0.5:

* ``batch/*``: one call on 4 videos x 40 snippets;
* ``ragged/*``: 4 videos of 37, 29, 18 and 11 snippets, each run alone (zero-padded in the file);
* ``ragged_eval/*``: the same videos in eval mode with the authors' test-time actionness and
  normalised CAS (test.py).

Their CAS dropout is off; their snippet dropout of the pseudo action/background selection is on
and its draw is recorded as ``keep``, which our forward accepts. tests/fixtures/parity_um_train.npz
holds the same model in training mode with both dropouts on (``train/*``, another batch): the keep
masks they drew in call order (``mask/0`` the CAS dropout, ``mask/1`` the snippet dropout), the
outputs, every loss term and the gradient of every parameter. A third fixture,
tests/fixtures/parity_um_proposals.npz, holds the proposals their test loop makes from seeded
logits and actionness of videos scored on up to 750 snippets. See tests/fixtures/README.md.
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
from wtal.models.um import UMConfig

from model_checks import (
    assert_authors_mapping,
    assert_gradients_match_the_authors,
    assert_proposals_match,
    assert_pytorch_default_conv_init,
    assert_seeded_init_equals_the_authors,
    replay_dropout,
)

torch.set_num_threads(1)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "parity_um.npz"
PROPOSALS = Path(__file__).resolve().parent / "fixtures" / "parity_um_proposals.npz"
TRAIN = Path(__file__).resolve().parent / "fixtures" / "parity_um_train.npz"
SNIPPET_SECONDS = 16 / 25  # the authors' 16 frames per snippet at 25 fps
TOL = {"atol": 1e-5, "rtol": 1e-5}
LOSS_KEYS = {"total": "loss_total", "cls": "loss_cls", "um": "loss_um", "be": "loss_be"}
EXTRA = 5  # padded snippets appended to the ragged batch


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    with np.load(FIXTURE) as data:
        return {key: torch.from_numpy(np.asarray(data[key])) for key in data.files}


def authors_state(ref) -> dict[str, torch.Tensor]:
    return {key[len("param/") :]: value for key, value in ref.items() if key.startswith("param/")}


def build(ref, **kw):
    """wtal's UM at the fixture's widths and loss settings, seeded as the authors' model was."""
    cfg = UMConfig(
        embed_dim=int(ref["config/h"]),
        r_act=int(ref["config/r_act"]),
        r_bkg=int(ref["config/r_bkg"]),
        margin=float(ref["config/margin"]),
        um_weight=float(ref["config/alpha"]),
        be_weight=float(ref["config/beta"]),
        **kw,
    )
    torch.manual_seed(int(ref["config/seed"]))
    return build_model(cfg, in_dim=int(ref["config/d"]), num_classes=int(ref["config/c"]))


def loaded(ref, **kw):
    model = build(ref, **kw)
    model.load_authors_state_dict(authors_state(ref))
    return model.eval()  # the fixture was made with the CAS dropout off


def ragged_batch(ref, padding_value: float = 1e3):
    """The ragged videos as one padded batch (EXTRA more snippets of garbage): features, mask."""
    lengths = ref["ragged/lengths"]
    features = torch.nn.functional.pad(ref["ragged/features"], (0, 0, 0, EXTRA))
    mask = torch.arange(features.shape[1])[None, :] < lengths[:, None]
    features[~mask] = padding_value
    return features, mask


def padded(x: torch.Tensor) -> torch.Tensor:
    """A fixture array [B, T, ...] extended with EXTRA zero snippets, as ragged_batch pads."""
    return torch.cat([x, x.new_zeros((x.shape[0], EXTRA) + x.shape[2:])], 1)


def selection_weights(sel: torch.Tensor) -> torch.Tensor:
    """0/1 selection [B, T] -> weights 1/k on the selected snippets."""
    return sel / sel.sum(1, keepdim=True)


def test_mapping_covers_every_parameter(ref):
    assert_authors_mapping(build(ref), authors_state(ref), "cas_module.conv.1.weight")


def test_seeded_initialisation_matches_the_authors(ref):
    """Same seed, same default PyTorch initialisation, same creation order -> the same weights."""
    assert_seeded_init_equals_the_authors(build(ref), authors_state(ref))


def test_default_initialisation_statistics():
    """The authors keep PyTorch's default Conv1d initialisation."""
    torch.manual_seed(0)
    model = build_model(UMConfig(embed_dim=256), in_dim=128, num_classes=20)
    assert_pytorch_default_conv_init(model)
    assert model.classifier.bias is None


def padded_like(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A fixture array extended with zero snippets to the mask's length."""
    return x if x.shape[1] == mask.shape[1] else padded(x)


def check_forward(out, ref, part: str, mask: torch.Tensor) -> None:
    """Forward outputs against the authors' (padding of the fixture arrays is masked out)."""
    m = mask[..., None].float()
    torch.testing.assert_close(out["embedding"] * m, padded_like(ref[f"{part}/embedding"], mask), **TOL)
    torch.testing.assert_close(out["cas_logits"] * m, padded_like(ref[f"{part}/cas"], mask), **TOL)
    cas_softmax = torch.softmax(out["cas_logits"], -1) * m
    torch.testing.assert_close(cas_softmax, padded_like(ref[f"{part}/cas_softmax"], mask), **TOL)
    torch.testing.assert_close(torch.softmax(out["video_logits"], -1), ref[f"{part}/score_act"], **TOL)
    torch.testing.assert_close(torch.softmax(out["bkg_logits"], -1), ref[f"{part}/score_bkg"], **TOL)
    for key in ("act", "bkg"):
        expected = padded_like(selection_weights(ref[f"{part}/{key}_sel"]), mask)
        torch.testing.assert_close(out[f"{key}_weights"], expected, atol=0, rtol=0)


def test_forward_matches_the_authors(ref):
    model = loaded(ref)
    features = ref["batch/features"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        out = model(features, mask, keep=ref["batch/keep"].bool())
    check_forward(out, ref, "batch", mask)


def test_loss_matches_the_authors(ref):
    model = loaded(ref)
    features, labels = ref["batch/features"], ref["batch/labels"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        losses = model.loss(model(features, mask, keep=ref["batch/keep"].bool()), labels, mask)
    for ours, theirs in LOSS_KEYS.items():
        torch.testing.assert_close(losses[ours], ref[f"batch/{theirs}"], **TOL)


@pytest.fixture(scope="module")
def train_ref() -> dict[str, torch.Tensor]:
    with np.load(TRAIN) as data:
        return {key: torch.from_numpy(np.asarray(data[key])) for key in data.files}


def test_training_mode_matches_the_authors_with_their_dropout_masks(train_ref, monkeypatch):
    """Training mode, both dropouts on: the authors' two recorded draws replayed in their order
    (the CAS dropout before the classifier, rate 0.7, then the snippet dropout of the pseudo
    action/background mining, rate 0.7, which wtal draws with ``torch.rand_like``) give their
    outputs, selections, every loss term, the total and the gradient of every parameter."""
    model = loaded(train_ref).train()
    replay = replay_dropout(monkeypatch, train_ref)

    def snippet_draw(magnitude):
        """The draw's stand-in: 1 on a kept snippet, 0 on a dropped one, so that wtal's
        ``>= select_dropout`` keeps the snippets the authors' recorded draw kept."""
        return replay.take(magnitude.shape, model.cfg.select_dropout).to(magnitude.dtype)

    monkeypatch.setattr(torch, "rand_like", snippet_draw)
    features, labels = train_ref["train/features"], train_ref["train/labels"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    out = model(features, mask)
    replay.assert_all_replayed()
    check_forward(out, train_ref, "train", mask)
    losses = model.loss(out, labels, mask)
    for ours, theirs in LOSS_KEYS.items():
        torch.testing.assert_close(losses[ours], train_ref[f"train/{theirs}"], **TOL)
    losses["total"].backward()
    assert_gradients_match_the_authors(model, train_ref, partial(torch.testing.assert_close, **TOL))


def test_padded_batch_matches_the_authors_videos_run_alone(ref):
    """Videos of different lengths padded with garbage into one batch: every output and loss term
    equals the authors' per-video runs (each UM loss term is a mean over videos)."""
    model = loaded(ref)
    features, mask = ragged_batch(ref)
    with torch.no_grad():
        out = model(features, mask, keep=padded(ref["ragged/keep"]).bool())
        losses = model.loss(out, ref["ragged/labels"], mask)
    check_forward(out, ref, "ragged", mask)
    for ours, theirs in LOSS_KEYS.items():
        torch.testing.assert_close(losses[ours], ref[f"ragged/{theirs}_per_video"].mean(), **TOL)


def test_scores_match_the_authors_test_time_quantities(ref):
    """Eval mode (every snippet may be mined): attention is the authors' actionness
    (magnitudes normalised between the pseudo background and action means), cas their min-max
    normalised softmax(S) * actionness, video_scores their score_act (top-k divisor r_act)."""
    model = loaded(ref)
    features, mask = ragged_batch(ref)
    with torch.no_grad():
        out = model(features, mask)
        scores = model.scores(out, mask, video_topk_divisor=int(ref["config/r_act"]))
    for key in ("act", "bkg"):
        expected = padded(selection_weights(ref[f"ragged_eval/{key}_sel"]))
        torch.testing.assert_close(out[f"{key}_weights"], expected, atol=0, rtol=0)
    torch.testing.assert_close(torch.softmax(out["bkg_logits"], -1), ref["ragged_eval/score_bkg"], **TOL)
    torch.testing.assert_close(scores["attention"], padded(ref["ragged_eval/actionness"]), **TOL)
    torch.testing.assert_close(scores["cas"], padded(ref["ragged_eval/cas_norm"]), **TOL)
    torch.testing.assert_close(scores["video_scores"], ref["ragged_eval/score_act"], **TOL)


def test_categorical_option_is_not_the_authors_loss(ref):
    """video_loss=ce (wtal's former loss) changes L_cls and L_be but not L_um."""
    features, labels = ref["batch/features"], ref["batch/labels"]
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    keep = ref["batch/keep"].bool()
    with torch.no_grad():
        model = loaded(ref, video_loss="ce")
        losses = model.loss(model(features, mask, keep=keep), labels, mask)
    torch.testing.assert_close(losses["um"], ref["batch/loss_um"], **TOL)
    for key in ("cls", "be"):
        assert abs(losses[key] - ref[f"batch/loss_{key}"]) > 0.1


def test_post_processing_reproduces_the_authors_proposals():
    """The declared inference defaults turn the logits and actionness of the authors' test videos
    (scored whole up to 750 snippets, resampled to 750 beyond) into their test loop's proposals,
    in seconds: both threshold sets, the fallback class of a video where none passes."""
    cfg = load_config(None, ["model.name=um"]).inference
    with np.load(PROPOSALS) as data:
        ref = {key: data[key] for key in data.files}
    classes = ref["v0/cas_logits"].shape[1]
    model = build_model(UMConfig(embed_dim=4), in_dim=4, num_classes=classes).eval()
    found = 0
    for v, length in enumerate(ref["lengths"].tolist()):
        picks = scored_snippets(length, cfg.test_seqlen, cfg.test_resample)
        np.testing.assert_array_equal(picks, ref[f"v{v}/sample_idx"])
        logits = torch.from_numpy(ref[f"v{v}/cas_logits"])[None]  # [1, N, C]
        assert logits.shape[1] == picks.size
        outputs = {"cas_logits": logits, "attention": torch.from_numpy(ref[f"v{v}/actionness"])[None]}
        seconds = SNIPPET_SECONDS * length / picks.size  # one scored snippet
        duration = 0.5 * length * SNIPPET_SECONDS  # shorter than the segments reach: the authors clip nothing
        found += assert_proposals_match(model, outputs, cfg, seconds, duration, ref[f"v{v}/proposals"])
    assert found > 400


def test_the_authors_inference_settings_are_the_default_and_overrides_win():
    cfg = load_config(None, ["model.name=um"]).inference
    assert (cfg.test_seqlen, cfg.test_resample, cfg.video_topk_divisor) == (750, "longer", 9)
    assert (cfg.class_threshold, cfg.class_inclusive, cfg.class_fallback) == (0.2, True, True)
    assert cfg.proposal_source == "both"
    assert cfg.thresholds == pytest.approx([0.025 * i for i in range(10)], abs=1e-15)
    assert len(cfg.attention_thresholds) == 9 and cfg.attention_thresholds[1] == 0.42500000000000004
    assert cfg.attention_thresholds == pytest.approx([0.4 + 0.025 * i for i in range(9)], abs=1e-15)
    assert (cfg.normalize, cfg.inclusive, cfg.require_positive) == (False, True, True)
    assert (cfg.upsample, cfg.upsample_mode, cfg.min_length) == (24, "linear", 2)
    assert (cfg.segment_score, cfg.zero_below_threshold, cfg.outer_margin, cfg.margin_rule) == (
        "contrast", True, 0.25, "ceil_floor"
    )
    assert (cfg.class_score_weight, cfg.class_score, cfg.clip_to_duration, cfg.dedup) == (0.2, "score", False, False)
    assert (cfg.nms, cfg.nms_iou, cfg.nms_inclusive) == ("nms", 0.6, True)
    assert (cfg.nms_length_offset, cfg.nms_offset_unit, cfg.max_per_video) == (1.0, "seconds", 0)
    changed = load_config(None, ["model.name=um", "inference.attention_thresholds=[]"]).inference
    assert changed.attention_thresholds == [] and changed.thresholds == cfg.thresholds
