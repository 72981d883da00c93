"""The whole-video-as-background model, its loss and the generic loss pieces (tiny dimensions)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from wtal.config import load_config
from wtal.errors import WtalError
from wtal.losses import masked_mean, masked_min, scale_grad, topk_mean, video_cross_entropy
from wtal.models import build_model
from wtal.models.whole_video_bg import WholeVideoBackground, WholeVideoBgConfig

from model_checks import B, C, D, H, LENGTHS, T, assert_finite_scalar_losses, assert_padding_invariance, make_batch
from model_checks import assert_gradients_reach_every_parameter, assert_scores_contract

torch.set_num_threads(1)


def make_cfg(**kw) -> WholeVideoBgConfig:
    return WholeVideoBgConfig(embed_dim=H, attention_dim=8, **kw)


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
]


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
    torch.testing.assert_close(losses["total"], losses["fg"] + model.cfg.alpha * losses["norm"])


def test_background_weight_ramps_in_over_the_warmup():
    features, mask, labels = make_batch()
    model = make_model(bg_warmup=0.5, beta=0.4).eval()
    with torch.no_grad():
        out = model(features, mask)
        totals = []
        for progress in (0.0, 0.25, 0.5, 0.9):
            model.progress = progress
            losses = model.loss(out, labels, mask)
            totals.append(losses["total"] - losses["fg"] - model.cfg.alpha * losses["norm"])
    weights = [0.0, 0.5, 1.0, 1.0]
    for total, weight in zip(totals, weights):
        torch.testing.assert_close(total, weight * 0.4 * losses["bg"])


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
        ("model.reading=D", "model.reading"),
        ("model.ten=all", "model.ten"),
        ("model.continuity=conv", "model.continuity"),
        ("model.fusion=max", "model.fusion"),
        ("model.bg_pool=max", "model.bg_pool"),
        ("model.suppress_min=both", "model.suppress_min"),
        ("model.tau=0", "model.tau"),
        ("model.lam=-1", "model.lam"),
        ("model.window=0", "model.window"),
        ("model.topk_r=0", "model.topk_r"),
        ("model.embed_dim=0", "model.embed_dim"),
        ("model.dropout=1.0", "model.dropout"),
        ("model.attention_dropout=-0.1", "model.attention_dropout"),
        ("model.alpha=-0.5", "model.alpha"),
        ("model.beta=-1", "model.beta"),
    ],
)
def test_validate_names_the_field(override, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, [override])


def test_build_rejects_invalid_config():
    with pytest.raises(WtalError, match="model.fusion"):
        build_model(make_cfg(fusion="mul"), in_dim=D, num_classes=C)


def test_registry_and_config_loading():
    cfg = load_config(None, ["model.lam=2", "model.embed_dim=16"])
    assert isinstance(cfg.model, WholeVideoBgConfig)
    assert cfg.model.lam == 2.0 and isinstance(cfg.model.lam, float) and cfg.model.embed_dim == 16
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
