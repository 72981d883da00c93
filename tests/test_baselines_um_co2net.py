"""The UM and CO2-Net baselines (tiny dimensions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wtal.config import load_config
from wtal.engine.trainer import train
from wtal.errors import WtalError
from wtal.models import build_model
from wtal.models.co2net import CO2Net, CO2NetConfig, mutual_loss
from wtal.models.um import UMConfig, UncertaintyModeling, magnitude_loss, select_topk

from model_checks import B, C, D, H, LENGTHS, T, assert_finite_scalar_losses, assert_padding_invariance, make_batch
from model_checks import assert_gradients_reach_every_parameter, assert_scores_contract

torch.set_num_threads(1)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MODELS = ("um", "co2net")


def make_cfg(name: str, **kw):
    if name == "um":
        return UMConfig(embed_dim=H, **kw)
    return CO2NetConfig(embed_dim=H, attention_dim=8, **kw)


def make_model(name: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(make_cfg(name, **kw), in_dim=D, num_classes=C)


# ---------------------------------------------------------------- both models


@pytest.mark.parametrize("name", MODELS)
def test_shapes_loss_and_gradients(name):
    model = make_model(name)
    features, mask, labels = make_batch()
    out = model(features, mask)
    channels = C if name == "um" else C + 1
    assert out["cas_logits"].shape == (B, T, channels)
    losses = model.loss(out, labels, mask)
    expected = (
        {"total", "cls", "um", "be"}
        if name == "um"
        else {"total", "orig", "supp", "coactivity", "mutual", "norm", "guide"}
    )
    assert set(losses) == expected
    assert_finite_scalar_losses(losses)
    losses["total"].backward()
    assert_gradients_reach_every_parameter(model)
    scores = model.scores(out, mask)
    # CO2-Net's authors localise on logits x attention, which no bound holds
    assert_scores_contract(scores, mask, C, bounded_cas=name == "um")
    if name == "um":
        torch.testing.assert_close(scores["video_scores"].sum(-1), torch.ones(B))
    else:  # a softmax over C + 1 channels, background dropped
        assert (scores["video_scores"].sum(-1) < 1).all()


@pytest.mark.parametrize("name", MODELS)
def test_padding_invariance(name):
    model = make_model(name).eval()
    # padded values must not reach a real snippet; the videos run alone never see the padding
    garbage, mask, labels = make_batch(padding_value=1e3)
    keys = ("attention", "cas_logits") + (("magnitude",) if name == "um" else ("cas_fg_logits",))
    batched, alones = assert_padding_invariance(model, garbage, mask, keys, atol=1e-5)
    with torch.no_grad():
        for i, (length, alone) in enumerate(zip(LENGTHS, alones)):
            one_video = {k: v[i : i + 1] for k, v in batched.items()}
            batched_losses = model.loss(one_video, labels[i : i + 1], mask[i : i + 1])
            alone_losses = model.loss(alone, labels[i : i + 1], mask[i : i + 1, :length])
            for key, value in alone_losses.items():
                torch.testing.assert_close(batched_losses[key], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_config_loading(name):
    cfg = load_config(None, [f"model.name={name}", "model.embed_dim=16"])
    assert isinstance(cfg.model, UMConfig if name == "um" else CO2NetConfig)
    assert cfg.model.embed_dim == 16
    model = build_model(cfg.model, in_dim=D, num_classes=C)
    assert isinstance(model, UncertaintyModeling if name == "um" else CO2Net)
    yaml_cfg = load_config(CONFIGS / f"{name}_thumos14.yaml")
    assert yaml_cfg.model.name == name and isinstance(yaml_cfg.model, type(cfg.model))
    assert yaml_cfg.model == type(cfg.model)()  # the YAML spells out the paper defaults
    assert yaml_cfg.data.root == "data/synthetic_thumos14" and yaml_cfg.eval.ambiguous_filter


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.r_act=0", "model.r_act"),
        ("model.margin=0", "model.margin"),
        ("model.select_dropout=1.0", "model.select_dropout"),
        ("model.um_weight=-1", "model.um_weight"),
        ("model.be_weight=-1", "model.be_weight"),
        ("model.video_loss=softmax", "model.video_loss"),
    ],
)
def test_um_validate_names_the_field(override, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, ["model.name=um", override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.topk_r=0", "model.topk_r"),
        ("model.consensus_dropout=1.5", "model.consensus_dropout"),
        ("model.mutual_weight=-1", "model.mutual_weight"),
    ],
)
def test_co2net_validate_names_the_field(override, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, ["model.name=co2net", override])


@pytest.mark.parametrize("name", MODELS)
def test_trains_end_to_end(name, tiny_run_overrides):
    overrides = [*tiny_run_overrides, f"model.name={name}", "model.embed_dim=32", "train.iterations=6", "train.eval_every=3"]
    cfg = load_config(None, overrides)
    result = train(cfg, progress=False)
    assert (result.run_dir / "metrics.json").is_file()
    assert torch.isfinite(torch.tensor(result.metrics["averages"]["avg"]))


# ---------------------------------------------------------------- UM pieces


def test_select_topk_per_video_k_and_padding_excluded():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3, 9.0], [4.0, 1.0, 3.0, 9.0, 9.0, 9.0]])
    mask = torch.tensor([[True] * 5 + [False], [True] * 3 + [False] * 3])
    w = select_topk(score, mask, r=2)  # k = 2 and 1
    torch.testing.assert_close(w, torch.tensor([[0, 0.5, 0, 0.5, 0, 0], [1.0, 0, 0, 0, 0, 0]]))


def test_magnitude_loss_hand_computed():
    act = torch.tensor([[3.0, 4.0], [30.0, 40.0]])  # norms 5 and 50
    bkg = torch.tensor([[0.0, 1.0], [6.0, 8.0]])  # norms 1 and 10
    # video 0: (max(0, 20 - 5) + 1)^2 = 256; video 1: (0 + 10)^2 = 100
    torch.testing.assert_close(magnitude_loss(act, bkg, margin=20.0), torch.tensor(178.0))


@pytest.mark.parametrize("video_loss", ["bce", "ce"])
def test_um_loss_components_match_definitions(video_loss):
    model = make_model("um", r_act=3, r_bkg=2, margin=5.0, um_weight=0.1, be_weight=0.3, video_loss=video_loss).eval()
    features, mask, labels = make_batch()
    with torch.no_grad():
        out = model(features, mask)
        losses = model.loss(out, labels, mask)
    f, s, mag = out["embedding"], out["cas_logits"], out["magnitude"]
    cls, um, be = [], [], []
    for i, n in enumerate(LENGTHS):
        order = mag[i, :n].argsort(descending=True)
        act, bkg = order[: max(1, n // 3)], order.flip(0)[: max(1, n // 2)]
        p_act = torch.softmax(s[i, :n].topk(max(1, n // 3), dim=0).values.mean(0), -1)
        p_bkg = torch.softmax(s[i, bkg].mean(0), -1)
        target = labels[i] / labels[i].sum()
        if video_loss == "bce":  # averaged over the C classes
            cls.append(-(target * p_act.log() + (1 - target) * (1 - p_act).log()).mean())
            be.append(-(p_bkg.log() / C + (1 - 1 / C) * (1 - p_bkg).log()).mean())
        else:
            cls.append(-(target * p_act.log()).sum())
            be.append(-p_bkg.log().mean())
        um.append((torch.relu(5.0 - f[i, act].mean(0).norm()) + f[i, bkg].mean(0).norm()) ** 2)
    for key, parts in (("cls", cls), ("um", um), ("be", be)):
        torch.testing.assert_close(losses[key], torch.stack(parts).mean())
    torch.testing.assert_close(losses["total"], losses["cls"] + 0.1 * losses["um"] + 0.3 * losses["be"])


def test_um_attention_is_the_normalised_magnitude():
    """Eval mode: (||F_t|| - g_bkg) / (g_act - g_bkg) clipped to [0, 1], g the mean magnitudes of
    the pseudo action (top T // r_act) and background (bottom T // r_bkg) snippets."""
    model = make_model("um", r_act=3, r_bkg=2).eval()
    features, mask, _ = make_batch()
    with torch.no_grad():
        out = model(features, mask)
    for i, n in enumerate(LENGTHS):
        mag = out["magnitude"][i, :n].sort(descending=True).values
        g_act, g_bkg = mag[: max(1, n // 3)].mean(), mag.flip(0)[: max(1, n // 2)].mean()
        expected = ((out["magnitude"][i, :n] - g_bkg) / (g_act - g_bkg)).clamp(0, 1)
        torch.testing.assert_close(out["attention"][i, :n], expected)


def test_um_keep_restricts_the_mining():
    """A given keep mask: only kept snippets are mined while enough of them score above 0."""
    model = make_model("um", r_act=4, r_bkg=4).eval()
    features, mask, _ = make_batch()
    keep = mask.clone()
    keep[:, ::2] = False
    with torch.no_grad():
        out = model(features, mask, keep=keep)
    for key in ("act_weights", "bkg_weights"):
        assert (out[key][~keep] == 0).all()
        torch.testing.assert_close(out[key].sum(1), torch.ones(len(LENGTHS)))


def test_um_selection_dropout_only_in_training():
    model = make_model("um", select_dropout=0.5)
    features, mask, _ = make_batch()
    model.eval()
    with torch.no_grad():
        first, second = model(features, mask), model(features, mask)
    assert torch.equal(first["act_weights"], second["act_weights"])
    model.train()
    with torch.no_grad():
        out = model(features, mask)
    for key in ("act_weights", "bkg_weights"):
        torch.testing.assert_close(out[key].sum(1), torch.ones(len(LENGTHS)))
        assert (out[key][~mask] == 0).all()


# ---------------------------------------------------------------- CO2-Net pieces


def test_co2net_mutual_loss_zero_when_equal_and_hand_computed():
    a = torch.rand(2, 5)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    assert mutual_loss(a, a.clone(), mask).item() == 0.0
    b = a.clone()
    b[0] += 0.2
    b[1, 3:] += 5.0  # padding ignored
    # video 0: squared gap 0.04 on every snippet; video 1: 0 -> mean 0.02
    torch.testing.assert_close(mutual_loss(a, b, mask), torch.tensor(0.02))


def test_co2net_mutual_loss_gradients_stop_each_way():
    a_rgb = torch.tensor([[0.2, 0.6]], requires_grad=True)
    a_flow = torch.tensor([[0.4, 0.1]], requires_grad=True)
    mutual_loss(a_rgb, a_flow, torch.ones(1, 2, dtype=torch.bool)).backward()
    # d/da_rgb of 0.5 * mean((a_rgb - sg(a_flow))^2) = (a_rgb - a_flow) / 2 per snippet
    torch.testing.assert_close(a_rgb.grad, torch.tensor([[-0.1, 0.25]]))
    torch.testing.assert_close(a_flow.grad, torch.tensor([[0.1, -0.25]]))


def test_co2net_loss_components_match_definitions():
    model = make_model("co2net", topk_r=3, norm_weight=0.5, guide_weight=0.25, mutual_weight=2.0).eval()
    features, mask, labels = make_batch()
    with torch.no_grad():
        out = model(features, mask)
        losses = model.loss(out, labels, mask)
    a, ar, af, s = out["attention"], out["attention_rgb"], out["attention_flow"], out["cas_logits"]
    torch.testing.assert_close(a, (ar + af) / 2)
    parts = {k: [] for k in ("orig", "supp", "norm", "guide")}
    for i, n in enumerate(LENGTHS):
        low = s[i, :n].min(1, keepdim=True).values
        s_fg = a[i, :n, None] * (s[i, :n] - low) + low
        torch.testing.assert_close(out["cas_fg_logits"][i, :n], s_fg)
        k = max(1, n // 3)
        for key, x, bg in (("orig", s[i, :n], 1.0), ("supp", s_fg, 0.0)):
            target = torch.cat([labels[i], torch.tensor([bg])])
            pooled = x.topk(k, dim=0).values.mean(0)
            parts[key].append(-(target / (target.sum() + 1e-4) * torch.log_softmax(pooled, -1)).sum())
        background = torch.softmax(s[i, :n], -1)[:, -1]
        parts["norm"].append(torch.stack([x[i, :n].mean() for x in (a, ar, af)]).mean())
        parts["guide"].append(torch.stack([(1 - x[i, :n] - background).abs().mean() for x in (a, ar, af)]).mean())
    for key, values in parts.items():
        torch.testing.assert_close(losses[key], torch.stack(values).mean())
    # the batch's one pair (videos 0 and 1) shares no class, so the co-activity term is 0
    assert losses["coactivity"] == 0
    expected = losses["orig"] + losses["supp"] + 2.0 * losses["mutual"] + 0.5 * losses["norm"] + 0.25 * losses["guide"]
    torch.testing.assert_close(losses["total"], expected)


def test_co2net_modalities_are_the_two_halves():
    model = make_model("co2net").eval()
    features, mask, _ = make_batch()
    flow_changed = features.clone()
    flow_changed[..., D // 2 :] += 1.0
    with torch.no_grad():
        base = model(features, mask)
        changed = model(flow_changed, mask)
        # the RGB-main stream's attention depends on flow only through its filter
        x = features.transpose(1, 2)
        ar_base, _ = model.rgb_consensus(x[:, : D // 2], x[:, D // 2 :], mask, mask[:, None].float())
    torch.testing.assert_close(base["attention_rgb"], ar_base)
    assert not torch.allclose(base["attention_flow"], changed["attention_flow"])


def test_co2net_rejects_odd_feature_width():
    with pytest.raises(WtalError, match="odd"):
        build_model(make_cfg("co2net"), in_dim=D + 1, num_classes=C)
