"""Shared tiny batch and contract checks for the model tests (a helper module, not a test file).

The test files import it as ``from model_checks import ...``: pytest's default import mode puts
``tests/`` (which has no ``__init__.py``) on ``sys.path``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

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


def assert_scores_contract(scores, mask, num_classes: int = C, bounded_cas: bool = True) -> None:
    """``model.scores``: attention [B, T], cas [B, T, C], video_scores [B, C], all finite and in
    [0, 1] (cas only when ``bounded_cas``), zero on padding."""
    batch, length = mask.shape
    assert scores["attention"].shape == (batch, length)
    assert scores["cas"].shape == (batch, length, num_classes)
    assert scores["video_scores"].shape == (batch, num_classes)
    for key, value in scores.items():
        assert torch.isfinite(value).all()
        if key != "cas" or bounded_cas:
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
