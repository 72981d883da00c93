"""Dual-Evidential Learning for Uncertainty modeling (DELU; Chen et al., ECCV 2022), a baseline.

This file computes what the authors' THUMOS14 code (``MengyuanChen21/ECCV2022-DELU``, model
``DELU`` with consensus module ``BWA_fusion_dropout_feat_v2``, ``scripts/train_thumos.sh``)
computes; ``tests/test_parity_delu.py`` loads the authors' weights through
:data:`AUTHORS_STATE_DICT_NAMES` and checks every output, loss term, gradient and proposal
against numbers produced by their code (``tests/fixtures/README.md``).

Network: CO2-Net's, unchanged (the authors' ``DELU`` module is their copy of CO2-Net's ``CO2``,
same layers, names, initialisation and forward), so :class:`DELU` subclasses
:class:`~wtal.models.co2net.CO2Net` and inherits its forward, ``enhance`` hook included, and its
inference scores. Outputs: attention ``a`` = (a_rgb + a_flow) / 2 [B, T], logits ``S`` and
attention-suppressed logits ``S_supp`` [B, T, C+1] (background last), fused features [B, T, D].

Loss: CO2-Net's (``L_orig + L_supp + w_coact L_coact + w_mutual L_mutual + w_norm L_norm +
w_guide L_guide``, see ``co2net.py``) ``+ edl_weight * L_edl + uct_guide_weight * L_uct``.

* ``L_edl`` (video-level evidential loss; the authors' ``EvidenceLoss`` with exp evidence and the
  log loss): per video, ``v`` [C] = mean of ``S_supp``'s action channels over the
  k = max(1, T_real // ``edl_topk_r``) snippets of highest attention ``a``; evidence
  ``e = exp(clamp(v, -10, 10))``, Dirichlet ``alpha = e + 1``, strength ``s = sum_c alpha_c``,
  uncertainty ``u = C / s``; with the multi-hot label y,
  ``g_c = (1 - sg(u)) * |y| * (y_c / alpha_c) / sum_c' (y_c' / alpha_c')`` and
  ``L = sum_c g_c (log s - log alpha_c)``; mean over videos.
* ``L_uct`` (uncertainty-guided guide loss, the easy-to-hard curve): per snippet the guide
  error ``r_t = mean over x in (a, a_rgb, a_flow) of |1 - x_t - softmax(S_t)_bg|`` and the
  uncertainty ``u_t = C / sum over the C+1 channels of (exp(clamp(S_supp_t, -10, 10)) + 1)``;
  the curve ``w(i) = amplitude * tanh(theta_i * delta) + 1`` with
  ``theta_i = 2 (i + 0.5) / T_real - 1`` and ``delta = 1 - 2 * progress``; with ``o`` the
  snippets ordered by increasing ``u``, snippet position ``j`` is weighted ``w(o_j)``, the curve's
  value at the position of the j-th least uncertain snippet (the authors' ``torch.gather`` of the
  curve by the sort indices; as written it permutes the curve by the order, it does not place
  curve value j on the j-th ranked snippet); ``L = mean over real snippets of w(o_j) r_j``, mean
  over videos. Only ``r`` carries gradient.

Schedule: the authors' curve reads ``itr / max_iter`` (their iteration counter from 0 over
``--max_iter``); wtal's trainer sets ``self.progress = (step - 1) / train.iterations`` before each
step, which is that same fraction when ``train.iterations`` is their ``max_iter``, so
``delta = 1 - 2 * self.progress`` (1 at the first step, -1 at the end). Their EDL loss computes an
exponential annealing coefficient from the same counter but uses it only for KL and AvU terms that
their DELU switches off, so ``L_edl`` has no schedule.

Defaults are the authors' THUMOS14 settings (``scripts/train_thumos.sh`` over ``options.py``):
CO2-Net's network and weights except ``guide_weight`` (alpha2) 0.4; ``edl_weight`` (alpha_edl) 1.3,
``uct_guide_weight`` (alpha_uct_guide) 0.4, ``amplitude`` 0.7, ``edl_topk_r`` (rat_atn) 9, k 7.

Inference (the authors' ``test.py`` and ``proposal_methods.multiple_threshold_hamnet`` at their
newest commit, declared in ``DELUConfig.inference_defaults``): CO2-Net's, with the attention
thresholded strictly at ``linspace(0.1, 0.9, 20)`` (20 thresholds, CO2-Net's code has 10), and
proposals of at most one snippet dropped after the per-class soft-NMS (their ``test.py`` keeps
``t-end - t-start > 1``): ``min_length`` 2 under the ``delu`` pipeline, which applies it after the
suppression, so a dropped proposal has lowered the scores of those it overlaps, as in their code.

Where wtal differs from the authors' code, on purpose (each equal to theirs on their inputs):
* padding: every top-k, curve length and mean is per video over its real snippets (the
  authors resample every training video to the same length);
* ties of the snippet uncertainty (or of the attention at the top-k boundary) are broken by
  position (a stable sort); the authors' ``torch.sort`` / ``torch.topk`` leave their order open;
* a video without any label gets ``L_edl = 0`` (the authors' code divides 0 by 0);
* any batch size (the authors' curve is repeated for 10 videos, so their batches hold at most 10).

Shapes: B videos, T snippets, D = 2d feature width, C action classes; ``mask`` [B, T] bool marks
real snippets; every value a real snippet gets is independent of padding.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from wtal.errors import WtalError
from wtal.localize import InferenceConfig
from wtal.losses import masked_mean
from wtal.models.co2net import AUTHORS_STATE_DICT_NAMES as CO2NET_STATE_DICT_NAMES
from wtal.models.co2net import CO2Net, CO2NetConfig
from wtal.models.registry import register_model

EVIDENCE_CLAMP = 10.0  # evidence = exp(clamp(logit, -10, 10)) [DELU code]

# The authors' DELU module keeps CO2-Net's module names (feat_encoder built, never called).
AUTHORS_STATE_DICT_NAMES = CO2NET_STATE_DICT_NAMES


@dataclass
class DELUConfig(CO2NetConfig):
    name: str = "delu"
    guide_weight: float = 0.4  # weight of CO2-Net's guide loss (alpha2; CO2-Net's 0.8) [DELU script]
    edl_weight: float = 1.3  # weight of the video-level evidential loss (alpha_edl) [DELU script]
    uct_guide_weight: float = 0.4  # weight of the uncertainty-guided guide loss (alpha_uct_guide) [DELU]
    edl_topk_r: int = 9  # evidential video logits: the k = max(1, T_real // r) top-attention snippets (rat_atn) [DELU]
    amplitude: float = 0.7  # amplitude of the easy-to-hard curve, snippet weights in [1 - a, 1 + a] [DELU script]

    # The authors' post-processing (CO2-Net's multiple_threshold_hamnet with 20 thresholds, then
    # test.py's length filter after the soft-NMS); inference.* keys override.
    inference_defaults: ClassVar[InferenceConfig] = dataclasses.replace(
        CO2NetConfig.inference_defaults,
        pipeline="delu",
        thresholds=[float(t) for t in np.linspace(0.1, 0.9, 20)],
        min_length=2,
    )

    def validate(self, source: str = "config", prefix: str = "model") -> None:
        """Raise :class:`WtalError` naming ``<prefix>.<field>`` for a bad choice or range."""
        super().validate(source, prefix)
        self.check(source, prefix=prefix, counts=("edl_topk_r",), non_negative=("edl_weight", "uct_guide_weight"))
        if not 0 <= self.amplitude <= 1:
            self.fail(source, "amplitude", "a number in [0, 1] (snippet weights 1 +- amplitude stay >= 0)", prefix)


def attention_topk_mean(x: Tensor, attention: Tensor, mask: Tensor, r: int) -> Tensor:
    """x [B, T, K] averaged over the k = max(1, T_real // r) real snippets of highest attention
    [B, T] of each video (ties: the earlier snippet) -> [B, K]."""
    k = torch.clamp(mask.sum(1) // r, min=1)  # [B]
    order = attention.masked_fill(~mask, float("-inf")).argsort(dim=1, descending=True, stable=True)  # [B, T]
    positions = torch.arange(x.shape[1], device=x.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)  # [B, T]: each snippet's rank
    chosen = (rank < k[:, None]) & mask  # [B, T]
    total = torch.where(chosen[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    return total / k[:, None].to(x.dtype)


def evidential_loss(s_fg: Tensor, attention: Tensor, labels: Tensor, mask: Tensor, r: int) -> Tensor:
    """The video-level evidential loss ``L_edl`` (module docstring): S_supp [B, T, C+1], attention
    [B, T], labels [B, C] multi-hot, mask [B, T] -> scalar, mean over videos."""
    video_logits = attention_topk_mean(s_fg[..., :-1], attention, mask, r)  # [B, C]
    alpha = torch.exp(video_logits.clamp(-EVIDENCE_CLAMP, EVIDENCE_CLAMP)) + 1  # [B, C]
    strength = alpha.sum(-1, keepdim=True)  # [B, 1]
    uncertainty = labels.shape[-1] / strength  # [B, 1]
    inverse = labels / alpha  # [B, C]
    # a label row of zeros gives 0 / tiny = 0 (the authors' 0 / 0); any label makes the sum >= 1 / alpha_max
    share = inverse / inverse.sum(-1, keepdim=True).clamp(min=torch.finfo(inverse.dtype).tiny)
    g = (1 - uncertainty.detach()) * labels.sum(-1, keepdim=True) * share  # [B, C]
    return (g * (strength.log() - alpha.log())).sum(-1).mean()


def snippet_uncertainty(s_fg: Tensor) -> Tensor:
    """Per-snippet evidential uncertainty C / sum over the C+1 channels of (exp(clamp(S_supp)) + 1):
    S_supp [B, T, C+1] -> [B, T]."""
    evidence = torch.exp(s_fg.clamp(-EVIDENCE_CLAMP, EVIDENCE_CLAMP))
    return (s_fg.shape[-1] - 1) / (evidence + 1).sum(-1)


def easy_to_hard_curve(lengths: Tensor, width: int, progress: float, amplitude: float) -> Tensor:
    """``amplitude * tanh(theta_i * (1 - 2 progress)) + 1`` with ``theta_i = 2 (i + 0.5) / T_real - 1``
    per video: lengths [B] -> [B, width] (positions past a video's length are never read)."""
    positions = torch.arange(width, device=lengths.device)
    theta = 2 * (positions + 0.5) / lengths[:, None] - 1  # [B, width]
    return amplitude * torch.tanh(theta * (1 - 2 * progress)) + 1


def uncertainty_guide_loss(
    s: Tensor, s_fg: Tensor, attentions: tuple[Tensor, ...], mask: Tensor, progress: float, amplitude: float
) -> Tensor:
    """The uncertainty-guided guide loss ``L_uct`` (module docstring): S and S_supp [B, T, C+1], the
    attentions (a, a_rgb, a_flow) [B, T], mask [B, T] -> scalar."""
    background = torch.softmax(s, -1)[..., -1]  # [B, T]
    guide = sum((1 - a - background).abs() for a in attentions) / len(attentions)  # [B, T]
    uncertainty = snippet_uncertainty(s_fg).detach().masked_fill(~mask, float("inf"))  # [B, T]
    order = uncertainty.argsort(dim=1, stable=True)  # [B, T]: real snippets first, least uncertain first
    curve = easy_to_hard_curve(mask.sum(1), mask.shape[1], progress, amplitude)  # [B, T]
    weight = curve.gather(1, order)  # position j: the curve at the j-th least uncertain snippet [DELU code]
    return masked_mean(weight * guide, mask).mean()


@register_model("delu", DELUConfig)
class DELU(CO2Net):
    """CO2-Net's network with DELU's two evidential losses added to CO2-Net's."""

    authors_names = AUTHORS_STATE_DICT_NAMES

    def __init__(self, cfg: DELUConfig, in_dim: int, num_classes: int):
        if in_dim % 2:
            raise WtalError(
                f"model delu: feature width {in_dim} is odd; expected RGB and flow halves of equal width "
                "(data.modality must be both)"
            )
        super().__init__(cfg, in_dim, num_classes)

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> CO2-Net's terms ("orig", "supp", "coactivity", "mutual", "norm",
        "guide"), "edl", "uct_guide" and their weighted "total"; ``uct_guide`` reads ``self.progress``."""
        cfg = self.cfg
        losses = super().loss(outputs, labels, mask)
        s, s_fg, attention = outputs["cas_logits"], outputs["cas_fg_logits"], outputs["attention"]
        attentions = (attention, outputs["attention_rgb"], outputs["attention_flow"])
        edl = evidential_loss(s_fg, attention, labels, mask, cfg.edl_topk_r)
        uct_guide = uncertainty_guide_loss(s, s_fg, attentions, mask, self.progress, cfg.amplitude)
        total = losses["total"] + cfg.edl_weight * edl + cfg.uct_guide_weight * uct_guide
        return {**losses, "total": total, "edl": edl, "uct_guide": uct_guide}
