"""Forcing the whole video as background (Li et al., ACM MM 2022), as reconstructed in docs/method.md.

The paper's two contributions are parts that sit on a base model, ``model.base``: any registered
model, built inside as it is, with its own config (``model.base.<key>``, e.g.
``model.base.embed_dim=512``), its whole loss, its scores and its post-processing. The parts read
the base only through the interface of :class:`~wtal.models.base.WtalModel`:

* the temporal enhancement network (``models/ten.py``, ``model.ten`` both | base | continuity |
  off) enhances the base's features at its ``enhance`` hook, just before its classifier, at the
  hook's width; what comes after the hook reads the enhanced features;
* the whole-video background loss (``models/background_loss.py``, ``model.bg_loss``) forces the
  base's background scores (``bg_input``: the classifier's or the attention-suppressed ones) to
  the background channel, and is added, weighted and ramped in, to the base's own loss. A base
  without a background channel gets one more classifier output for it (trained by this loss
  alone), only when the loss is on;
* ``coactivity_input="unenhanced"``: the base's own loss terms that read features (a co-activity
  loss) read them from before the TEN, so that they keep shaping the base's features rather than
  being met by the TEN's output.

With ``ten=off`` and ``bg_loss=false`` the model computes exactly its base (tests/test_models.py).
Why the defaults are what they are, with the runs behind each: reports/README.md.

Shapes: B videos, T snippets, D feature width, C action classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Mapping

from torch import Tensor

from wtal.errors import WtalError
from wtal.localize import InferenceConfig
from wtal.models.background_loss import BackgroundLossConfig, background_loss, forced_scores
from wtal.models.base import WtalModel
from wtal.models.registry import DEFAULT_BASE, ModelConfig, available_models, build_model, model_config_class, register_model
from wtal.models.ten import TemporalEnhancement, TENConfig


def _default_base() -> ModelConfig:
    return model_config_class(DEFAULT_BASE)(name=DEFAULT_BASE)


@dataclass
class WholeVideoBgConfig(BackgroundLossConfig, TENConfig, ModelConfig):
    """The base model, the TEN's settings and the background loss's (inherited), and how they meet."""

    name: str = "whole_video_bg"
    base: ModelConfig = field(default_factory=_default_base)  # the base model and its config (model.base.<key>) [ours]
    coactivity_input: str = "unenhanced"  # the base's feature-reading loss reads: unenhanced | enhanced (the TEN's output) [ours]

    @classmethod
    def inference_defaults_for(cls, values: Mapping[str, Any]) -> InferenceConfig:
        """The base's post-processing (its authors')."""
        base = values.get("base", DEFAULT_BASE)
        base_values = {"name": base} if isinstance(base, str) else dict(base)
        name = base_values.get("name", DEFAULT_BASE)
        try:
            return model_config_class(name).inference_defaults_for(base_values)
        except WtalError:
            return cls.inference_defaults  # an unknown base: config loading names it

    def validate(self, source: str = "config", prefix: str = "model") -> None:
        """Raise :class:`WtalError` naming ``<prefix>.<field>`` (``<prefix>.base.<key>`` in the base's
        config) for a bad choice or range."""
        TENConfig.validate(self, source, prefix)
        BackgroundLossConfig.validate(self, source, prefix)
        self.check(source, prefix=prefix, choices={"coactivity_input": ("enhanced", "unenhanced")})
        if not isinstance(self.base, ModelConfig) or isinstance(self.base, WholeVideoBgConfig):
            self.fail(source, "base", "the config of a registered model other than whole_video_bg", prefix)
        if self.bg_input not in self.base.score_kinds:
            self.fail(source, "bg_input", f"one of {list(self.base.score_kinds)} with {prefix}.base.name={self.base.name}", prefix)
        self.base.validate(source, f"{prefix}.base")

    def two_streams(self) -> bool:
        """The base's."""
        return self.base.two_streams()

    def describe(self) -> str:
        return f"model.name={self.name} on model.base.name={self.base.name}"

    def single_stream_hint(self) -> str:
        """The registered bases that read one stream."""
        single = [name for name in available_models() if name != self.name and not model_config_class(name)().two_streams()]
        return "model.base=" + " | ".join(single)

    @property
    def similar_pairs(self) -> int:
        """Same-class video pairs the sampler puts at the start of each batch: the base's, else 0."""
        return getattr(self.base, "similar_pairs", 0)


@register_model("whole_video_bg", WholeVideoBgConfig)
class WholeVideoBackground(WtalModel):
    """A base model (``self.base``) + TEN at its enhance hook + the whole-video background loss."""

    def __init__(self, cfg: WholeVideoBgConfig, in_dim: int, num_classes: int):
        super().__init__(cfg, num_classes)
        needs_row = cfg.bg_loss and not cfg.base.has_background
        self.base = build_model(cfg.base, in_dim, num_classes, background_row=needs_row)
        self.ten = TemporalEnhancement(cfg, self.base.enhance_width) if cfg.ten != "off" else None

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D], mask [B, T] -> the base's outputs, computed with the TEN at its hook."""
        enhance = None if self.ten is None else partial(self.ten, mask=mask)
        return self.base(features, mask, enhance=enhance)

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot -> the base's loss terms, "bg" (0 when off) and "total"
        = the base's total + ramp * bg_weight * bg."""
        cfg = self.cfg
        own = self.base.before_enhancement(outputs) if cfg.coactivity_input == "unenhanced" else outputs
        losses = self.base.loss(own, labels, mask)
        if not cfg.bg_loss:
            return {**losses, "bg": losses["total"].new_zeros(())}
        weight = cfg.ramp(self.progress) * cfg.bg_weight
        forced = forced_scores(self.base.background_scores(outputs, cfg.bg_input), losses["total"], weight, cfg)
        bg = background_loss(forced, labels, mask, cfg, self.base.topk_ratio)
        return {**losses, "total": losses["total"] + weight * bg, "bg": bg}

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """The base's scores; the background channel never enters them."""
        return self.base.scores(outputs, mask, video_topk_divisor)
