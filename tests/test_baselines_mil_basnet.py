"""The MIL (W-TALC loss alone) and BaS-Net baselines (tiny dimensions)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from wtal.config import load_config
from wtal.engine.trainer import train
from wtal.errors import WtalError
from wtal.models import build_model
from wtal.models.basnet import BaSNet, BaSNetConfig
from wtal.losses import co_activity_loss
from wtal.models.mil import MIL, MILConfig
from wtal.models.wtalc import WTALC, WTALCConfig

from model_checks import B, C, D, H, LENGTHS, T, assert_finite_scalar_losses, assert_padding_invariance, make_batch
from model_checks import assert_gradients_reach_every_parameter, assert_scores_contract

torch.set_num_threads(1)

PADDING = 100.0  # garbage on padding: it must never matter
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_cfg(name: str, **kw):
    if name == "mil":
        return MILConfig(embed_dim=H, **kw)
    return BaSNetConfig(embed_dim=H, attention_dim=8, **kw)


def make_model(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(make_cfg(name, **kw), in_dim=D, num_classes=C)


LOGIT_KEYS = {"mil": ("cas_logits",), "basnet": ("attention", "base_logits", "supp_logits")}
MODELS = [("mil", {}), ("mil", {"kernel_size": 3, "cas_activation": "sigmoid"}), ("basnet", {}), ("basnet", {"cls_loss": "ce"})]
MODEL_IDS = ["mil", "mil-k3-sigmoid", "basnet", "basnet-ce"]


@pytest.mark.parametrize("name, kw", MODELS, ids=MODEL_IDS)
def test_shapes_loss_and_gradients(name, kw):
    model = make_model(name, **kw)
    features, mask, labels = make_batch(padding_value=PADDING)
    out = model(features, mask)
    width = C if name == "mil" else C + 1
    for key in LOGIT_KEYS[name]:
        assert out[key].shape == ((B, T) if key == "attention" else (B, T, width)), key
    losses = model.loss(out, labels, mask)
    expected = {"total", "mil"} if name == "mil" else {"total", "base", "supp", "norm"}
    assert set(losses) == expected
    assert_finite_scalar_losses(losses)
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    # BaS-Net's cas is the authors' normalised CAS, negative where S_supp < 0
    assert_scores_contract(model.scores(out, mask), mask, C, bounded_cas=name != "basnet")


@pytest.mark.parametrize("name, kw", MODELS, ids=MODEL_IDS)
def test_padding_invariance(name, kw):
    model = make_model(name, **kw).eval()
    features, mask, labels = make_batch(padding_value=PADDING)
    batched, _ = assert_padding_invariance(model, features, mask, LOGIT_KEYS[name], atol=1e-6)
    with torch.no_grad():
        # the batch loss is the mean of each video's loss computed alone
        per_video = [
            model.loss(model(features[i : i + 1, :n], mask[i : i + 1, :n]), labels[i : i + 1], mask[i : i + 1, :n])
            for i, n in enumerate(LENGTHS)
        ]
        batch_loss = model.loss(batched, labels, mask)
        for key in batch_loss:
            expected = torch.stack([losses[key] for losses in per_video]).mean()
            torch.testing.assert_close(batch_loss[key], expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- losses by hand

LOG2, LOG3 = math.log(2.0), math.log(3.0)


def test_mil_loss_by_hand():
    """Video 0: 8 real snippets (k = 1) + padding; video 1: 16 real snippets (k = 2)."""
    model = make_model("mil").eval()
    logits = torch.zeros(2, 16, 2)
    logits[0, 3, 0] = LOG3  # top-1 pooled [ln 3, 0] -> softmax [3/4, 1/4]
    logits[0, 8:] = 50.0  # padding, huge: ignored
    logits[1, 0, 1] = logits[1, 1, 1] = LOG2  # top-2 mean of class 1: ln 2; class 0: 0
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[0, 8:] = False
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = model.loss({"cas_logits": logits}, labels, mask)
    # video 0: -ln(3/4); video 1: target [1/2, 1/2], softmax [1/3, 2/3]
    video0 = -math.log(3 / 4)
    video1 = -(0.5 * math.log(1 / 3) + 0.5 * math.log(2 / 3))
    torch.testing.assert_close(loss["total"], torch.tensor((video0 + video1) / 2))
    torch.testing.assert_close(loss["mil"], loss["total"])


def _basnet_by_hand_outputs():
    """One video, C = 2, 8 real snippets (k = 1) + 2 padded, label [1, 0]."""
    base = torch.zeros(1, 10, 3)
    base[0, 5, 2] = LOG2  # pooled [0, 0, ln 2] -> softmax [1/4, 1/4, 1/2]
    supp = torch.zeros(1, 10, 3)
    supp[0, 2, 0] = LOG2  # pooled [ln 2, 0, 0] -> softmax [1/2, 1/4, 1/4]
    base[0, 8:] = supp[0, 8:] = 40.0  # padding: ignored
    attention = torch.full((1, 10), 0.5)
    attention[0, 8:] = 0.9  # padding: ignored by the L1 norm
    mask = torch.arange(10)[None] < 8
    labels = torch.tensor([[1.0, 0.0]])
    return {"attention": attention, "base_logits": base, "supp_logits": supp}, labels, mask


def _bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_basnet_bce_targets_by_hand():
    """The authors' code: BCE of the softmax probabilities, mean over the C+1 channels."""
    model = make_model("basnet", norm_weight=0.5).eval()
    out, labels, mask = _basnet_by_hand_outputs()
    loss = model.loss(out, labels, mask)
    # base target normalize([1, 0, 1]) = [1/2, 0, 1/2] against [1/4, 1/4, 1/2]
    base = (_bce(0.25, 0.5) + _bce(0.25, 0.0) + _bce(0.5, 0.5)) / 3
    # suppression target normalize([1, 0, 0]) against [1/2, 1/4, 1/4]
    supp = (_bce(0.5, 1.0) + _bce(0.25, 0.0) + _bce(0.25, 0.0)) / 3
    torch.testing.assert_close(loss["base"], torch.tensor(base))
    torch.testing.assert_close(loss["supp"], torch.tensor(supp))
    torch.testing.assert_close(loss["norm"], torch.tensor(4.0))  # 8 * 0.5
    torch.testing.assert_close(loss["total"], torch.tensor(base + supp + 0.5 * 4.0))


def test_basnet_cross_entropy_targets_by_hand():
    """cls_loss="ce", the paper's categorical cross-entropy."""
    model = make_model("basnet", norm_weight=0.5, cls_loss="ce").eval()
    out, labels, mask = _basnet_by_hand_outputs()
    loss = model.loss(out, labels, mask)
    # base target [1/2, 0, 1/2]: -(ln(1/4) + ln(1/2)) / 2 = 1.5 ln 2
    torch.testing.assert_close(loss["base"], torch.tensor(1.5 * LOG2))
    # suppression target [1, 0, 0]: -ln(1/2)
    torch.testing.assert_close(loss["supp"], torch.tensor(LOG2))
    torch.testing.assert_close(loss["norm"], torch.tensor(4.0))
    torch.testing.assert_close(loss["total"], torch.tensor(2.5 * LOG2 + 0.5 * 4.0))


def test_basnet_suppression_branch_shares_the_classifier():
    model = make_model("basnet").eval()
    features, mask, _ = make_batch(padding_value=PADDING)
    with torch.no_grad():
        out = model(features, mask)
        m = mask[:, None, :].float()
        x = features.transpose(1, 2) * m
        torch.testing.assert_close(out["base_logits"], model.classify(x, m))
        weighted = x * out["attention"][:, None, :]
        torch.testing.assert_close(out["supp_logits"], model.classify(weighted, m))
        scores = model.scores(out, mask, video_topk_divisor=8)
    torch.testing.assert_close(scores["attention"], out["attention"])
    for i, n in enumerate(LENGTHS):
        pooled = out["supp_logits"][i, :n].topk(max(1, n // 8), dim=0).values.mean(0)
        torch.testing.assert_close(scores["video_scores"][i], torch.softmax(pooled, -1)[:C])


def test_basnet_cas_is_the_authors_normalisation():
    """(S - relu(min)) / (relu(max) - relu(min)) per class over real snippets, 1 for a span <= 0;
    padding (huge) never enters the minimum or maximum."""
    model = make_model("basnet").eval()
    columns = [
        [1.0, 3.0, 2.0, 5.0],  # positive: plain min-max, (s - 1) / 4
        [-2.0, 1.0, 0.5, 4.0],  # mixed signs: min -> 0, s / 4
        [-3.0, -1.0, -2.0, -0.5],  # all negative: span 0 -> 1, s - 0
        [2.0, 2.0, 2.0, 2.0],  # constant positive: span 0 -> 1, s - 2 = 0
    ]
    supp = torch.zeros(1, 6, 5)
    supp[0, :4, :4] = torch.tensor(columns).T
    supp[0, 4:] = 100.0  # padding
    mask = torch.arange(6)[None] < 4
    out = {"attention": torch.full((1, 6), 0.5), "base_logits": supp, "supp_logits": supp}
    cas = model.scores(out, mask)["cas"][0]
    expected = torch.zeros(6, 4)
    expected[:4, 0] = torch.tensor([0.0, 0.5, 0.25, 1.0])
    expected[:4, 1] = torch.tensor([-0.5, 0.25, 0.125, 1.0])
    expected[:4, 2] = torch.tensor(columns[2])
    torch.testing.assert_close(cas, expected)


def test_basnet_inference_defaults_are_the_authors():
    """test.py / utils.py (tests/test_parity_basnet.py proves them on the authors' proposals): 750
    test snippets, class threshold 0.25 without fallback, thresholds arange(0, 0.25, 0.025) (>= and
    > 0) on the linearly upsampled CAS, contrast on the CAS zeroed below the threshold, + 0.2 x the
    binarised class score, NMS dropping IoU >= 0.7 with +1 s lengths."""
    inference = load_config(None, ["model.name=basnet"]).inference
    assert inference.class_threshold == 0.25 and inference.video_topk_divisor == 8 and not inference.class_fallback
    assert inference.proposal_source == "cas" and not inference.normalize and inference.inclusive
    assert inference.require_positive and inference.zero_below_threshold and inference.test_seqlen == 750
    assert inference.thresholds == pytest.approx([0.025 * i for i in range(10)])
    assert inference.upsample == 24 and inference.upsample_mode == "linear" and inference.margin_rule == "ceil_floor"
    assert inference.class_score_weight == 0.2 and inference.class_score == "binary"
    assert inference.nms == "nms" and inference.nms_iou == 0.7 and inference.nms_inclusive
    assert (inference.nms_length_offset, inference.nms_offset_unit, inference.max_per_video) == (1.0, "seconds", 0)
    assert load_config(None, ["model.name=basnet", "inference.upsample=1"]).inference.upsample == 1


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_mil_scores_are_normalised_cas_and_max_over_classes(activation):
    model = make_model("mil", cas_activation=activation).eval()
    features, mask, _ = make_batch(padding_value=PADDING)
    with torch.no_grad():
        out = model(features, mask)
        scores = model.scores(out, mask)
    s = out["cas_logits"]
    cas = (torch.softmax(s, -1) if activation == "softmax" else torch.sigmoid(s)) * mask[..., None]
    torch.testing.assert_close(scores["cas"], cas)
    torch.testing.assert_close(scores["attention"], cas.amax(-1))


# ---------------------------------------------------------------- config


def test_config_loading_and_yaml_files():
    cfg = load_config(None, ["model.name=mil", "model.embed_dim=16", "model.cas_activation=sigmoid"])
    assert isinstance(cfg.model, MILConfig) and cfg.model.embed_dim == 16 and cfg.model.topk_r == 8
    assert cfg.model.cas_activation == "sigmoid" and MILConfig().cas_activation == "softmax"
    assert isinstance(build_model(cfg.model, in_dim=D, num_classes=C), MIL)
    cfg = load_config(None, ["model.name=basnet", "model.norm_weight=1e-3", "model.cls_loss=ce"])
    assert isinstance(cfg.model, BaSNetConfig) and cfg.model.norm_weight == 1e-3 and cfg.model.topk_r == 8
    assert cfg.model.cls_loss == "ce" and BaSNetConfig().cls_loss == "bce"
    cfg.model.embed_dim = H
    assert isinstance(build_model(cfg.model, in_dim=D, num_classes=C), BaSNet)
    mil = load_config(CONFIGS / "mil_thumos14.yaml")
    assert mil.model == MILConfig() and mil.train.lr == 1e-4
    bas = load_config(CONFIGS / "basnet_thumos14.yaml")
    assert bas.model == BaSNetConfig() and bas.train.batch_size == 16 and bas.train.iterations == 1500


@pytest.mark.parametrize(
    "overrides, field",
    [
        (["model.name=mil", "model.kernel_size=2"], "model.kernel_size"),
        (["model.name=mil", "model.topk_r=0"], "model.topk_r"),
        (["model.name=mil", "model.cas_activation=relu"], "model.cas_activation"),
        (["model.name=mil", "model.dropout=1.0"], "model.dropout"),
        (["model.name=basnet", "model.norm_weight=-1"], "model.norm_weight"),
        (["model.name=basnet", "model.cls_loss=mse"], "model.cls_loss"),
        (["model.name=basnet", "model.alpha=1e-4"], "alpha"),
        (["model.name=basnet", "model.attention_dim=0"], "model.attention_dim"),
        (["model.name=basnet", "model.lam=2"], "lam"),
    ],
)
def test_validate_names_the_field(overrides, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, overrides)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["mil", "basnet"])
def test_training_end_to_end(name, tiny_run_overrides):
    steps = ["train.iterations=4", "train.eval_every=2", "train.log_every=1"]  # later overrides win
    cfg = load_config(None, [*tiny_run_overrides, f"model.name={name}", "model.embed_dim=32", *steps])
    result = train(cfg, progress=False)
    run = result.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["averages"]["avg"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "test"] == [2, 4]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert len(train_lines) == 4 and all(math.isfinite(line["total"]) for line in train_lines)


# ---------------------------------------------------------------- W-TALC (MIL + co-activity similarity loss)


def make_wtalc(seed: int = 0, **kw) -> WTALC:
    torch.manual_seed(seed)
    return build_model(WTALCConfig(embed_dim=H, **kw), in_dim=D, num_classes=C)


def wtalc_batch():
    """make_batch with garbage padding and videos 0 and 1 sharing class 0 (one same-class pair)."""
    features, mask, labels = make_batch(padding_value=PADDING)
    labels[1, 0] = 1.0
    return features, mask, labels


def casl_by_formula(embeddings, logits, labels) -> torch.Tensor:
    """The co-activity similarity loss from its definition, one pair of unpadded videos at a time:
    embeddings / logits lists of [T_i, H] / [T_i, C], pairs (0, 1), (2, 3), ..."""
    numerator, count = 0.0, 0.0
    for a, b in zip(range(0, len(logits) - 1, 2), range(1, len(logits), 2)):
        high, low = [], []
        for x, s in ((embeddings[a], logits[a]), (embeddings[b], logits[b])):
            att = torch.softmax(s, 0)  # [T, C]
            high.append(x.T @ att)  # [H, C]
            low.append(x.T @ (1 - att) / max(len(s) - 1, 1))
        cos = torch.nn.functional.cosine_similarity
        d1 = 1 - cos(high[0], high[1], dim=0)
        d2 = 1 - cos(high[0], low[1], dim=0)
        d3 = 1 - cos(high[1], low[0], dim=0)
        shared = labels[a] * labels[b]
        hinge = 0.5 * torch.relu(d1 - d2 + 0.5) + 0.5 * torch.relu(d1 - d3 + 0.5)
        numerator = numerator + (hinge * shared).sum()
        count = count + shared.sum()
    return numerator / count


def test_wtalc_shapes_loss_and_gradients():
    model = make_wtalc(similar_pairs=1)
    features, mask, labels = wtalc_batch()
    out = model(features, mask)
    assert out["embedding"].shape == (B, T, H) and out["cas_logits"].shape == (B, T, C)
    assert (out["embedding"][~mask] == 0).all()
    losses = model.loss(out, labels, mask)
    assert set(losses) == {"total", "mil", "casl"} and losses["casl"] > 0
    assert_finite_scalar_losses(losses)
    torch.testing.assert_close(losses["total"], 0.5 * losses["mil"] + 0.5 * losses["casl"])
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    # cas and video_scores are raw logits: only the attention is bounded
    assert_scores_contract(model.scores(out, mask), mask, C, bounded_cas=False, bounded_video_scores=False)


def test_wtalc_padding_invariance():
    model = make_wtalc(similar_pairs=1).eval()
    features, mask, labels = wtalc_batch()
    batched, alones = assert_padding_invariance(model, features, mask, ("embedding", "cas_logits"), atol=1e-6)
    with torch.no_grad():
        losses = model.loss(batched, labels, mask)
        mil = [
            model.loss(alone, labels[i : i + 1], mask[i : i + 1, :n])["mil"]
            for i, (n, alone) in enumerate(zip(LENGTHS, alones))
        ]
        pair = alones[:2]
        casl = casl_by_formula([a["embedding"][0] for a in pair], [a["cas_logits"][0] for a in pair], labels[:2])
    torch.testing.assert_close(losses["mil"], torch.stack(mil).mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["casl"], casl, rtol=1e-5, atol=1e-6)


def test_wtalc_mil_loss_takes_ceil_k():
    """9 real snippets: k = ceil(9 / 8) = 2 (the MIL-only baseline's floor would take 1)."""
    model = make_wtalc().eval()
    logits = torch.zeros(1, 12, 2)
    logits[0, 0, 0], logits[0, 1, 0] = 2 * LOG3, 0.0  # top-2 mean of class 0: ln 3 -> softmax [3/4, 1/4]
    logits[0, 9:] = 60.0  # padding: ignored
    mask = torch.arange(12)[None] < 9
    out = {"embedding": torch.zeros(1, 12, H), "cas_logits": logits}
    loss = model.loss(out, torch.tensor([[1.0, 0.0]]), mask)
    torch.testing.assert_close(loss["mil"], torch.tensor(-math.log(3 / 4)))
    assert loss["casl"] == 0  # a single video forms no pair


def test_wtalc_casl_by_hand():
    """Pair (0, 1) shares class 0; attention ~ one-hot on snippet 0 of each video, so Hf = x[0] and
    Lf = x[1] / 1: Hf_a = (1, 0), Lf_a = (0, 1), Hf_b = (1, 0), Lf_b = (1, 1). d1 = 0,
    d2 = 1 - 1/sqrt(2), d3 = 1: loss = 0.5 [1/sqrt(2) - 0.5]_+ + 0.5 [-0.5]_+. Pair (2, 3) shares
    nothing; video 4 is unpaired; video 0 has garbage on its padding."""
    x = torch.zeros(5, 3, 2)
    x[0, 0], x[0, 1], x[0, 2] = torch.tensor([1.0, 0]), torch.tensor([0.0, 1]), torch.tensor([50.0, -7])
    x[1, 0], x[1, 1] = torch.tensor([1.0, 0]), torch.tensor([1.0, 1])
    x[2:] = torch.rand(3, 3, 2)
    s = torch.zeros(5, 3, 1)
    s[:2, 0], s[:2, 1], s[0, 2] = 60.0, -60.0, 90.0
    s[2:] = torch.randn(3, 3, 1)
    mask = torch.tensor([[True, True, False]] + [[True, True, True]] * 4)
    labels = torch.tensor([[1.0], [1.0], [1.0], [0.0], [1.0]])
    expected = torch.tensor(0.5 * (1 / math.sqrt(2) - 0.5))
    torch.testing.assert_close(co_activity_loss(x, s, labels, mask, pairs=3), expected)  # 2 pairs fit
    no_shared = torch.tensor([[1.0], [0.0], [0.0], [1.0], [1.0]])
    assert co_activity_loss(x, s, no_shared, mask, pairs=2) == 0  # no pair shares a class
    assert co_activity_loss(x[:1], s[:1], labels[:1], mask[:1], pairs=3) == 0  # no pair at all


def test_wtalc_scores_are_the_raw_logits_and_top_k_means():
    """W-TALC thresholds and scores the raw logits (cas) and keeps a class when the mean of its
    floor(T / 8) largest logits (video_scores) is > 0; attention: max over classes of the min-max
    normalised logits."""
    model = make_wtalc().eval()
    features, mask, _ = wtalc_batch()
    with torch.no_grad():
        out = model(features, mask)
        scores = model.scores(out, mask, video_topk_divisor=8)
    s = out["cas_logits"]
    for i, n in enumerate(LENGTHS):
        real = s[i, :n]
        low, high = real.min(0).values, real.max(0).values
        torch.testing.assert_close(scores["cas"][i, :n], real)
        assert (scores["cas"][i, n:] == 0).all()
        torch.testing.assert_close(scores["attention"][i, :n], ((real - low) / (high - low)).amax(-1))
        topk = real.topk(max(1, n // 8), dim=0).values.mean(0)
        torch.testing.assert_close(scores["video_scores"][i], topk)


def test_wtalc_config_loading_and_yaml_file():
    cfg = load_config(None, ["model.name=wtalc", "model.similar_pairs=2", "model.casl_weight=0.25"])
    assert isinstance(cfg.model, WTALCConfig) and cfg.model.similar_pairs == 2 and cfg.model.casl_weight == 0.25
    assert cfg.model.mil_weight == 0.5 and cfg.model.topk_r == 8 and cfg.model.dropout == 0.7
    cfg.model.embed_dim = H
    assert isinstance(build_model(cfg.model, in_dim=D, num_classes=C), WTALC)
    yaml_cfg = load_config(CONFIGS / "wtalc_thumos14.yaml")
    assert yaml_cfg.model == WTALCConfig() and yaml_cfg.model.similar_pairs == 3
    assert (yaml_cfg.train.lr, yaml_cfg.train.weight_decay, yaml_cfg.train.batch_size) == (1e-4, 5e-4, 10)
    assert yaml_cfg.data.max_seqlen == 750 and yaml_cfg.data.sampling == "crop"


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.similar_pairs=-1", "model.similar_pairs"),
        ("model.topk_r=0", "model.topk_r"),
        ("model.embed_dim=0", "model.embed_dim"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.mil_weight=-1", "model.mil_weight"),
        ("model.casl_weight=-0.5", "model.casl_weight"),
    ],
)
def test_wtalc_validate_names_the_field(override, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, ["model.name=wtalc", override])


def test_wtalc_training_end_to_end(tiny_run_overrides):
    steps = ["train.iterations=4", "train.eval_every=2", "train.log_every=1"]  # later overrides win
    cfg = load_config(None, [*tiny_run_overrides, "model.name=wtalc", "model.embed_dim=32", *steps])
    run = train(cfg, progress=False).run_dir
    assert math.isfinite(json.loads((run / "metrics.json").read_text())["averages"]["avg"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert len(train_lines) == 4 and all(math.isfinite(line["total"]) for line in train_lines)
