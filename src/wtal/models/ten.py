"""The temporal enhancement network (TEN) of docs/method.md: [B, H, T] features -> [B, H, T].

Base branch ``act(conv_k3(E))``; temporal-continuity branch over affinity snippets
(``continuity``: cosine affinity within ``window`` neighbours, softmax with temperature ``tau``,
``Cc_t = sum_j A[t, j] phi(E_j)``; or the same over every snippet, ``nonlocal``; or dilated
convolutions); ``ten=both`` fuses the branches by a sum or a 1x1 conv over their concatenation.
``ten_residual`` keeps the TEN's input: ``add`` gives F = E + TEN(E); ``gated`` gives
F = E + g TEN(E) with g a learned scalar that starts at 0, so that the enhanced model starts as
exactly its base and the TEN comes in as far as training finds it useful. ``ten_affinity`` says
what the continuity affinity reads where the base drops features out just before its enhance
hook: ``clean``, the features before that dropout, so that training and test weigh neighbours
alike, or ``dropped``, the features the TEN enhances (with a heavy dropout the softmax then puts
almost all of each row's weight on the snippet itself in training). Where the base has no
dropout there, both read the same features.

Shapes: B videos, T snippets, H the width of the features the base's hook gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wtal.models.registry import ConfigChecks

NEGATIVE_SLOPE = 0.2  # LeakyReLU slope of the branches [ours]
DILATIONS = (1, 2, 4)  # continuity="dilated": a stack of k=3 convs with these dilations

TEN_CHOICES = {
    "ten": ("both", "base", "continuity", "off"),
    "continuity": ("local_affinity", "dilated", "nonlocal"),
    "fusion": ("sum", "concat"),
    "ten_affinity": ("dropped", "clean"),
    "ten_residual": ("off", "add", "gated"),
}


@dataclass
class TENConfig(ConfigChecks):
    """The TEN's settings (``model.*`` keys of the paper's model)."""

    ten: str | bool = "both"  # TEN branches: both | base | continuity | off (YAML reads off as false) [ours]
    continuity: str = "local_affinity"  # continuity branch: local_affinity | dilated | nonlocal [ours]
    window: int = 2  # local_affinity: neighbours with |t - j| <= window [ours]
    tau: float = 0.1  # temperature of the affinity softmax (local_affinity, nonlocal) [ours]
    fusion: str = "sum"  # ten=both: sum of the branches | concat (1x1 conv over both) [ours]
    ten_residual: str | bool = "off"  # off (F = TEN(E)) | add (F = E + TEN(E)) | gated (F = E + g TEN(E), g from 0); true = add [ours]
    ten_affinity: str = "clean"  # affinity read from: clean (before the base's dropout) | dropped (after it) [ours]

    def __post_init__(self) -> None:
        if self.ten is False:  # YAML 1.1 reads ten: off (and model.ten=off) as false
            self.ten = "off"
        if isinstance(self.ten_residual, bool):  # the flag it was: true adds, false does not
            self.ten_residual = "add" if self.ten_residual else "off"

    def validate(self, source: str = "config", prefix: str = "model") -> None:
        self.check(source, prefix=prefix, choices=TEN_CHOICES, counts=("window",), positive=("tau",))


def _act(x: Tensor) -> Tensor:
    return F.leaky_relu(x, NEGATIVE_SLOPE)


class TemporalEnhancement(nn.Module):
    """TEN: base branch and/or temporal continuity branch, fused; [B, H, T] -> [B, H, T]."""

    def __init__(self, cfg: TENConfig, width: int):
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
        self.gate = nn.Parameter(torch.zeros(1)) if cfg.ten_residual == "gated" else None

    def _continuity(self, e: Tensor, clean: Tensor, mask: Tensor, m: Tensor) -> Tensor:
        """Temporal continuity branch: e, clean [B, H, T] -> [B, H, T]; the affinity reads
        ``clean`` when ``ten_affinity="clean"``, ``e`` otherwise."""
        if self.dilated is not None:
            for conv in self.dilated:
                e = _act(conv(e * m))
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
            branches.append(_act(self.base_branch(e * m)))
        if self.cfg.ten != "base":
            branches.append(self._continuity(e, clean, mask, m))
        if len(branches) == 1:
            out = branches[0]
        elif self.fuse is not None:
            out = self.fuse(torch.cat(branches, 1))
        else:
            out = branches[0] + branches[1]
        if self.gate is not None:
            return e + self.gate * out
        return e + out if self.cfg.ten_residual == "add" else out
