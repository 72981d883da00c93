"""The whole-video-as-background model on each base, its loss and the generic loss pieces (tiny dimensions)."""

from __future__ import annotations

import itertools
import json
from dataclasses import fields, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wtal.config import dump_config, load_config
from wtal.engine.trainer import train
from wtal.errors import WtalError
from wtal.losses import masked_mean, masked_min, scale_grad, topk_mean, video_cross_entropy
from wtal.models import build_model
from wtal.models.basnet import BaSNet
from wtal.models.co2net import CO2NetConfig
from wtal.models.plain import PlainConfig
from wtal.models.registry import model_config_class
from wtal.models.ten import TENConfig
from wtal.models.whole_video_bg import WholeVideoBackground, WholeVideoBgConfig

from model_checks import B, C, D, H, LENGTHS, T, assert_finite_scalar_losses, assert_padding_invariance, make_batch
from model_checks import assert_gradients_reach_every_parameter, assert_scores_contract

torch.set_num_threads(1)


PLAIN_KEYS = {f.name for f in fields(PlainConfig)} - {"name"}


def make_cfg(**kw) -> WholeVideoBgConfig:
    """The paper's parts on the plain base at tiny widths (the parts on each base: make_on_base);
    the plain base's own keys in ``kw`` go to its config."""
    plain = {key: kw.pop(key) for key in list(kw) if key in PLAIN_KEYS}
    return WholeVideoBgConfig(base=PlainConfig(**{"embed_dim": H, "attention_dim": 8, **plain}), **kw)


def make_model(seed: int = 0, **kw) -> WholeVideoBackground:
    torch.manual_seed(seed)
    return build_model(make_cfg(**kw), in_dim=D, num_classes=C)


COMBINATIONS = [
    dict(ten=ten, continuity=continuity, fusion=fusion, reading=reading)
    for ten, continuity, fusion, reading in itertools.product(
        ("both", "base", "continuity"),
        ("local_affinity", "dilated", "nonlocal"),
        ("sum", "concat"),
        ("A", "B", "C"),
    )
] + [dict(ten="off", continuity="local_affinity", fusion="sum", reading=reading) for reading in ("A", "B", "C")]


# ---------------------------------------------------------------- generic pieces


def test_topk_mean_per_video_k_and_padding_excluded():
    x = torch.tensor([[5.0, 1, 2, 3, 4, 9, 9], [1.0, 7, 3, 100, 100, 100, 100]])[..., None]
    mask = torch.tensor([[True] * 5 + [False] * 2, [True] * 3 + [False] * 4])
    out = topk_mean(x, mask, r=2)  # k = 2 and 1
    torch.testing.assert_close(out, torch.tensor([[4.5], [7.0]]))


def test_masked_mean_min_ignore_padding():
    x = torch.tensor([[1.0, 3.0, -50.0], [2.0, float("nan"), float("inf")]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    torch.testing.assert_close(masked_mean(x, mask), torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(masked_min(x, mask), torch.tensor([1.0, 2.0]))


def test_video_cross_entropy_normalises_target():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    loss = video_cross_entropy(logits, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(loss, torch.log(torch.tensor(4.0)))


def test_scale_grad_identity_forward_scaled_backward():
    x = torch.randn(5, requires_grad=True)
    y = scale_grad(x, 3.0)
    assert torch.equal(y, x)
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, 3.0 * torch.arange(5.0))


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("kw", COMBINATIONS, ids=lambda kw: "-".join(kw.values()))
def test_shapes_loss_and_gradients(kw):
    model = make_model(**kw)
    features, mask, labels = make_batch()
    out = model(features, mask)
    assert out["attention"].shape == (B, T)
    assert out["cas_logits"].shape == out["cas_fg_logits"].shape == (B, T, C + 1)
    losses = model.loss(out, labels, mask)
    assert set(losses) >= {"total", "fg", "bg", "norm"}
    assert_finite_scalar_losses(losses)
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    assert_scores_contract(model.scores(out, mask), mask, C)


@pytest.mark.parametrize("continuity", ["local_affinity", "dilated", "nonlocal"])
@pytest.mark.parametrize("fusion", ["sum", "concat"])
@pytest.mark.parametrize("suppress_min", ["class", "time"])
def test_padding_invariance(continuity, fusion, suppress_min):
    model = make_model(continuity=continuity, fusion=fusion, suppress_min=suppress_min).eval()
    features, mask, _ = make_batch()
    assert_padding_invariance(model, features, mask, ("attention", "cas_logits", "cas_fg_logits"), atol=1e-6)


def _bg_grad(model, features, mask, labels):
    """Background loss value and its gradient with respect to S (cas_logits)."""
    out = model(features, mask)
    s = out["cas_logits"]
    s.retain_grad()
    bg = model.loss(out, labels, mask)["bg"]
    bg.backward()
    return bg.detach(), s.grad, s.detach()


@pytest.mark.parametrize("bg_pool", ["mean", "topk"])
def test_reading_a_scales_the_background_gradient(bg_pool):
    features, mask, labels = make_batch()
    model = make_model(reading="A", lam=1.0, bg_pool=bg_pool).eval()
    value1, grad1, _ = _bg_grad(model, features, mask, labels)
    model.zero_grad()
    model.cfg = replace(model.cfg, lam=5.0)
    value5, grad5, _ = _bg_grad(model, features, mask, labels)
    torch.testing.assert_close(value5, value1)
    torch.testing.assert_close(grad5, 5.0 * grad1)
    assert grad1.abs().sum() > 0


def test_reading_b_forward_is_bas_loss_backward_is_pure_background():
    features, mask, labels = make_batch()
    model = make_model(reading="B", lam=3.0).eval()
    value, grad, s = _bg_grad(model, features, mask, labels)
    s = s.clone().requires_grad_(True)
    pooled = masked_mean(s, mask)
    with_actions = video_cross_entropy(pooled, torch.cat([labels, torch.ones(len(labels), 1)], 1))
    background = torch.zeros(len(labels), C + 1)
    background[:, -1] = 1
    pure = video_cross_entropy(pooled, background)
    (expected_grad,) = torch.autograd.grad(pure, s)
    torch.testing.assert_close(value, with_actions.detach())
    torch.testing.assert_close(grad, expected_grad)
    assert not torch.allclose(with_actions, pure)
    # hence B trains exactly as A with lambda = 1, whatever B's lambda (the ablation report's rows agree)
    model.zero_grad()
    model.cfg = replace(model.cfg, reading="A", lam=1.0)
    _, grad_a, _ = _bg_grad(model, features, mask, labels)
    torch.testing.assert_close(grad, grad_a)


def test_reading_d_scales_only_the_background_channel_gradient():
    features, mask, labels = make_batch()
    model = make_model(reading="D", lam=1.0).eval()
    value1, grad1, _ = _bg_grad(model, features, mask, labels)
    model.zero_grad()
    model.cfg = replace(model.cfg, lam=3.0)
    value3, grad3, _ = _bg_grad(model, features, mask, labels)
    torch.testing.assert_close(value3, value1)
    torch.testing.assert_close(grad3[..., :-1], grad1[..., :-1])  # action channels unscaled
    torch.testing.assert_close(grad3[..., -1], 3.0 * grad1[..., -1])
    assert grad1[..., -1].abs().sum() > 0 and grad1[..., :-1].abs().sum() > 0
    model.zero_grad()
    model.cfg = replace(model.cfg, reading="A", lam=1.0)  # at lambda 1, D is A
    _, grad_a, _ = _bg_grad(model, features, mask, labels)
    torch.testing.assert_close(grad1, grad_a)


def test_reading_c_scales_with_lambda_and_is_per_snippet():
    features, mask, labels = make_batch()
    model = make_model(reading="C", lam=1.0).eval()
    with torch.no_grad():
        out = model(features, mask)
        bg1 = model.loss(out, labels, mask)["bg"]
        model.cfg = replace(model.cfg, lam=2.5)
        bg25 = model.loss(out, labels, mask)["bg"]
    per_snippet = -torch.log_softmax(out["cas_logits"], -1)[..., -1]
    expected = torch.stack([per_snippet[i, :n].mean() for i, n in enumerate(LENGTHS)]).mean()
    torch.testing.assert_close(bg1, expected)
    torch.testing.assert_close(bg25, 2.5 * bg1)


def test_bg_loss_off_gives_zero_background_component():
    features, mask, labels = make_batch()
    model = make_model(bg_loss=False).eval()
    losses = model.loss(model(features, mask), labels, mask)
    assert losses["bg"].item() == 0.0
    torch.testing.assert_close(losses["total"], losses["fg"] + model.base.cfg.norm_weight * losses["norm"])


def test_background_weight_ramps_in_over_the_warmup():
    features, mask, labels = make_batch()
    model = make_model(bg_warmup=0.5, bg_weight=0.4).eval()
    with torch.no_grad():
        out = model(features, mask)
        totals = []
        for progress in (0.0, 0.25, 0.5, 0.9):
            model.progress = progress
            losses = model.loss(out, labels, mask)
            totals.append(losses["total"] - losses["fg"] - model.base.cfg.norm_weight * losses["norm"])
    weights = [0.0, 0.5, 1.0, 1.0]
    for total, weight in zip(totals, weights):
        torch.testing.assert_close(total, weight * 0.4 * losses["bg"])


def test_background_weight_can_anneal_out_at_the_end():
    cfg = make_cfg(bg_warmup=0.4, bg_anneal=0.25)
    assert [cfg.ramp(p) for p in (0.0, 0.2, 0.4, 0.75, 0.875, 1.0)] == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.5, 0.0])
    overlapping = make_cfg(bg_warmup=0.5, bg_anneal=0.5)  # a triangle: the lower of rise and fall
    assert [overlapping.ramp(p) for p in (0.25, 0.5, 0.75)] == pytest.approx([0.5, 1.0, 0.5])
    assert make_cfg().ramp(1.0) == 1.0  # the default keeps the full weight to the end
    with pytest.raises(WtalError, match="model.bg_anneal: expected a fraction in"):
        load_config(None, ["model.bg_anneal=1.5"])


def test_foreground_loss_matches_definition():
    features, mask, labels = make_batch()
    model = make_model(topk_r=3).eval()
    with torch.no_grad():
        out = model(features, mask)
        fg = model.loss(out, labels, mask)["fg"]
    expected = []
    for i, n in enumerate(LENGTHS):
        k = max(1, n // 3)
        pooled = out["cas_fg_logits"][i, :n].topk(k, dim=0).values.mean(0)
        target = torch.cat([labels[i], torch.zeros(1)])
        expected.append(-(target / target.sum() * torch.log_softmax(pooled, -1)).sum())
    torch.testing.assert_close(fg, torch.stack(expected).mean())


@pytest.mark.parametrize("suppress_min", ["class", "time"])
def test_attention_suppressed_scores(suppress_min):
    features, mask, _ = make_batch()
    model = make_model(suppress_min=suppress_min).eval()
    with torch.no_grad():
        out = model(features, mask)
    for i, n in enumerate(LENGTHS):
        s, a = out["cas_logits"][i, :n], out["attention"][i, :n, None]
        low = s.min(1, keepdim=True).values if suppress_min == "class" else s.min(0).values
        torch.testing.assert_close(out["cas_fg_logits"][i, :n], a * (s - low) + low)


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.reading=E", "model.reading"),
        ("model.bg_balance=norm", "model.bg_balance"),
        ("model.ten=all", "model.ten"),
        ("model.continuity=conv", "model.continuity"),
        ("model.fusion=max", "model.fusion"),
        ("model.bg_pool=max", "model.bg_pool"),
        ("model.base.suppress_min=both", "model.base.suppress_min"),
        ("model.tau=0", "model.tau"),
        ("model.lam=-1", "model.lam"),
        ("model.window=0", "model.window"),
        ("model.base.topk_r=0", "model.base.topk_r"),
        ("model.base.embed_dim=0", "model.base.embed_dim"),
        ("model.base.dropout=1.0", "model.base.dropout"),
        ("model.base.attention_dropout=-0.1", "model.base.attention_dropout"),
        ("model.base.norm_weight=-0.5", "model.base.norm_weight"),
        ("model.bg_weight=-1", "model.bg_weight"),
    ],
)
def test_validate_names_the_field(override, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, ["model.base=plain", override])


def test_build_rejects_invalid_config():
    with pytest.raises(WtalError, match="model.fusion"):
        build_model(make_cfg(fusion="mul"), in_dim=D, num_classes=C)


def test_registry_and_config_loading():
    cfg = load_config(None, ["model.base=plain", "model.lam=2", "model.base.embed_dim=16"])
    assert isinstance(cfg.model, WholeVideoBgConfig) and isinstance(cfg.model.base, PlainConfig)
    assert cfg.model.lam == 2.0 and isinstance(cfg.model.lam, float) and cfg.model.base.embed_dim == 16
    assert cfg.model.reading == "A" and cfg.model.ten == "both" and cfg.model.bg_pool == "mean"
    model = build_model(cfg.model, in_dim=D, num_classes=C)
    assert isinstance(model, WholeVideoBackground)
    features, mask, _ = make_batch()
    assert model(features, mask)["cas_logits"].shape == (len(LENGTHS), T, C + 1)


@pytest.mark.parametrize("kw", [{}, {"bg_loss": False}], ids=["default", "no_bg"])
def test_training_decreases_the_loss(kw):
    torch.manual_seed(0)
    n, classes = 8, 2
    labels = torch.eye(classes)[torch.arange(n) % classes]
    features = 0.1 * torch.randn(n, T, D)
    for i in range(n):  # class c shows a fixed pattern in a short action run
        features[i, 5:10] += 2.0 * torch.eye(D)[int(labels[i].argmax())]
    mask = torch.ones(n, T, dtype=torch.bool)
    model = build_model(make_cfg(dropout=0.0, attention_dropout=0.0, **kw), in_dim=D, num_classes=classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        total = model.loss(model(features, mask), labels, mask)["total"]
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert history[-1] < 0.7 * history[0]


# ---------------------------------------------------------------- the parts on each base

BASES = ("plain", "co2net", "basnet", "um", "delu", "wtalc", "mil")
BASE_CONFIG = {
    "plain": {"embed_dim": H, "attention_dim": 8},
    "co2net": {"embed_dim": H, "attention_dim": 8},
    "basnet": {"embed_dim": H, "attention_dim": 8},
    "um": {"embed_dim": H},
    "delu": {"embed_dim": H, "attention_dim": 8},
    "wtalc": {"embed_dim": H},
    "mil": {"embed_dim": H},
}
NO_BACKGROUND = ("um", "wtalc", "mil")  # bases that get a background row for the background loss
# The base's output its own feature-reading loss takes from before the TEN (coactivity_input="unenhanced").
READS_FEATURES = {"co2net": "fused", "delu": "fused", "wtalc": "embedding"}
PAIR_LABELS = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])  # videos 0 and 1 share class 1 (a pair)


def make_on_base(base: str, seed: int = 0, **kw) -> WholeVideoBackground:
    """whole_video_bg on ``base`` at the tiny widths."""
    torch.manual_seed(seed)
    cfg = WholeVideoBgConfig(base=model_config_class(base)(name=base, **BASE_CONFIG[base]), **kw)
    return build_model(cfg, in_dim=D, num_classes=C)


def make_base_alone(base: str, seed: int = 0):
    """The base model by itself at the same widths."""
    torch.manual_seed(seed)
    return build_model(model_config_class(base)(name=base, **BASE_CONFIG[base]), in_dim=D, num_classes=C)


def _run(model, features, mask, labels, seed: int):
    """Outputs, losses and scores of one step, and the gradients of its total loss."""
    torch.manual_seed(seed)  # the same dropout and UM selection draws for every model
    outputs = model(features, mask)
    losses = model.loss(outputs, labels, mask)
    model.zero_grad()
    losses["total"].backward()
    return outputs, losses, model.scores(outputs, mask)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("base", BASES)
def test_parts_off_compute_exactly_the_base(base, training):
    reference = make_base_alone(base, seed=0)
    model = make_on_base(base, seed=1, ten="off", bg_loss=False)
    model.base.load_state_dict(reference.state_dict())
    reference.train(training)
    model.train(training)
    features, mask, _ = make_batch()
    want_out, want_losses, want_scores = _run(reference, features, mask, PAIR_LABELS, seed=3)
    got_out, got_losses, got_scores = _run(model, features, mask, PAIR_LABELS, seed=3)
    assert set(got_out) == set(want_out) and set(got_scores) == set(want_scores)
    assert set(got_losses) == set(want_losses) | {"bg"} and got_losses["bg"].item() == 0.0
    for want, got in ((want_out, got_out), (want_losses, got_losses), (want_scores, got_scores)):
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-6, msg=key)
    if base in ("co2net", "delu"):
        assert want_losses["coactivity"] > 0  # the pair is exercised
    for name, p in reference.named_parameters():
        torch.testing.assert_close(model.base.get_parameter(name).grad, p.grad, atol=1e-6, rtol=1e-6, msg=name)


@pytest.mark.parametrize("reading", ["A", "B", "C", "D"])
@pytest.mark.parametrize("base", BASES[1:])
def test_parts_on_each_base_reach_every_parameter(base, reading):
    model = make_on_base(base, ten="both", fusion="concat", reading=reading)
    features, mask, _ = make_batch()
    out = model(features, mask)
    losses = model.loss(out, PAIR_LABELS, mask)
    base_terms = make_base_alone(base).loss(out, PAIR_LABELS, mask)
    assert list(losses) == [*base_terms, "bg"] and losses["bg"] > 0
    assert_finite_scalar_losses(losses)
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    assert_scores_contract(
        model.scores(out, mask), mask, C, bounded_cas=base in ("um", "mil"), bounded_video_scores=base != "wtalc"
    )


@pytest.mark.parametrize("base", BASES[1:])
def test_parts_on_each_base_are_padding_invariant(base):
    model = make_on_base(base, ten="both", continuity="local_affinity").eval()
    features, mask, _ = make_batch()
    keys = {"co2net": ("attention", "cas_logits", "cas_fg_logits"), "basnet": ("base_logits", "supp_logits")}
    keys["delu"] = keys["co2net"]
    keys = keys.get(base, ("cas_logits", "background_logits", *(("magnitude",) if base == "um" else ())))
    assert_padding_invariance(model, features, mask, keys, atol=1e-5)


@pytest.mark.parametrize("base", BASES)
def test_ten_sits_just_before_the_base_classifier(base):
    off = make_on_base(base, ten="off").eval()
    on = make_on_base(base, ten="both").eval()
    on.base.load_state_dict(off.base.state_dict())
    features, mask, _ = make_batch()
    m = mask[:, None, :].float()
    with torch.no_grad():
        before, after = off(features, mask), on(features, mask)
        enhance = lambda x: on.ten(x.transpose(1, 2), x.transpose(1, 2), mask).transpose(1, 2)  # noqa: E731  [B, T, H]
        if base == "plain":
            torch.testing.assert_close(after["embedding"], before["embedding"])
            torch.testing.assert_close(after["features"], enhance(before["embedding"]))
        elif base in ("co2net", "delu"):
            for key in ("attention", "attention_rgb", "attention_flow"):  # the consensus modules come before
                torch.testing.assert_close(after[key], before[key])
            torch.testing.assert_close(after["fused"], enhance(before["fused"]))
        elif base in ("um", "wtalc", "mil"):
            expected = enhance(before["embedding"])
            if base == "wtalc":  # W-TALC zeroes its embedding on padding
                expected = expected.masked_fill(~mask[..., None], 0.0)
            torch.testing.assert_close(after["embedding"], expected, atol=1e-6, rtol=1e-5)
            if base == "um":
                torch.testing.assert_close(after["magnitude"], after["embedding"].norm(dim=-1))
        else:
            b = on.base
            torch.testing.assert_close(after["attention"], before["attention"])  # the filter comes before
            for key, x in (("base_logits", features), ("supp_logits", features * after["attention"][..., None])):
                y = F.leaky_relu(b.cas_conv1(x.transpose(1, 2) * m), 0.01)
                y = F.leaky_relu(b.cas_conv2(y * m), 0.01)  # the CAS module's features before its classifier
                expected = b.classifier(on.ten(y, y, mask)).transpose(1, 2)
                torch.testing.assert_close(after[key], expected, atol=1e-6, rtol=1e-5)
        classifier_output = {"basnet": "base_logits"}.get(base, "cas_logits")
        assert not torch.allclose(after[classifier_output], before[classifier_output])


@pytest.mark.parametrize("ten", ["both", "base", "continuity"])
def test_residual_ten_adds_its_input(ten):
    plain = make_on_base("co2net", ten=ten).ten
    residual = make_on_base("co2net", ten=ten, ten_residual=True).ten
    residual.load_state_dict(plain.state_dict())
    features, mask, _ = make_batch()
    e = features.transpose(1, 2)  # [B, D, T]: the width the co2net base's TEN enhances
    with torch.no_grad():
        torch.testing.assert_close(residual(e, e, mask), e + plain(e, e, mask))


@pytest.mark.parametrize("ten", ["both", "base", "continuity"])
def test_gated_ten_starts_as_the_identity_and_scales_its_output(ten):
    plain = make_on_base("co2net", ten=ten).ten
    gated = make_on_base("co2net", ten=ten, ten_residual="gated").ten
    gated.load_state_dict({**plain.state_dict(), "gate": torch.zeros(1)})
    features, mask, _ = make_batch()
    e = features.transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(gated(e, e, mask), e)
        gated.gate.fill_(0.5)
        torch.testing.assert_close(gated(e, e, mask), e + 0.5 * plain(e, e, mask))


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("base", BASES)
def test_gated_ten_at_its_start_computes_exactly_the_base(base, training):
    reference = make_base_alone(base, seed=0)
    model = make_on_base(base, seed=1, ten="both", ten_residual="gated", bg_loss=False)
    model.base.load_state_dict(reference.state_dict())
    reference.train(training)
    model.train(training)
    features, mask, _ = make_batch()
    want_out, want_losses, _ = _run(reference, features, mask, PAIR_LABELS, seed=3)
    got_out, got_losses, _ = _run(model, features, mask, PAIR_LABELS, seed=3)
    for key in want_out:
        torch.testing.assert_close(got_out[key], want_out[key], atol=1e-6, rtol=1e-6, msg=key)
    torch.testing.assert_close(got_losses["total"], want_losses["total"], atol=1e-6, rtol=1e-6)
    assert model.ten.gate.grad is not None and model.ten.gate.grad.abs() > 0  # the TEN can come in


def test_ten_residual_reads_the_flag_it_was_and_refuses_other_values():
    assert TENConfig(ten_residual=True).ten_residual == "add" and TENConfig(ten_residual=False).ten_residual == "off"
    with pytest.raises(WtalError, match="model.ten_residual"):
        load_config(None, ["model.ten_residual=sometimes"])


@pytest.mark.parametrize("base", BASES)
def test_enhance_hook_gets_the_features_before_the_base_dropout(base):
    model = make_on_base(base, ten="off").train()
    seen = []

    def record(x, clean):
        seen.append((x, clean))
        return x

    features, mask, _ = make_batch()
    torch.manual_seed(0)
    model.base(features, mask, enhance=record)
    x, clean = seen[0]
    if base != "basnet" and base != "um":  # dropout between their features and the hook
        kept = x != 0
        p = model.base.dropout.p
        real = mask[:, None, :].expand_as(x)
        assert 0.5 * p < 1 - kept[real].float().mean() < 1.5 * p
        torch.testing.assert_close(x[kept], clean[kept] / (1 - p))
    else:  # BaS-Net's and UM's dropout comes after the hook
        assert clean is x


def test_clean_affinity_weighs_neighbours_by_the_features_before_dropout():
    dropped = make_on_base("co2net", ten="continuity", window=50, ten_affinity="dropped").ten
    clean_ten = make_on_base("co2net", ten="continuity", window=50, ten_affinity="clean").ten
    clean_ten.load_state_dict(dropped.state_dict())
    features, mask, _ = make_batch()
    clean = features.transpose(1, 2)  # [B, D, T]
    noisy = torch.nn.functional.dropout(clean, 0.7)
    with torch.no_grad():
        torch.testing.assert_close(clean_ten(clean, clean, mask), dropped(clean, clean, mask))
        got = clean_ten(noisy, clean, mask)
        # clean affinity, aggregated from the noisy features
        unit = torch.nn.functional.normalize(clean, dim=1)
        logits = (unit.transpose(1, 2) @ unit / dropped.cfg.tau).masked_fill(~mask[:, None, :], float("-inf"))
        expected = dropped.phi(noisy) @ logits.softmax(-1).transpose(1, 2)
        real = mask[:, None, :].expand_as(got)
        torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(got, dropped(noisy, noisy, mask), atol=1e-3)


def test_coactivity_loss_can_read_the_features_before_the_ten():
    enhanced = make_on_base("co2net", ten="both", bg_loss=False, coactivity_input="enhanced").eval()
    unenhanced = make_on_base("co2net", ten="both", bg_loss=False, coactivity_input="unenhanced").eval()
    unenhanced.load_state_dict(enhanced.state_dict())
    features, mask, _ = make_batch()
    with torch.no_grad():
        out = enhanced(features, mask)
        before_ten = make_on_base("co2net", ten="off").eval()
        before_ten.base.load_state_dict(enhanced.base.state_dict())
        x = before_ten(features, mask)["fused"]
        torch.testing.assert_close(out["unenhanced"], x)
        got = unenhanced.loss(out, PAIR_LABELS, mask)
        expected = enhanced.base.loss({**out, "fused": x}, PAIR_LABELS, mask)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value)
        assert not torch.allclose(enhanced.loss(out, PAIR_LABELS, mask)["coactivity"], got["coactivity"])
    with pytest.raises(WtalError, match="model.coactivity_input: expected one of"):
        WholeVideoBgConfig(coactivity_input="before").validate()


FORCED = {  # (base, bg_input) -> the base's output the background loss forces to background
    ("plain", "cas"): "cas_logits",
    ("plain", "cas_fg"): "cas_fg_logits",
    ("co2net", "cas"): "cas_logits",
    ("co2net", "cas_fg"): "cas_fg_logits",
    ("basnet", "cas"): "base_logits",
    ("basnet", "cas_fg"): "supp_logits",
    ("delu", "cas"): "cas_logits",
    ("delu", "cas_fg"): "cas_fg_logits",
    ("um", "cas"): None,  # [S, background row]
    ("wtalc", "cas"): None,
    ("mil", "cas"): None,
}


@pytest.mark.parametrize("bg_pool", ["mean", "topk"])
@pytest.mark.parametrize("base, bg_input", list(FORCED))
def test_background_loss_forces_the_base_background_channel(base, bg_input, bg_pool):
    model = make_on_base(base, bg_input=bg_input, bg_pool=bg_pool, bg_weight=0.7, reading="A", lam=1.0).eval()
    features, mask, _ = make_batch()
    with torch.no_grad():
        out = model(features, mask)
        losses = model.loss(out, PAIR_LABELS, mask)
        # a co-activity loss reads the features before the TEN (coactivity_input="unenhanced")
        read = {**out, READS_FEATURES[base]: out["unenhanced"]} if base in READS_FEATURES else out
        base_terms = model.base.loss(read, PAIR_LABELS, mask)
    if FORCED[base, bg_input] is None:
        forced = torch.cat([out["cas_logits"], out["background_logits"][..., None]], -1)
    else:
        forced = out[FORCED[base, bg_input]]
    assert forced.shape == (B, T, C + 1)
    r = {"plain": 7, "co2net": 7, "delu": 7, "basnet": 8, "um": 9, "wtalc": 8, "mil": 8}[base]  # the base's own top-k ratio
    pooled = masked_mean(forced, mask) if bg_pool == "mean" else topk_mean(forced, mask, r)
    background = torch.zeros(B, C + 1)
    background[:, -1] = 1
    torch.testing.assert_close(losses["bg"], video_cross_entropy(pooled, background))
    for key, value in base_terms.items():  # the base's own loss stays whole
        if key != "total":
            torch.testing.assert_close(losses[key], value)
    torch.testing.assert_close(losses["total"], base_terms["total"] + 0.7 * losses["bg"])


@pytest.mark.parametrize("base", NO_BACKGROUND)
def test_background_row_only_with_the_background_loss_and_unread_by_the_base(base):
    classifier = lambda model: model.base.classifier.weight.shape[0]  # noqa: E731  outputs of the classifier
    assert classifier(make_on_base(base, bg_loss=False)) == C
    model = make_on_base(base, ten="off").eval()
    assert classifier(model) == C + 1
    alone = make_base_alone(base).eval()
    alone.load_state_dict({k: v[:C] if k.startswith("classifier.") else v for k, v in model.base.state_dict().items()})
    features, mask, _ = make_batch()
    with torch.no_grad():
        out, want = model(features, mask), alone(features, mask)
        assert set(out) == set(want) | {"background_logits"}
        for key in want:
            torch.testing.assert_close(out[key], want[key])
        losses, want_losses = model.loss(out, PAIR_LABELS, mask), alone.loss(want, PAIR_LABELS, mask)
    for key in want_losses:
        if key != "total":
            torch.testing.assert_close(losses[key], want_losses[key])
    if base == "um":  # a bias-free row on the embedding
        weight = model.base.classifier.weight[C, :, 0]
        torch.testing.assert_close(out["background_logits"], torch.einsum("bth,h->bt", out["embedding"], weight))


def test_base_config_loads_from_yaml_and_overrides(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model:\n  name: whole_video_bg\n  base: {name: co2net, embed_dim: 64, similar_pairs: 2}\n")
    cfg = load_config(path, ["model.base.norm_weight=1e-3", "model.ten=off"])
    base_cfg = cfg.model.base
    assert isinstance(base_cfg, CO2NetConfig)
    assert (base_cfg.embed_dim, base_cfg.similar_pairs, base_cfg.norm_weight) == (64, 2, 1e-3)
    assert base_cfg.guide_weight == CO2NetConfig().guide_weight  # the rest: the base's own defaults
    assert cfg.model.similar_pairs == 2  # what the trainer's sampler reads
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(dump_config(cfg))
    assert load_config(dumped) == cfg
    path.write_text("model:\n  base: basnet\n")  # a base by its name alone
    assert load_config(path).model.base == model_config_class("basnet")(name="basnet")
    assert load_config(None, ["model.base=co2net"]).model.similar_pairs == CO2NetConfig().similar_pairs
    assert load_config(None, ["model.base=basnet"]).model.similar_pairs == 0
    default = load_config(None).model
    assert default.base == CO2NetConfig(name="co2net") and default.similar_pairs == CO2NetConfig().similar_pairs
    assert load_config(None, ["model.base=plain"]).model.similar_pairs == 0
    # the base's keys before or after its name: one section
    both = load_config(None, ["model.base.embed_dim=16", "model.base=basnet", "model.base.topk_r=5"]).model.base
    assert (both.name, both.embed_dim, both.topk_r) == ("basnet", 16, 5)
    model = build_model(load_config(None, ["model.base=basnet", "model.base.embed_dim=16"]).model, D, C)
    assert isinstance(model.base, BaSNet) and model.base.cas_conv2.out_channels == 16
    assert model.ten.base_branch.in_channels == 16  # the TEN runs at the width of the base's features


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.base=nope"], r"model.base.name: unknown model 'nope'"),
        (["model.base=co2net", "model.base.nope=1"], r"model.base: unknown key\(s\) \['nope'\]"),
        (["model.base=co2net", "model.base.embed_dim=wide"], "model.base.embed_dim: expected an integer"),
        (["model.base=co2net", "model.base.init=xavier"], "model.base.init: expected one of"),
        (["model.base=basnet", "model.base.topk_r=0"], "model.base.topk_r: expected an integer >= 1"),
        (["model.base=um", "model.embed_dim=64"], r"model: unknown key\(s\) \['embed_dim'\].*model.base.embed_dim"),
        (["model.embed_dim=64"], r"unknown key\(s\) \['embed_dim'\].*the base's key is model.base.embed_dim"),
        (["model.base=um", "model.bg_input=cas_fg"], r"model.bg_input: expected one of \['cas'\] with model.base.name=um"),
        (["model.base=3"], "model.base: expected a model name or a mapping"),
        (["model.base=whole_video_bg"], "model.base: expected the config of a registered model other than whole_video_bg"),
    ],
)
def test_base_config_errors_name_the_key(overrides, message):
    with pytest.raises(WtalError, match=message):
        load_config(None, overrides)


@pytest.mark.parametrize("base", BASES)
def test_trains_on_each_base_through_the_trainer(base, tiny_run_overrides):
    overrides = [*tiny_run_overrides, f"model.base={base}", "model.base.embed_dim=32", "train.iterations=4", "train.eval_every=0"]
    result = train(load_config(None, overrides), progress=False)
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert "bg" in lines[0] and np.isfinite(result.metrics["averages"]["avg"])


@pytest.mark.parametrize("base", ["co2net", "basnet", "um", "delu", "wtalc"])
def test_whole_video_bg_takes_its_base_authors_post_processing(base):
    wrapped = load_config(None, ["model.name=whole_video_bg", f"model.base={base}"]).inference
    alone = load_config(None, [f"model.name={base}"]).inference
    assert wrapped == alone and wrapped != load_config(None, ["model.name=whole_video_bg", "model.base=plain"]).inference
    override = load_config(None, ["model.name=whole_video_bg", f"model.base={base}", "inference.nms=none"])
    assert override.inference.nms == "none"


@pytest.mark.parametrize("base", ["plain", "um"])
def test_gradnorm_balance_sets_the_background_gradient_norm_to_bg_weight_times_the_base(base):
    """At the forced scores: bg gradient = bg_weight x |base loss gradient|, in the direction of
    the unbalanced background gradient."""
    features, mask, _ = make_batch()

    def gradients(model):
        out = model(features, mask)
        losses = model.loss(out, PAIR_LABELS, mask)
        parts = [out[key] for key in ("cas_logits", "background_logits") if key in out]
        total = torch.autograd.grad(losses["total"], parts, retain_graph=True, allow_unused=True)
        base_only = torch.autograd.grad(model.base.loss(out, PAIR_LABELS, mask)["total"], parts, allow_unused=True)
        zero = [torch.zeros_like(p) for p in parts]
        flat = [torch.cat([(g if g is not None else z).flatten() for g, z in zip(gs, zero)]) for gs in (total, base_only)]
        return losses, flat[0] - flat[1], flat[1]

    kw = dict(bg_weight=0.5, bg_warmup=0.0, reading="D", lam=2.0)
    balanced = make_on_base(base, bg_balance="gradnorm", **kw).eval()
    losses, bg_grad, base_grad = gradients(balanced)
    torch.testing.assert_close(bg_grad.norm(), 0.5 * base_grad.norm())
    plain = make_on_base(base, **kw).eval()
    plain_losses, plain_bg_grad, _ = gradients(plain)
    torch.testing.assert_close(losses["total"], plain_losses["total"])  # values unchanged
    torch.testing.assert_close(bg_grad / bg_grad.norm(), plain_bg_grad / plain_bg_grad.norm())
    assert not torch.allclose(bg_grad.norm(), plain_bg_grad.norm())


def test_the_co2net_base_needs_both_modalities():
    with pytest.raises(WtalError, match=r"data.modality: expected both .*model.base.name=co2net.*found 'rgb'.*model.base=basnet \| mil \| plain \| um \| wtalc\)"):
        load_config(None, ["data.modality=rgb"])
    with pytest.raises(WtalError, match=r"data.modality: expected both with model.name=co2net.*found 'flow'.*mil or basnet"):
        load_config(None, ["model.name=co2net", "data.modality=flow"])
    assert load_config(None, ["data.modality=rgb", "model.base=plain"]).data.modality == "rgb"
    assert load_config(None, ["data.modality=rgb", "model.base=um"]).model.base.name == "um"


# ---------------------------------------------------------------- a new base is one file and one registry line


@pytest.fixture
def toy_base(monkeypatch):
    """A base defined here, registered for this test only: a linear classifier without a background
    channel, its loss a top-k MIL cross-entropy."""
    from dataclasses import dataclass

    from wtal.models import registry
    from wtal.models.base import WtalModel

    @dataclass
    class ToyConfig(registry.ModelConfig):
        name: str = "toy"
        embed_dim: int = H  # width of its one embedding layer
        topk_r: int = 4

    class Toy(WtalModel):
        def __init__(self, cfg, in_dim, num_classes, background_row=False):
            super().__init__(cfg, num_classes, background_row)
            self.embed = torch.nn.Linear(in_dim, cfg.embed_dim)
            self.classifier = torch.nn.Linear(cfg.embed_dim, num_classes + int(background_row))

        @property
        def enhance_width(self):
            return self.classifier.in_features

        def forward(self, features, mask, enhance=None):
            e = torch.relu(self.embed(features)).masked_fill(~mask[..., None], 0.0)  # [B, T, H]
            if enhance is not None:
                e = enhance(e.transpose(1, 2), e.transpose(1, 2)).transpose(1, 2)
            return {"embedding": e, **self.split_background_row(self.classifier(e))}

        def loss(self, outputs, labels, mask):
            mil = video_cross_entropy(topk_mean(outputs["cas_logits"], mask, self.cfg.topk_r), labels)
            return {"total": mil, "mil": mil}

        def scores(self, outputs, mask, video_topk_divisor=10):
            cas = torch.softmax(outputs["cas_logits"], -1) * mask[..., None]
            pooled = topk_mean(outputs["cas_logits"], mask, video_topk_divisor)
            return {"attention": cas.amax(-1), "cas": cas, "video_scores": torch.softmax(pooled, -1)}

    monkeypatch.setitem(registry._MODELS, "toy", (Toy, ToyConfig))
    return Toy, ToyConfig


def test_the_paper_parts_sit_on_a_base_registered_outside_src(toy_base):
    toy, toy_config = toy_base
    cfg = load_config(None, ["model.base=toy", "model.base.topk_r=3", "model.ten=both"]).model
    assert isinstance(cfg.base, toy_config) and cfg.base.topk_r == 3
    torch.manual_seed(0)
    model = build_model(cfg, in_dim=D, num_classes=C)
    assert isinstance(model.base, toy) and model.base.classifier.out_features == C + 1  # a background row
    assert model.ten.base_branch.in_channels == H
    features, mask, _ = make_batch()
    out = model(features, mask)
    losses = model.loss(out, PAIR_LABELS, mask)
    assert set(losses) == {"total", "mil", "bg"} and losses["bg"] > 0
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    assert_scores_contract(model.scores(out, mask), mask, C, bounded_cas=True)
    with pytest.raises(WtalError, match=r"model.bg_input: expected one of \['cas'\] with model.base.name=toy"):
        load_config(None, ["model.base=toy", "model.bg_input=cas_fg"])

    off = build_model(replace(cfg, ten="off", bg_loss=False), in_dim=D, num_classes=C)
    alone = build_model(toy_config(name="toy", topk_r=3), in_dim=D, num_classes=C)
    alone.load_state_dict(off.base.state_dict())
    with torch.no_grad():
        got, want = off.loss(off(features, mask), PAIR_LABELS, mask), alone.loss(alone(features, mask), PAIR_LABELS, mask)
    torch.testing.assert_close(got["total"], want["total"])
