"""Shared tiny batch and contract checks for the model tests (a helper module, not a test file).

The test files import it as ``from model_checks import ...``: pytest's default import mode puts
``tests/`` (which has no ``__init__.py``) on ``sys.path``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import Tensor

from wtal.errors import WtalError
from wtal.localize import localize_video

D, H, C, T = 32, 16, 4, 20
LENGTHS = (20, 13, 7)
B = len(LENGTHS)


def make_batch(seed: int = 1, padding_value: float = 0.0):
    """Features [B, T, D] (``padding_value`` on padding), mask [B, T] and multi-hot labels [B, C]."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, T, D, generator=g)
    mask = torch.arange(T)[None, :] < torch.tensor(LENGTHS)[:, None]
    features[~mask] = padding_value
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]])
    return features, mask, labels


def assert_finite_scalar_losses(losses) -> None:
    """Every loss component is a finite 0-d tensor."""
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())


def assert_gradients_reach_every_parameter(model) -> None:
    """After ``backward()``, every parameter has a finite, not-all-zero gradient."""
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def assert_scores_contract(
    scores, mask, num_classes: int = C, bounded_cas: bool = True, bounded_video_scores: bool = True
) -> None:
    """``model.scores``: attention [B, T], cas [B, T, C], video_scores [B, C], all finite and in
    [0, 1] (cas only when ``bounded_cas``, video_scores only when ``bounded_video_scores``: W-TALC
    localises on raw logits), zero on padding."""
    batch, length = mask.shape
    assert scores["attention"].shape == (batch, length)
    assert scores["cas"].shape == (batch, length, num_classes)
    assert scores["video_scores"].shape == (batch, num_classes)
    for key, value in scores.items():
        assert torch.isfinite(value).all()
        if {"cas": bounded_cas, "video_scores": bounded_video_scores}.get(key, True):
            assert ((value >= 0) & (value <= 1)).all(), key
    assert (scores["attention"][~mask] == 0).all() and (scores["cas"][~mask] == 0).all()


def assert_padding_invariance(model, features, mask, keys, *, rtol: float = 1e-5, atol: float = 1e-6):
    """Each video run in the padded batch gives the outputs (``keys``) and scores it gets run alone.

    The alone runs see only ``features[i, :length]``, so whatever sits on the batch's padding must
    not matter. Returns the batched outputs and the per-video outputs for further checks.
    """
    with torch.no_grad():
        batched = model(features, mask)
        batched_scores = model.scores(batched, mask)
        alones = []
        for i, length in enumerate(LENGTHS):
            one_mask = mask[i : i + 1, :length]
            alone = model(features[i : i + 1, :length], one_mask)
            alone_scores = model.scores(alone, one_mask)
            for key in keys:
                torch.testing.assert_close(batched[key][i, :length], alone[key][0], rtol=rtol, atol=atol)
            for key in ("attention", "cas"):
                torch.testing.assert_close(batched_scores[key][i, :length], alone_scores[key][0])
            torch.testing.assert_close(batched_scores["video_scores"][i], alone_scores["video_scores"][0])
            alones.append(alone)
    return batched, alones


def assert_pytorch_default_conv_init(model) -> None:
    """Every parameter of ``model`` (top-level Conv1d layers) has PyTorch's default Conv1d
    initialisation: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform_ with
    a = sqrt(5)); large tensors have the uniform's spread and a mean near 0."""
    for name, p in model.named_parameters():
        module = getattr(model, name.split(".")[0])
        bound = 1 / (module.in_channels * module.kernel_size[0]) ** 0.5
        assert p.abs().max() <= bound, name
        if p.numel() >= 1000:
            assert abs(p.std().item() - bound / 3**0.5) < 0.05 * bound, name
            assert abs(p.mean().item()) < 0.05 * bound, name


def assert_authors_mapping(model, state, unknown_name: str) -> None:
    """``model.authors_names`` maps every parameter of the authors' ``state`` to every one of
    ``model``'s (or to None), and loading a state with ``unknown_name`` added is refused."""
    names = model.authors_names
    assert set(state) == set(names)
    assert {ours for ours in names.values() if ours is not None} == set(model.state_dict())
    with pytest.raises(WtalError, match=re.escape(unknown_name)):
        model.load_authors_state_dict({**state, unknown_name: torch.zeros(1)})


def assert_seeded_init_equals_the_authors(model, state) -> None:
    """``model``, built under the authors' seed, has exactly the authors' initial weights ``state``."""
    params = dict(model.named_parameters())
    for theirs, ours in model.authors_names.items():
        torch.testing.assert_close(params[ours].detach(), torch.as_tensor(state[theirs]), atol=0, rtol=0)


def _by_segment(rows: np.ndarray) -> np.ndarray:
    """Proposals [N, 4] (start, end, score, class) in a canonical order."""
    return rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0], rows[:, 3]))]


def assert_proposals_match(model, outputs: dict, cfg, seconds: float, duration: float, theirs, unit: float = 1.0) -> int:
    """``model.scores`` of recorded ``outputs`` (one video, batch of one, every snippet of the first
    output real) localized with the inference config ``cfg`` (``seconds`` per scored snippet,
    ``duration`` to clip to) equal the authors' proposals ``theirs`` [N, 4] (start, end, score,
    class; times in units of ``unit`` seconds) in any order, to 1e-5. Returns N."""
    mask = torch.ones(next(iter(outputs.values())).shape[:2], dtype=torch.bool)
    with torch.no_grad():
        scores = {k: x[0].numpy() for k, x in model.scores(outputs, mask, cfg.video_topk_divisor).items()}
    label, start, end, score = localize_video(
        scores["attention"], scores["cas"], scores["video_scores"], seconds, duration, cfg
    )
    ours = np.column_stack([start / unit, end / unit, score, label])
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    np.testing.assert_allclose(_by_segment(ours), _by_segment(theirs), atol=1e-5, rtol=1e-5)
    return len(theirs)


class DropoutReplay:
    """The authors' dropout draws recorded in a parity fixture (keep masks ``mask/<i>`` and rates
    ``mask_p``, in their call order), handed out again in that order.

    Every draw checks that it is the authors' next one: same rate, same shape. ``calls`` holds the
    rates of the draws made so far; :meth:`assert_all_replayed` then checks there were as many as
    the authors'.
    """

    def __init__(self, ref):
        self.rates = [float(p) for p in np.asarray(ref["mask_p"])]
        self.masks = [torch.as_tensor(np.asarray(ref[f"mask/{i}"])) for i in range(len(self.rates))]
        self.calls: list[float] = []

    def take(self, shape, p: float) -> Tensor:
        """The next recorded keep mask (1 kept, 0 dropped) for a draw at rate ``p`` of ``shape``."""
        i = len(self.calls)
        assert i < len(self.masks), f"dropout call {i}: the authors' code makes only {len(self.masks)}"
        self.calls.append(p)
        assert p == pytest.approx(self.rates[i]), f"dropout call {i}: rate {p}, the authors' {self.rates[i]}"
        expected = tuple(self.masks[i].shape)
        assert tuple(shape) == expected, f"dropout call {i}: shape {tuple(shape)}, the authors' {expected}"
        return self.masks[i].float()

    def dropout(self, input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
        """Stands in for ``torch.nn.functional.dropout`` (which ``nn.Dropout`` calls)."""
        assert training, "a dropout call outside training mode"
        return input * self.take(input.shape, p).to(input.dtype) / (1 - p)

    def assert_all_replayed(self) -> None:
        made, theirs = len(self.calls), len(self.rates)
        assert made == theirs, f"{made} dropout calls, the authors' code makes {theirs}"
        assert self.calls == pytest.approx(self.rates)


def replay_dropout(monkeypatch, ref) -> DropoutReplay:
    """Replace ``torch.nn.functional.dropout`` (for the test) by a replay of ``ref``'s recorded draws."""
    replay = DropoutReplay(ref)
    monkeypatch.setattr(torch.nn.functional, "dropout", replay.dropout)
    return replay


def assert_gradients_match_the_authors(model, ref, close) -> None:
    """Every parameter's gradient equals the authors' ``grad/<their name>`` in ``ref`` (``close``:
    the test's comparison); a parameter their forward never uses (mapped to None) has none there."""
    params = dict(model.named_parameters())
    names = model.authors_names or {name: name for name in params}
    for theirs, ours in names.items():
        if ours is None:
            assert f"grad/{theirs}" not in ref, theirs  # built but never called: no gradient
            continue
        close(params[ours].grad, ref[f"grad/{theirs}"])
    assert {ours for ours in names.values() if ours} == set(params)
