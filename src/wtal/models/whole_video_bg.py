"""Placeholder: replaced by the paper's model."""
from dataclasses import dataclass

from wtal.models.registry import ModelConfig, register_model
from wtal.models.base import WtalModel


@dataclass
class WholeVideoBgConfig(ModelConfig):
    name: str = "whole_video_bg"


@register_model("whole_video_bg", WholeVideoBgConfig)
class WholeVideoBackground(WtalModel):
    pass
