"""DELU against its authors' code: the same weights give the same outputs, losses, gradients and proposals.

``tests/fixtures/parity_delu.npz`` and ``parity_delu_proposals.npz`` were made by running the
authors' code (reduced widths, CPU); ``tests/fixtures/README.md`` says how.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from wtal.config import load_config
from wtal.engine.sweep import read_variants
from wtal.engine.trainer import train
from wtal.errors import WtalError
from wtal.localize import localize_video
from wtal.models import build_model, delu
from wtal.models.co2net import CO2Net, CO2NetConfig
from wtal.models.delu import DELU, DELUConfig, easy_to_hard_curve, evidential_loss, uncertainty_guide_loss

from model_checks import C, LENGTHS, assert_authors_mapping, assert_padding_invariance, assert_proposals_match
from model_checks import assert_gradients_match_the_authors, assert_scores_contract, make_batch, replay_dropout

torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WIDTH, EMBED, ATTENTION, CLASSES = 32, 32, 8, 5
SNIPPET_SECONDS = 16 / 25
CO2NET_TERMS = ("orig", "supp", "coactivity", "mutual", "norm", "guide")


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES / "parity_delu.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def pp():
    with np.load(FIXTURES / "parity_delu_proposals.npz") as data:
        return {k: data[k] for k in data.files}


def authors_model(ref) -> DELU:
    model = DELU(DELUConfig(embed_dim=EMBED, attention_dim=ATTENTION), in_dim=WIDTH, num_classes=CLASSES)
    model.load_authors_state_dict(authors_state(ref))
    return model.eval()


def authors_state(ref) -> dict:
    return {k[len("param/") :]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("param/")}


def progress_at(ref, itr) -> float:
    """The authors' iteration counter as wtal's progress (the trainer's (step - 1) / iterations)."""
    return int(itr) / int(ref["max_iter"])


def close(actual, expected):
    torch.testing.assert_close(torch.as_tensor(actual).float(), torch.as_tensor(expected).float(), atol=1e-5, rtol=1e-5)


def check_outputs(out, ref, prefix=""):
    close(out["cas_logits"], ref[f"{prefix}out/cas"])
    close(out["attention"], ref[f"{prefix}out/attn"][..., 0])
    close(out["attention_rgb"], ref[f"{prefix}out/v_atn"][..., 0])
    close(out["attention_flow"], ref[f"{prefix}out/f_atn"][..., 0])
    close(out["fused"], ref[f"{prefix}out/feat"])


def test_forward_and_every_loss_term_match_the_authors_at_each_iteration(ref):
    model = authors_model(ref)
    features, labels = torch.from_numpy(ref["features"]), torch.from_numpy(ref["labels"])
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        out = model(features, mask)
    check_outputs(out, ref)
    for itr in ref["itrs"]:
        model.progress = progress_at(ref, itr)
        with torch.no_grad():
            losses = model.loss(out, labels, mask)
        for name in CO2NET_TERMS + ("edl",):
            close(losses[name], ref[f"loss/{name}"])
        close(losses["uct_guide"], ref[f"loss/uct_guide@{itr}"])
        close(losses["total"], ref[f"loss/total@{itr}"])
    assert set(losses) == {"total", "edl", "uct_guide", *CO2NET_TERMS}


def test_training_mode_gradients_match_with_the_authors_dropout_masks(ref, monkeypatch):
    """Training mode with the authors' recorded dropout masks (``mask/<i>``, in call order) replayed:
    the same outputs, every loss term and every parameter's gradient."""
    model = authors_model(ref).train()
    replay = replay_dropout(monkeypatch, ref)
    features, labels = torch.from_numpy(ref["features"]), torch.from_numpy(ref["labels"])
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    model.progress = progress_at(ref, ref["train/itr"])
    out = model(features, mask)
    replay.assert_all_replayed()
    check_outputs(out, ref, "train/")
    losses = model.loss(out, labels, mask)
    for name in CO2NET_TERMS + ("edl", "uct_guide", "total"):
        close(losses[name], ref[f"train/loss/{name}"])
    losses["total"].backward()
    assert_gradients_match_the_authors(model, ref, close)


def test_padded_videos_of_other_lengths_get_what_each_gets_alone(ref):
    """The evidential and uncertainty-guided losses of a padded batch average the authors' values of
    each video run alone (top-k, curve length and means per video; one video shorter than r)."""
    model = authors_model(ref)
    features, labels = torch.from_numpy(ref["features"]), torch.from_numpy(ref["labels"])
    lengths = torch.from_numpy(ref["ragged/lengths"])
    batch = features[: len(lengths)].clone()
    mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
    batch[~mask] = 50.0
    model.progress = progress_at(ref, ref["train/itr"])
    with torch.no_grad():
        losses = model.loss(model(batch, mask), labels[: len(lengths)], mask)
    close(losses["edl"], ref["ragged/edl"].mean())
    close(losses["uct_guide"], ref["ragged/uct_guide"].mean())


def test_evidence_clamp_matches_the_authors(ref):
    """Logits past +-10 (the authors' clamp of the exp evidence), on their own loss functions' inputs."""
    t = {k[len("clamp/") :]: torch.from_numpy(v) for k, v in ref.items() if k.startswith("clamp/")}
    mask = torch.ones(t["cas"].shape[:2], dtype=torch.bool)
    attentions = (t["attn"][..., 0], t["v_atn"][..., 0], t["f_atn"][..., 0])
    close(evidential_loss(t["supp_edl"], attentions[0], t["labels"], mask, 9), t["edl"])
    progress = progress_at(ref, t["itr"])
    close(uncertainty_guide_loss(t["cas"], t["supp"], attentions, mask, progress, 0.7), t["uct_guide"])


def test_the_curve_runs_from_easy_first_to_hard_first_over_training():
    lengths = torch.tensor([4, 3])
    start, middle, end = (easy_to_hard_curve(lengths, 4, p, 0.7) for p in (0.0, 0.5, 1.0))
    assert (start[0].diff() > 0).all() and (end[0].diff() < 0).all()
    torch.testing.assert_close(middle, torch.ones(2, 4))
    torch.testing.assert_close(start[1, :3], 0.7 * torch.tanh(torch.tensor([-2 / 3, 0.0, 2 / 3])) + 1)


def test_a_video_without_labels_adds_no_evidential_loss():
    s_fg = torch.randn(2, 12, CLASSES + 1)
    attention, mask = torch.rand(2, 12), torch.ones(2, 12, dtype=torch.bool)
    labels = torch.tensor([[0.0, 1, 0, 0, 1], [0, 0, 0, 0, 0]])
    both = evidential_loss(s_fg, attention, labels, mask, 9)
    first = evidential_loss(s_fg[:1], attention[:1], labels[:1], mask[:1], 9)
    assert torch.isfinite(both)
    close(both, first / 2)


def test_delu_is_co2net_plus_its_two_losses(ref):
    """With both DELU weights 0 and CO2-Net's guide weight, the loss is CO2-Net's; the network,
    its scores and the enhance hook are CO2-Net's."""
    torch.manual_seed(0)
    cfg = DELUConfig(embed_dim=EMBED, attention_dim=ATTENTION, edl_weight=0, uct_guide_weight=0, guide_weight=0.8)
    model = DELU(cfg, WIDTH, CLASSES)
    torch.manual_seed(0)
    co2net = CO2Net(CO2NetConfig(embed_dim=EMBED, attention_dim=ATTENTION), WIDTH, CLASSES)
    model.eval()
    co2net.eval()
    features, labels = torch.from_numpy(ref["features"]), torch.from_numpy(ref["labels"])
    mask = torch.ones(features.shape[:2], dtype=torch.bool)
    with torch.no_grad():
        ours, theirs = model(features, mask), co2net(features, mask)
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key])
        close(model.loss(ours, labels, mask)["total"], co2net.loss(theirs, labels, mask)["total"])
        for key, value in co2net.scores(theirs, mask).items():
            torch.testing.assert_close(model.scores(ours, mask)[key], value)
        enhanced = model(features, mask, enhance=lambda x, clean: 2 * x)
    torch.testing.assert_close(enhanced["unenhanced"], ours["fused"])
    torch.testing.assert_close(enhanced["fused"], 2 * ours["fused"])


def test_mapping_covers_every_parameter_and_refuses_unknown_names(ref):
    assert_authors_mapping(authors_model(ref), authors_state(ref), "vAttn.extra.weight")


def recorded_outputs(pp, v) -> dict:
    """The authors' preset scores of video v as model outputs: logits [1, T, C+1], attention [1, T]."""
    cas, attention = torch.from_numpy(pp[f"v{v}/cas"]), torch.from_numpy(pp[f"v{v}/attn"])
    return {"cas_logits": cas[None], "attention": attention[None, :, 0]}


def _localize_check(model, pp, cfg, key):
    """Every video's proposals from wtal equal the authors' ``v<i>/<key>``; returns their number."""
    total = 0
    for v in range(len(pp["lengths"])):
        outputs, theirs = recorded_outputs(pp, v), pp[f"v{v}/{key}"]
        total += assert_proposals_match(model, outputs, cfg, SNIPPET_SECONDS, 0.0, theirs, unit=SNIPPET_SECONDS)
    return total


def test_post_processing_reproduces_the_authors_proposals_before_their_length_filter(ref, pp):
    """DELU's inference defaults without the length filter give the proposals of the authors'
    ``multiple_threshold_hamnet`` (20 thresholds), and dropping those of one snippet after it gives
    their test.py's final proposals."""
    model = authors_model(ref)
    cfg = dataclasses.replace(load_config(None, ["model.name=delu"]).inference, min_length=0)
    videos = range(len(pp["lengths"]))
    assert _localize_check(model, pp, cfg, "proposals_hamnet") == sum(len(pp[f"v{v}/proposals_hamnet"]) for v in videos)
    for v in videos:
        before = pp[f"v{v}/proposals_hamnet"]
        np.testing.assert_array_equal(before[before[:, 1] - before[:, 0] > 1], pp[f"v{v}/proposals"])


def test_default_post_processing_reproduces_the_authors_final_proposals(ref, pp):
    """DELU's pipeline (the length filter after the soft-NMS) gives their test.py's final proposals,
    scores included; the same filter before the soft-NMS keeps their segments but not their scores."""
    model = authors_model(ref)
    cfg = load_config(None, ["model.name=delu"]).inference
    _localize_check(model, pp, cfg, "proposals")
    with pytest.raises(AssertionError):
        _localize_check(model, pp, dataclasses.replace(cfg, pipeline="multi_threshold"), "proposals")


def test_the_authors_inference_settings_are_the_default_and_overrides_win():
    cfg = load_config(None, ["model.name=delu"]).inference
    assert cfg.thresholds == pytest.approx([0.1 + k * 0.8 / 19 for k in range(20)])
    assert cfg.min_length == 2 and (cfg.normalize, cfg.inclusive, cfg.dedup) == (False, False, False)
    co2net = load_config(None, ["model.name=co2net"]).inference
    assert cfg.pipeline == "delu"
    assert dataclasses.replace(cfg, pipeline=co2net.pipeline, thresholds=co2net.thresholds, min_length=co2net.min_length) == co2net
    assert load_config(None, ["model.name=delu", "inference.min_length=0"]).inference.min_length == 0


@pytest.mark.parametrize(
    "override, field",
    [
        ("model.edl_weight=-1", "model.edl_weight"),
        ("model.uct_guide_weight=-0.1", "model.uct_guide_weight"),
        ("model.edl_topk_r=0", "model.edl_topk_r"),
        ("model.amplitude=1.5", "model.amplitude"),
        ("model.topk_r=0", "model.topk_r"),
    ],
)
def test_validate_names_the_field(override, field):
    with pytest.raises(WtalError, match=field):
        load_config(None, ["model.name=delu", override])


def test_odd_feature_width_names_delu():
    with pytest.raises(WtalError, match="model delu: feature width 31"):
        build_model(DELUConfig(), in_dim=31, num_classes=CLASSES)


def small_model(**kw) -> DELU:
    torch.manual_seed(0)
    return build_model(DELUConfig(embed_dim=16, attention_dim=8, **kw), in_dim=32, num_classes=C)


def test_gradients_reach_every_parameter_and_scores_keep_the_contract():
    model = small_model(similar_pairs=1)
    features, mask, labels = make_batch()
    model.progress = 0.3
    out = model(features, mask)
    losses = model.loss(out, labels, mask)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    losses["total"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert_scores_contract(model.scores(out, mask), mask, C, bounded_cas=False)  # CO2-Net's logits x attention


def test_padding_invariance():
    model = small_model().eval()
    model.progress = 0.6
    garbage, mask, labels = make_batch(padding_value=1e3)
    keys = ("attention", "cas_logits", "cas_fg_logits")
    batched, alones = assert_padding_invariance(model, garbage, mask, keys, atol=1e-5)
    with torch.no_grad():
        for i, (length, alone) in enumerate(zip(LENGTHS, alones)):
            one_video = {k: v[i : i + 1] for k, v in batched.items()}
            padded = model.loss(one_video, labels[i : i + 1], mask[i : i + 1])
            unpadded = model.loss(alone, labels[i : i + 1], mask[i : i + 1, :length])
            for key, value in unpadded.items():
                torch.testing.assert_close(padded[key], value, rtol=1e-5, atol=1e-5)


def test_the_trainer_drives_the_curve_by_the_fraction_of_training_done(tiny_run_overrides, monkeypatch):
    """The authors' itr / max_iter is the trainer's progress, (step - 1) / train.iterations."""
    seen = []
    plain = delu.uncertainty_guide_loss

    def recording(*args):
        seen.append(args[4])
        return plain(*args)

    monkeypatch.setattr(delu, "uncertainty_guide_loss", recording)
    overrides = [*tiny_run_overrides, "model.name=delu", "model.embed_dim=32", "model.attention_dim=8",
                 "data.sampling=resample", "train.iterations=4", "train.eval_every=0"]
    result = train(load_config(None, overrides), progress=False)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert np.isfinite(result.metrics["averages"]["avg"])


def test_config_file_spells_out_the_authors_thumos14_settings():
    cfg = load_config(CONFIGS / "delu_thumos14.yaml")
    assert isinstance(cfg.model, DELUConfig) and cfg.model == DELUConfig()
    assert (cfg.data.sampling, cfg.data.max_seqlen) == ("resample", 320)
    assert (cfg.train.iterations, cfg.train.batch_size, cfg.train.lr, cfg.train.weight_decay) == (5000, 10, 5e-5, 1e-3)
    assert (cfg.train.eval_every, cfg.train.select) == (50, "best_test")
    assert cfg.inference == DELUConfig.inference_defaults


def test_cpu_budget_row_loads_at_the_budget():
    """configs/sweeps/baselines_cpu.yaml's delu row: 512-d features, widths / 4, 600 iterations at twice
    the authors' learning rate, their batch, sampling and losses."""
    rows = {row.name: row.overrides for row in read_variants(CONFIGS / "sweeps" / "baselines_cpu.yaml")}
    cfg = load_config(CONFIGS / "thumos14_synthetic_cpu.yaml", rows["delu"])
    authors = load_config(CONFIGS / "delu_thumos14.yaml")
    assert isinstance(cfg.model, DELUConfig) and cfg.data.feature_dim == 512
    widths = {"embed_dim": authors.model.embed_dim, "attention_dim": authors.model.attention_dim}
    assert (cfg.model.embed_dim, cfg.model.attention_dim) == (widths["embed_dim"] // 4, widths["attention_dim"] // 4)
    assert dataclasses.replace(cfg.model, **widths) == authors.model
    assert (cfg.train.iterations, cfg.train.lr) == (600, 2 * authors.train.lr)
    assert (cfg.train.batch_size, cfg.train.weight_decay) == (authors.train.batch_size, authors.train.weight_decay)
    assert (cfg.data.sampling, cfg.data.max_seqlen) == (authors.data.sampling, authors.data.max_seqlen)
    assert isinstance(build_model(cfg.model, in_dim=cfg.data.feature_dim, num_classes=20), DELU)
