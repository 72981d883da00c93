"""The interface every registered model implements.

A model maps padded snippet features to named outputs, turns those outputs
into a loss from video-level labels, and into the three arrays localization
needs. Nothing outside ``wtal.models`` knows how a method works inside.
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

    def __init__(self, cfg, num_classes: int):
        """Validate and keep the model's config (a ``ModelConfig``) and its number of classes."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_classes = num_classes

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

    def forward(self, features: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """features [B, T, D] float32, mask [B, T] bool -> named tensors."""
        raise NotImplementedError

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
