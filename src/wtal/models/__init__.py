"""Registered models. Importing this package registers every method."""

from wtal.models.base import WtalModel
from wtal.models.registry import ModelConfig, available_models, build_model, register_model
from wtal.models import whole_video_bg  # noqa: F401  (registers "whole_video_bg")

__all__ = ["ModelConfig", "WtalModel", "available_models", "build_model", "register_model"]
