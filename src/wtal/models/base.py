"""The interface every registered model implements.

A model maps padded snippet features to named outputs, turns those outputs
into a loss from video-level labels, and into the three arrays localization
needs. Nothing outside ``wtal.models`` knows how a method works inside.
"""

from __future__ import annotations

from torch import Tensor, nn


class WtalModel(nn.Module):
    """Base class of WTAL models.

    Shapes: B videos, T snippets (padded), D feature width, C action classes.
    ``mask`` is ``[B, T]`` bool, True on real snippets.
    """

    progress: float = 1.0  # fraction of training done, set by the trainer (schedules read it)

    def __init__(self, cfg, num_classes: int):
        """Validate and keep the model's config (a ``ModelConfig``) and its number of classes."""
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.num_classes = num_classes

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
