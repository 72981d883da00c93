"""The interface every registered model implements.

A model maps padded snippet features to named outputs, turns those outputs
into a loss from video-level labels, and into the three arrays localization
needs. Nothing outside ``wtal.models`` knows how a method works inside.

Every model is also a base for the paper's parts (``whole_video_bg``), which read it only
through this interface and its config's class attributes (``has_background``, ``score_kinds``,
``inference_defaults``, :mod:`wtal.models.registry`): the ``enhance`` hook of :meth:`forward`,
:attr:`enhance_width`, :attr:`topk_ratio`, :meth:`background_scores` and
:meth:`before_enhancement`; a model without a background channel adds one output when built
with ``background_row=True`` (:meth:`split_background_row`).
"""

from __future__ import annotations

from typing import Callable, ClassVar, Mapping

import torch
from torch import Tensor, nn

from wtal.errors import WtalError

# A base model's enhance hook (whole_video_bg's TEN): (features [B, H, T], the same features before
# the base's dropout at that point [B, H, T]) -> the features the rest of the base reads [B, H, T].
Enhance = Callable[[Tensor, Tensor], Tensor]


class WtalModel(nn.Module):
    """Base class of WTAL models.

    Shapes: B videos, T snippets (padded), D feature width, C action classes.
    ``mask`` is ``[B, T]`` bool, True on real snippets.
    """

    progress: float = 1.0  # fraction of training done, set by the trainer (schedules read it)
    # The authors' state_dict names -> ours (None: a parameter their forward never uses), for a
    # model that reproduces an authors' implementation (its parity test loads their weights).
    authors_names: ClassVar[Mapping[str, str | None]] = {}

    def __init__(self, cfg, num_classes: int, background_row: bool = False):
        """Validate and keep the model's config (a ``ModelConfig``) and its number of classes;
        ``background_row``: the classifier gets one more output, read by no part of the model's own
        loss or scores (see :meth:`split_background_row`)."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_classes = num_classes
        self.background_row = background_row

    def load_authors_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load parameters saved under the authors' names (their model's ``state_dict()``)
        through :attr:`authors_names`; an unknown name raises :class:`WtalError`."""
        name = type(self).__name__
        if not self.authors_names:
            raise WtalError(f"{name}: no mapping from an authors' implementation's parameter names")
        unknown = sorted(set(state) - set(self.authors_names))
        if unknown:
            raise WtalError(
                f"{name} weights: unknown authors' parameter name(s) {unknown}; expected some of "
                f"{sorted(self.authors_names)}"
            )
        self.load_state_dict(
            {self.authors_names[k]: torch.as_tensor(v) for k, v in state.items() if self.authors_names[k] is not None}
        )

    def forward(self, features: Tensor, mask: Tensor, enhance: Enhance | None = None) -> dict[str, Tensor]:
        """features [B, T, D] float32, mask [B, T] bool -> named tensors.

        ``enhance`` (the paper's temporal enhancement network) replaces the model's features just
        before its classifier (width :attr:`enhance_width`); everything after that point reads its
        result. A model that does so returns its features before the hook too, and
        :meth:`before_enhancement` gives its loss those where it asks for them."""
        raise NotImplementedError

    @property
    def enhance_width(self) -> int:
        """Channels of the features the ``enhance`` hook receives."""
        raise NotImplementedError

    @property
    def topk_ratio(self) -> int:
        """r of the model's top-k pooling, k = max(1, T // r)."""
        return self.cfg.topk_r

    def split_background_row(self, logits: Tensor) -> dict[str, Tensor]:
        """The classifier's logits [B, T, C (+1)] -> {"cas_logits": [B, T, C]} and, built with
        ``background_row``, {"background_logits": [B, T]} (the added row)."""
        if not self.background_row:
            return {"cas_logits": logits}
        return {"cas_logits": logits[..., :-1], "background_logits": logits[..., -1]}

    def background_scores(self, outputs: dict[str, Tensor], kind: str) -> list[Tensor]:
        """The scores a whole-video background loss forces to background: outputs of :meth:`forward`
        whose concatenation on the last axis is [B, T, C+1], background last. ``kind``: ``cas`` (the
        classifier's logits) or, where the config's ``score_kinds`` has it, ``cas_fg`` (the
        attention-suppressed ones). This default serves ``cas``: the logits with their background
        channel, or with the added background row."""
        if kind != "cas":
            raise WtalError(f"{self.cfg.describe()}: no {kind!r} scores; expected one of {list(self.cfg.score_kinds)}")
        if self.cfg.has_background:
            return [outputs["cas_logits"]]
        return [outputs["cas_logits"], outputs["background_logits"][..., None]]

    def before_enhancement(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """``outputs`` with the features the model's own loss reads (a co-activity loss) taken from
        before the ``enhance`` hook; unchanged for a model whose loss reads no features."""
        return outputs

    def loss(self, outputs: dict[str, Tensor], labels: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """labels [B, C] multi-hot float -> {"total": scalar, <component>: scalar, ...}."""
        raise NotImplementedError

    def scores(
        self, outputs: dict[str, Tensor], mask: Tensor, video_topk_divisor: int = 10
    ) -> dict[str, Tensor]:
        """Inference scores, what the model's post-processing (its config's ``inference_defaults``) reads:

        ``attention`` [B, T] actionness in [0, 1]; ``cas`` [B, T, C] per-snippet action
        class scores (never the background channel); ``video_scores`` [B, C] pooled over the
        top ``T // video_topk_divisor`` snippets of each video. ``cas`` and ``video_scores`` are
        in [0, 1] unless the method's authors localise on unbounded values (CO2-Net's
        logits x attention, W-TALC's raw logits and top-k mean logits).
        """
        raise NotImplementedError
