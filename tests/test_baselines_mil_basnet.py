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
from wtal.models.mil import MIL, MILConfig

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
MODELS = [("mil", {}), ("mil", {"kernel_size": 3, "cas_activation": "sigmoid"}), ("basnet", {})]
MODEL_IDS = ["mil", "mil-k3-sigmoid", "basnet"]


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
    assert_scores_contract(model.scores(out, mask), mask, C)


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


def test_basnet_asymmetric_targets_by_hand():
    """One video, C = 2, 8 real snippets (k = 1) + 2 padded, label [1, 0]."""
    model = make_model("basnet", alpha=0.5).eval()
    base = torch.zeros(1, 10, 3)
    base[0, 5, 2] = LOG2  # pooled [0, 0, ln 2] -> softmax [1/4, 1/4, 1/2]
    supp = torch.zeros(1, 10, 3)
    supp[0, 2, 0] = LOG2  # pooled [ln 2, 0, 0] -> softmax [1/2, 1/4, 1/4]
    base[0, 8:] = supp[0, 8:] = 40.0  # padding: ignored
    attention = torch.full((1, 10), 0.5)
    attention[0, 8:] = 0.9  # padding: ignored by the L1 norm
    mask = torch.arange(10)[None] < 8
    labels = torch.tensor([[1.0, 0.0]])
    out = {"attention": attention, "base_logits": base, "supp_logits": supp}
    loss = model.loss(out, labels, mask)
    # base target normalize([1, 0, 1]) = [1/2, 0, 1/2]: -(ln(1/4) + ln(1/2)) / 2 = 1.5 ln 2
    torch.testing.assert_close(loss["base"], torch.tensor(1.5 * LOG2))
    # suppression target normalize([1, 0, 0]): -ln(1/2)
    torch.testing.assert_close(loss["supp"], torch.tensor(LOG2))
    torch.testing.assert_close(loss["norm"], torch.tensor(4.0))  # 8 * 0.5
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
        scores = model.scores(out, mask)
    expected = torch.softmax(out["supp_logits"], -1)[..., :C] * mask[..., None]
    torch.testing.assert_close(scores["cas"], expected)
    torch.testing.assert_close(scores["attention"], out["attention"])


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
    cfg = load_config(None, ["model.name=basnet", "model.alpha=1e-3"])
    assert isinstance(cfg.model, BaSNetConfig) and cfg.model.alpha == 1e-3 and cfg.model.topk_r == 8
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
        (["model.name=basnet", "model.alpha=-1"], "model.alpha"),
        (["model.name=basnet", "model.attention_dim=0"], "model.attention_dim"),
        (["model.name=basnet", "model.lam=2"], "lam"),
    ],
)
def test_validate_names_the_field(overrides, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, overrides)


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["mil", "basnet"])
def test_training_end_to_end(name, tiny_overrides):
    steps = ["train.iterations=4", "train.eval_every=2", "train.log_every=1"]  # later overrides win
    cfg = load_config(None, [*tiny_overrides, f"model.name={name}", *steps])
    result = train(cfg, progress=False)
    run = result.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert math.isfinite(metrics["averages"]["avg"])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if line["split"] == "test"] == [2, 4]
    train_lines = [line for line in lines if line["split"] == "train"]
    assert len(train_lines) == 4 and all(math.isfinite(line["total"]) for line in train_lines)
