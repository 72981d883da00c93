"""Forcing the whole video as background (Li et al., ACM MM 2022), as reconstructed in docs/method.md.

The paper's two contributions are parts that sit on a base model, ``model.base``:

* ``co2net`` (default: the paper is evaluated in CO2-Net's protocol and compared against it),
  ``basnet``, ``um``: the registered baselines, built inside as they are
  (``src/wtal/models/co2net.py``, ``basnet.py``, ``um.py``, each proven against its
  authors' code) with their own config values; ``model.base_config`` overrides them, e.g.
  ``model.base_config.embed_dim=512``. Their whole loss stays (e.g. CO2-Net's orig, supp,
  coactivity, mutual, norm and guide terms) and so do their scores and their post-processing.
* ``plain``: our embedding network. ``E = Dropout(act(conv_k3(X)))`` [B, H, T];
  attention ``a = sigmoid(conv_k1(Dropout(act(conv_k3(F)))))`` and class scores
  ``S = conv_k1(Dropout(F))`` over C+1 channels (background last), both read from the
  features ``F`` (``E``, or the TEN's output); attention-suppressed scores
  ``S_fg = a * (S - min S) + min S``, the minimum taken over the C+1 classes of each
  snippet (``suppress_min="class"``, what the CO2-Net code does) or over the real snippets
  of each channel (``"time"``). Loss ``L_fg + norm_weight * L_norm``: ``L_fg`` is the
  cross-entropy of top-k pooled ``S_fg`` against ``normalize([y, 0])``, ``L_norm`` the mean
  attention. Its settings are the ``model.*`` fields of :class:`PlainConfig` (setting one
  with another base is an error that names the base's own key).
With ``ten=off`` and ``bg_loss=false`` this model computes exactly its base (tests/test_models.py).

The temporal enhancement network (TEN, ``model.ten``: both | base | continuity | off) enhances
the base's features just before its classifier, through the base's ``enhance`` hook; what
comes after that point reads the enhanced features:
* plain: ``E`` (its attention head and classifier read ``F = TEN(E)``);
* co2net: the fused features ``X`` (its classifier and co-activity loss);
* basnet: the CAS module's features after its second conv, in both branches (one TEN,
  shared by the branches as the CAS module is);
* um: the embedding (its classifier and the feature magnitudes, its actionness).
Base branch ``act(conv_k3(E))``; temporal continuity branch over affinity snippets
(``continuity``: cosine affinity within ``window`` neighbours, softmax with temperature
``tau``, ``Cc_t = sum_j A[t, j] phi(E_j)``; or dilated convs; or non-local affinity);
``both`` fuses them by a sum or a 1x1 conv over their concatenation. ``ten_residual`` adds the
TEN's input to its output, so that the base's features pass through unchanged at the start.
``ten_affinity`` chooses what the continuity affinity is computed from where the base drops
features out just before the hook (plain, co2net): ``clean`` (default), the features before
that dropout, or ``dropped``, the features the TEN enhances (BaS-Net and UM have none there, so
both read the same). Under CO2-Net's dropout of 0.7 the dropped features make the branch an identity
in training: neighbours' cosine similarity falls from 0.85 to 0.25, and the softmax puts 0.997
of each row's weight on the snippet itself, against 0.60 at test (runs/long5000_b3, last
checkpoint, 12 test videos). At test the two read the same features.
``coactivity_input`` (co2net) chooses what CO2-Net's co-activity loss reads: X before the TEN
(``unenhanced``, default), so that the loss shapes CO2-Net's features and not the TEN's, or the
TEN's output (``enhanced``). The other bases have no co-activity loss and ignore it.

The background loss (``model.bg_loss``) forces the whole video (scores pooled over every real
snippet) to the base's background channel, the last, with background gradient reinforcement
(``reading``): A multiplies the loss's gradient by lambda; B takes BaS-Net's value (target
``[y, 1]``) with the pure-background gradient; C forces each snippet (lambda x the per-snippet
cross-entropy); D multiplies by lambda only the gradient that reaches the background channel
(the action channels' is left as it is). It is added to the base's loss:
``L_base + bg_weight * L_bg``, the weight ramped in linearly over the first ``bg_warmup`` of
training. ``bg_balance="gradnorm"`` rescales the background loss's gradient at the forced
scores, each step, to ``ramp * bg_weight`` times the norm of the base loss's gradient at the
same scores (its direction kept; A's and C's lambda then cancel, D's still weighs the
channels). The scores it forces, ``bg_input`` cas | cas_fg: plain and co2net ``S`` | ``S_fg``; basnet ``S_base`` | ``S_supp``;
um ``[S, s_bg]`` (cas only: UM has no suppressed scores). UM has no background channel: when
the background loss is on, its classifier gets a background row ``s_bg`` (one more bias-free
output), trained by the background loss alone; UM's own loss and scores read the C action
channels, so the competition with its foreground loss (L_cls) goes through the shared
features and action logits only.

What we measured while choosing the defaults (plain base; synthetic THUMOS14 and tiny presets):
* under readings A and C, lambda multiplies the background gradient exactly as bg_weight
  does, so only the product bg_weight * lambda matters; reading B ignores lambda and its
  backward is reading A's at lambda = 1, so it trains exactly as A with lambda = 1
  (only the logged loss value differs);
* the competition has a collapse mode: once the background force beats the
  foreground force, the attention saturates (all 0 or all 1) and localization
  fails. bg_weight = 1 collapsed at every lambda, bg_weight >= 0.1 collapsed on the
  thumos14 preset; bg_weight = 0.03 ramped in over the first half of training
  (``bg_warmup``) did not, and beat the model without the background loss in that run;
* norm_weight = 0.8 (CO2-Net's scale) drove the attention to 0 even without the
  background loss; norm_weight = 0.1 did not.
The ablation report (reports/thumos14_synthetic_report, 3 seeds, demo cut) kept these:
the background loss helps with the full TEN (+4.6 ± 1.9 avg mAP), lambda > 1 does
not (lambda 5 and 10 collapse), reading C is ahead of A by +3.7 ± 2.4 (within 2
standard errors, so A stays the default).
On the CO2-Net base, the default, on the calibrated preset (camera motion outside the actions,
where the four faithful baselines rank as on real THUMOS14), CPU budget, 600 iterations, 3
seeds (reports/thumos14_cpu_paper_co2net_calibrated): CO2-Net 46.8 ± 5.8 avg mAP(0.1:0.7) best,
45.9 ± 7.2 last; with the TEN and the background loss 57.9 ± 5.6 at both (+11.1 ± 4.7, ahead in
every seed), above every faithful baseline. Each part helps alone, in every seed, and they add up
(reports/thumos14_cpu_paper_co2net_calibrated_parts): the background loss alone +2.1 ± 0.2
(paired by seed), and as much again on top of the TEN (B4 - B3: +1.73 ± 0.05); the TEN
alone +9.4 ± 4.6 (+3.0, +6.9, +18.2). Everything below was measured on the preset's first
calibration (``thumos14_k3``, no camera motion) unless it says otherwise.
On the CO2-Net base (thumos14_k3, CPU budget, 600 iterations, 3 seeds;
reports/thumos14_cpu_paper_co2net_v2) the parts at these defaults hold: CO2-Net 59.1 ± 1.4
avg mAP(0.1:0.7) best, 57.3 ± 1.3 last; with the TEN and the background loss 66.6 ± 1.0 and
66.1 ± 1.6; the TEN alone 65.4 ± 2.7. Before ``ten_affinity`` and ``coactivity_input`` took
their present defaults (reports/thumos14_cpu_paper_co2net): CO2-Net 58.4 ± 0.9, full model
67.3 ± 1.6, the background loss alone -0.1; one seed each of reading D with lambda 5 (66.2),
``bg_balance=gradnorm`` (66.0) and bg_weight 0.1 (67.8) stayed within the seed spread (seed 0:
65.7), so those defaults stay.
On UM's base at UM's budget the parts hurt (one seed: 38.0 best, 17.4 last vs UM's 48.5, 38.5);
on BaS-Net's they help (one seed: 65.9 best, 62.3 last vs BaS-Net's 59.4, 58.6;
reports/thumos14_cpu_paper_bases). On the calibrated preset (one seed,
reports/thumos14_cpu_paper_bases_calibrated) UM falls as far (29.2 best, 12.6 last vs UM's
40.7, 31.4) and BaS-Net gains more (51.4 best, 51.3 last vs 33.2, 32.1).
Over CO2-Net's full 5,000 iterations (one seed) it does not collapse but drifts as the
attention closes: at CO2-Net's lr 5e-5 (reports/thumos14_cpu_long_run_lr5e-5) best 65.9 (step
1250), last 62.9 (-3.0; attention inside the ground truth 0.77 -> 0.59); at the 600-iteration
budget's lr 1e-4 (reports/thumos14_cpu_long_run) best 66.8 (step 750), last 61.3 (-5.5).
Over that schedule CO2-Net alone ends above it (lr 1e-4, reports/thumos14_cpu_long_run_ablation:
best 73.0, last 72.6; with the TEN alone 67.2, 64.4): the 600-iteration gain is one of learning
speed, and the TEN, as reconstructed here, caps the plateau; ``ten_residual`` does not lift the
cap (66.5 best, 64.6 at step 3,500 where CO2-Net alone is at 71.3). What capped it: reading the
TEN's output, CO2-Net's co-activity loss fell to about 0 (the TEN meets its margin), so it
stopped shaping CO2-Net's features. With ``coactivity_input="unenhanced"`` and
``ten_affinity="clean"`` (the defaults since) the full model reaches CO2-Net's plateau, 3 seeds:
best 74.2 ± 1.2, last 73.1 ± 2.1, each run within 2.1 of its best, against CO2-Net's 73.3 ± 0.6
and 73.2 ± 0.7; the clean affinity alone changes little (B3 best 67.6). At full width (2048-d,
lr 5e-5, one seed, reports/thumos14_full_schedule_gpu) it peaks above CO2-Net (81.0 against
80.3) and drifts to 72.0 by step 4,500 where CO2-Net holds at 78-80.
On the calibrated preset over 5,000 iterations (CPU budget, lr 1e-4, one seed,
reports/thumos14_cpu_long_run_calibrated) it does not collapse: best 59.4 (step 2,500), last
56.5 (-2.9), the attention inside the ground truth 0.67 -> 0.59 as the background weight stays in.
On the ActivityNet preset (reports/activitynet_cpu, one seed) it scores 51.6 avg
mAP(0.5:0.95) beside CO2-Net's 48.6.
The plain base collapses where CO2-Net's does not: on 40 ActivityNet classes its attention
falls to about 0.006 with the background loss and stays at about 0.47 without it
(tests/test_collapse.py). A likely mechanism, not verified: the foreground loss reads the
background channel of ``S_fg``, which the background loss raises everywhere, and closing
the attention is its cheapest answer.

Shapes: B videos, T snippets, D feature width, C action classes, H the width of the
features the TEN enhances (plain: ``embed_dim``; co2net: D; basnet, um: their
``embed_dim``); ``mask`` [B, T] bool marks real snippets.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.errors import WtalError
from wtal.losses import grad_norm_to, masked_mean, masked_min, scale_grad, topk_mean, video_cross_entropy
from wtal.models.base import Enhance, WtalModel
from wtal.models.registry import ModelConfig, build_model, model_config_class, register_model
from wtal.models.um import UncertaintyModeling

NEGATIVE_SLOPE = 0.2  # LeakyReLU slope of the plain base and the TEN [base: CO2-Net]
DILATIONS = (1, 2, 4)  # continuity="dilated": a stack of k=3 convs with these dilations

_CHOICES = {
    "base": ("plain", "co2net", "basnet", "um"),
    "ten": ("both", "base", "continuity", "off"),
    "continuity": ("local_affinity", "dilated", "nonlocal"),
    "fusion": ("sum", "concat"),
    "ten_affinity": ("dropped", "clean"),
    "coactivity_input": ("enhanced", "unenhanced"),
    "bg_pool": ("mean", "topk"),
    "reading": ("A", "B", "C", "D"),
    "bg_balance": ("none", "gradnorm"),
    "bg_input": ("cas", "cas_fg"),
}
# The base config's top-k ratio, which bg_pool="topk" uses too.
_TOPK_FIELD = {"plain": "topk_r", "co2net": "topk_r", "basnet": "topk_r", "um": "r_act"}


@dataclass
class PlainConfig(ModelConfig):
    """The plain base's settings (top-level ``model.*`` fields of ``whole_video_bg``)."""

    name: str = "plain"
    embed_dim: int = 2048  # width H of the embedding and the TEN [base]
    attention_dim: int = 512  # hidden width of the attention head [base]
    dropout: float = 0.7  # dropout after the embedding and before the classifier [base]
    attention_dropout: float = 0.5  # dropout inside the attention head [base]
    suppress_min: str = "class"  # min S in S_fg: class (per snippet, CO2-Net code) | time (method.md) [ours]
    topk_r: int = 7  # top-k pooling, k = max(1, T_real // topk_r): 7 THUMOS14, 5 ActivityNet [base]
    norm_weight: float = 0.1  # weight of the attention sparsity loss (0.8 at CO2-Net scale collapsed it here) [ours]

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``model.<field>`` for a bad choice or range."""
        self.check(
            source,
            choices={"suppress_min": ("class", "time")},
            counts=("embed_dim", "attention_dim", "topk_r"),
            non_negative=("norm_weight",),
            probabilities=("dropout", "attention_dropout"),
        )


PLAIN_FIELDS = tuple(f.name for f in dataclasses.fields(PlainConfig) if f.name != "name")


@dataclass
class WholeVideoBgConfig(PlainConfig):
    """The plain base's fields (inherited), the base model, the TEN and the background loss."""

    name: str = "whole_video_bg"
    base: str = "co2net"  # base model the TEN and the background loss sit on: plain | co2net | basnet | um [ours]
    base_config: dict[str, Any] = field(default_factory=dict)  # overrides of the base's config (not plain) [ours]
    ten: str | bool = "both"  # TEN branches: both | base | continuity | off (YAML reads off as false) [ours]
    continuity: str = "local_affinity"  # continuity branch: local_affinity | dilated | nonlocal [ours]
    window: int = 2  # local_affinity: neighbours with |t - j| <= window [ours]
    tau: float = 0.1  # temperature of the affinity softmax (local_affinity, nonlocal) [ours]
    fusion: str = "sum"  # ten=both: sum of the branches | concat (1x1 conv over both) [ours]
    ten_residual: bool = False  # the TEN's output is added to its input (F = E + TEN(E)) instead of replacing it [ours]
    ten_affinity: str = "clean"  # affinity read from: clean (before the base's dropout) | dropped (after it) [ours]
    coactivity_input: str = "unenhanced"  # co2net's co-activity loss reads: X (unenhanced) | the TEN's output [ours]
    bg_loss: bool = True  # whole-video background loss on (false: ablation B0) [ours]
    bg_input: str = "cas"  # scores forced to background: cas (S; basnet S_base) | cas_fg (S_fg; basnet S_supp) [ours]
    bg_pool: str = "mean"  # background pooling over real snippets: mean | topk (the base's top-k ratio) [ours]
    reading: str = "A"  # reinforcement: A grad-scale | B BaS-Net value, bg gradient | C per snippet | D bg channel [ours]
    lam: float = 1.0  # reinforcement lambda (A, C: gradient-equivalent to bg_weight * lam; D: bg channel only) [ours]
    bg_balance: str = "none"  # none | gradnorm: bg gradient at the forced scores = bg_weight x the base's [ours]
    bg_weight: float = 0.03  # weight of the background loss; >= 0.1 collapsed the attention here [ours]
    bg_warmup: float = 0.5  # fraction of training over which bg_weight ramps up linearly from 0 [ours]

    def __post_init__(self) -> None:
        if self.ten is False:  # YAML 1.1 reads ten: off (and model.ten=off) as false
            self.ten = "off"

    @classmethod
    def inference_defaults_for(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The base's post-processing: its authors' for co2net, basnet and um, the generic for plain."""
        base = values.get("base", cls.base)
        if base not in _CHOICES["base"] or base == "plain":
            return {}
        return model_config_class(base).inference_defaults_for(values.get("base_config") or {})

    def validate(self, source: str = "config") -> None:
        """Raise :class:`WtalError` naming ``model.<field>`` (or ``model.base_config.<key>``)
        for a bad choice or range, here or in the base's config."""
        self.check(
            source,
            choices=_CHOICES,
            counts=("window",),
            positive=("tau", "lam"),
            non_negative=("bg_weight",),
            flags=("bg_loss", "ten_residual"),
        )
        if not 0 <= self.bg_warmup <= 1:
            self.fail(source, "bg_warmup", "a fraction in [0, 1]")
        if self.base == "um" and self.bg_input == "cas_fg":
            self.fail(source, "bg_input", "cas with model.base=um (UM has no attention-suppressed scores)")
        base_cfg = self.base_model_config(source)
        base_cfg.validate(source if self.base == "plain" else f"{source}: model.base_config ({self.base})")

    def base_model_config(self, source: str = "config") -> ModelConfig:
        """The base's config: :class:`PlainConfig` from the plain fields, or the registered
        base's config dataclass with ``base_config`` applied to its defaults."""
        if not isinstance(self.base_config, Mapping):
            self.fail(source, "base_config", "a mapping of keys of model.base's config")
        if self.base == "plain":
            if self.base_config:
                plain_keys = ", ".join(f"model.{key}" for key in PLAIN_FIELDS)
                self.fail(source, "base_config", f"no keys with model.base=plain (its settings are {plain_keys})")
            return PlainConfig(**{key: getattr(self, key) for key in PLAIN_FIELDS})
        config_class = model_config_class(self.base)
        keys = sorted(f.name for f in dataclasses.fields(config_class) if f.name != "name")
        defaults = PlainConfig()
        for key in PLAIN_FIELDS:
            if getattr(self, key) != getattr(defaults, key):
                own = f"; the {self.base} base's own is model.base_config.{key}" if key in keys else ""
                self.fail(
                    source,
                    key,
                    f"the default {getattr(defaults, key)!r} with model.base={self.base} (model.{key} is the plain "
                    f"base's{own})",
                )
        hints = typing.get_type_hints(config_class)
        values = {}
        for key, value in self.base_config.items():
            if key not in keys:
                raise WtalError(f"{source}: model.base_config.{key}: not a key of {self.base}'s config; expected one of {keys}")
            values[key] = _typed(value, hints[key], f"{source}: model.base_config.{key}")
        return config_class(name=self.base, **values)

    def two_streams(self) -> bool:
        """The base's (CO2-Net reads RGB and flow as two streams)."""
        return self.base_model_config().two_streams()

    def describe(self) -> str:
        return f"model.name={self.name} on model.base={self.base}"

    def single_stream_hint(self) -> str:
        return "model.base=plain"

    @property
    def similar_pairs(self) -> int:
        """Same-class video pairs the sampler puts at the start of each batch: the base's (CO2-Net
        asks for them), else 0."""
        return getattr(self.base_model_config(), "similar_pairs", 0)


def _typed(value: Any, hint: Any, where: str) -> Any:
    """A ``base_config`` value checked against its field's type (bool, int, float or str); YAML 1.1
    reads ``1e-3`` as a string, which a float field takes as the number."""
    if hint not in (bool, int, float, str):
        return value
    if hint is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str, int, float)}[hint]
    if not isinstance(value, accepted) or (hint is not bool and isinstance(value, bool)):
        raise WtalError(f"{where}: expected {expected}, found {value!r}")
    return hint(value)


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def _conv(conv: nn.Conv1d, x: Tensor, m: Tensor) -> Tensor:
    """x [B, H, T], m [B, 1, T] float: zero padded snippets so they never reach a real one."""
    return conv(x * m)


class PlainBase(WtalModel):
    """The plain base: embedding, then attention head and (C+1)-way classifier on its features."""

    def __init__(self, cfg: PlainConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        h = cfg.embed_dim
        self.embed = nn.Conv1d(in_dim, h, 3, padding=1)
        self.attention_hidden = nn.Conv1d(h, cfg.attention_dim, 3, padding=1)
        self.attention_out = nn.Conv1d(cfg.attention_dim, 1, 1)
        self.classifier = nn.Conv1d(h, num_classes + 1, 1)  # background is the last channel
        self.dropout = nn.Dropout(cfg.dropout)
        self.attention_dropout = nn.Dropout(cfg.attention_dropout)

    def forward(
        self, features: Tensor, mask: Tensor, enhance: Enhance | None = None
    ) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> attention [B, T], cas_logits S and cas_fg_logits
        S_fg [B, T, C+1], embedding E and features F (what the heads read) [B, T, H].
        enhance: maps E [B, H, T] (and E before its dropout) to F (the TEN); None: F = E."""
        m = mask[:, None, :].to(features.dtype)  # [B, 1, T]
        clean = _act(_conv(self.embed, features.transpose(1, 2), m))  # [B, H, T]
        e = self.dropout(clean)
        f = e if enhance is None else enhance(e, clean)
        hidden = self.attention_dropout(_act(_conv(self.attention_hidden, f, m)))
        attention = torch.sigmoid(self.attention_out(hidden)).squeeze(1)  # [B, T]
        s = self.classifier(self.dropout(f)).transpose(1, 2)  # [B, T, C+1]
        if self.cfg.suppress_min == "class":
            s_min = s.amin(-1, keepdim=True)  # [B, T, 1]: a -> 0 makes a snippet class-neutral
        else:
            s_min = masked_min(s, mask)[:, None, :]  # [B, 1, C+1], over real snippets only
        s_fg = attention[..., None] * (s - s_min) + s_min
        return {
            "attention": attention,
            "cas_logits": s,
            "cas_fg_logits": s_fg,
            "embedding": e.transpose(1, 2),
            "features": f.transpose(1, 2),
        }

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> {"total", "fg", "norm"} scalars."""
        actions_only = torch.cat([labels, labels.new_zeros(labels.shape[0], 1)], 1)  # [y, 0]
        fg = video_cross_entropy(topk_mean(outputs["cas_fg_logits"], mask, self.cfg.topk_r), actions_only)
        norm = masked_mean(outputs["attention"], mask).mean()
        return {"total": fg + self.cfg.norm_weight * norm, "fg": fg, "norm": norm}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """attention [B, T]; cas [B, T, C]: softmax of S_fg over all C+1 channels, action channels;
        video_scores [B, C]: softmax over the C action channels of the top-k mean of S_fg
        (k = max(1, T_real // video_topk_divisor)). The background channel, high everywhere after
        training, never enters video scores. Padded positions are 0."""
        m = mask.to(outputs["attention"].dtype)
        s_fg = outputs["cas_fg_logits"]
        actions = s_fg[..., :-1]
        return {
            "attention": outputs["attention"] * m,
            "cas": torch.softmax(s_fg, -1)[..., :-1] * m[..., None],
            "video_scores": torch.softmax(topk_mean(actions, mask, video_topk_divisor), -1),
        }


class TemporalEnhancement(nn.Module):
    """TEN: base branch and/or temporal continuity branch, fused; [B, H, T] -> [B, H, T]."""

    def __init__(self, cfg: WholeVideoBgConfig, width: int):
        super().__init__()
        self.cfg = cfg
        h = width
        self.base_branch = nn.Conv1d(h, h, 3, padding=1) if cfg.ten != "continuity" else None
        self.dilated = self.phi = None
        if cfg.ten != "base" and cfg.continuity == "dilated":
            self.dilated = nn.ModuleList(nn.Conv1d(h, h, 3, padding=d, dilation=d) for d in DILATIONS)
        elif cfg.ten != "base":
            self.phi = nn.Conv1d(h, h, 1)
        self.fuse = nn.Conv1d(2 * h, h, 1) if cfg.ten == "both" and cfg.fusion == "concat" else None

    def _continuity(self, e: Tensor, clean: Tensor, mask: Tensor, m: Tensor) -> Tensor:
        """Temporal continuity branch: e, clean [B, H, T] -> [B, H, T]; the affinity reads
        ``clean`` when ``ten_affinity="clean"``, ``e`` otherwise."""
        if self.dilated is not None:
            for conv in self.dilated:
                e = _act(_conv(conv, e, m))
            return e
        unit = F.normalize((clean if self.cfg.ten_affinity == "clean" else e) * m, dim=1)  # [B, H, T]
        logits = torch.bmm(unit.transpose(1, 2), unit) / self.cfg.tau  # [B, T(t), T(j)] cosine affinity
        t = torch.arange(e.shape[2], device=e.device)
        allowed = mask[:, None, :]  # only real neighbours j
        if self.cfg.continuity == "local_affinity":
            allowed = allowed & ((t[:, None] - t[None, :]).abs() <= self.cfg.window)
        allowed = allowed | torch.eye(len(t), dtype=torch.bool, device=e.device)  # keeps padded rows finite
        affinity = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        return torch.bmm(self.phi(e), affinity.transpose(1, 2))  # Cc_t = sum_j A[t, j] phi(E_j)

    def forward(self, e: Tensor, clean: Tensor, mask: Tensor) -> Tensor:
        """e [B, H, T] (the base's features), clean [B, H, T] (the same before the base's dropout;
        ``e`` itself where the base has none there), mask [B, T] -> enhanced features [B, H, T]."""
        m = mask[:, None, :].to(e.dtype)  # [B, 1, T]
        branches = []
        if self.base_branch is not None:
            branches.append(_act(_conv(self.base_branch, e, m)))
        if self.cfg.ten != "base":
            branches.append(self._continuity(e, clean, mask, m))
        if len(branches) == 1:
            out = branches[0]
        elif self.fuse is not None:
            out = self.fuse(torch.cat(branches, 1))
        else:
            out = branches[0] + branches[1]
        return e + out if self.cfg.ten_residual else out


def _build_base(cfg: WholeVideoBgConfig, in_dim: int, num_classes: int) -> WtalModel:
    """The base model of ``cfg.base`` (UM with a background row when the background loss is on)."""
    base_cfg = cfg.base_model_config()
    if cfg.base == "plain":
        return PlainBase(base_cfg, in_dim, num_classes)
    if cfg.base == "um":
        return UncertaintyModeling(base_cfg, in_dim, num_classes, background_row=cfg.bg_loss)
    return build_model(base_cfg, in_dim, num_classes)


def _enhanced_width(cfg: WholeVideoBgConfig, base: WtalModel) -> int:
    """Channels of the base's features at its enhance hook: CO2-Net's fused X feeds its hidden
    conv, the other bases' features feed their classifier."""
    return base.hidden.in_channels if cfg.base == "co2net" else base.classifier.in_channels


@register_model("whole_video_bg", WholeVideoBgConfig)
class WholeVideoBackground(WtalModel):
    """A base model (``self.base``) + TEN before its classifier + the whole-video background loss."""

    def __init__(self, cfg: WholeVideoBgConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        self.base = _build_base(cfg, in_dim, num_classes)
        self.ten = TemporalEnhancement(cfg, _enhanced_width(cfg, self.base)) if cfg.ten != "off" else None

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> the base's outputs, computed with the TEN at its hook."""
        enhance = None if self.ten is None else partial(self.ten, mask=mask)
        return self.base(features, mask, enhance=enhance)

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> the base's loss terms, "bg" (0 when off) and "total"
        = the base's total + ramp * bg_weight * bg."""
        cfg = self.cfg
        if cfg.coactivity_input == "unenhanced" and "unenhanced" in outputs:
            outputs = {**outputs, "fused": outputs["unenhanced"]}
        losses = self.base.loss(outputs, labels, mask)
        if not cfg.bg_loss:
            return {**losses, "bg": losses["total"].new_zeros(())}
        ramp = min(1.0, self.progress / cfg.bg_warmup) if cfg.bg_warmup > 0 else 1.0
        parts = self._forced_parts(outputs)
        forced = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        if cfg.bg_balance == "gradnorm" and forced.requires_grad:
            grads = torch.autograd.grad(losses["total"], parts, retain_graph=True, allow_unused=True)
            base_norm = sum((g.square().sum() for g in grads if g is not None), forced.new_zeros(())).sqrt()
            forced = grad_norm_to(forced, ramp * cfg.bg_weight * base_norm)
        bg = self._background_loss(forced, labels, mask)
        return {**losses, "total": losses["total"] + ramp * cfg.bg_weight * bg, "bg": bg}

    def _forced_parts(self, outputs: dict[str, Tensor]) -> list[Tensor]:
        """The base's scores the background loss forces to background, whose concatenation on the
        last axis is [B, T, C+1] (background last)."""
        if self.cfg.base == "um":
            return [outputs["cas_logits"], outputs["background_logits"][..., None]]
        if self.cfg.base == "basnet":
            return [outputs["base_logits" if self.cfg.bg_input == "cas" else "supp_logits"]]
        return [outputs["cas_logits" if self.cfg.bg_input == "cas" else "cas_fg_logits"]]

    def _background_loss(self, s: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
        """Whole video as background, with the configured gradient reinforcement; s [B, T, C+1]."""
        cfg = self.cfg
        if cfg.reading == "C":
            per_snippet = -torch.log_softmax(s, -1)[..., -1]  # [B, T], CE toward background
            return cfg.lam * masked_mean(per_snippet, mask).mean()
        topk_r = getattr(self.base.cfg, _TOPK_FIELD[cfg.base])

        def pool(z: Tensor) -> Tensor:  # [B, T, C+1] -> [B, C+1]
            return masked_mean(z, mask) if cfg.bg_pool == "mean" else topk_mean(z, mask, topk_r)

        background = torch.zeros_like(s[:, 0])  # [B, C+1] = [0, ..., 0, 1]
        background[:, -1] = 1
        if cfg.reading == "A":
            return video_cross_entropy(pool(scale_grad(s, cfg.lam)), background)
        if cfg.reading == "D":
            s = torch.cat([s[..., :-1], scale_grad(s[..., -1:], cfg.lam)], -1)
            return video_cross_entropy(pool(s), background)
        pooled = pool(s)
        pure = video_cross_entropy(pooled, background)
        with_background = torch.cat([labels, labels.new_ones(labels.shape[0], 1)], 1)  # [y, 1]
        bas_loss = video_cross_entropy(pooled, with_background)
        return bas_loss.detach() + pure - pure.detach()  # value of [y, 1], gradient of [0, 1]

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """The base's scores (plain: :meth:`PlainBase.scores`); the background channel never
        enters them."""
        return self.base.scores(outputs, mask, video_topk_divisor)
