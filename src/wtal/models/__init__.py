"""Registered models. Importing this package registers every method."""

from wtal.models.base import WtalModel
from wtal.models.registry import ModelConfig, available_models, build_model, register_model
from wtal.models import plain  # noqa: F401  (registers "plain")
from wtal.models import whole_video_bg  # noqa: F401  (registers "whole_video_bg")
from wtal.models import um  # noqa: F401  (registers "um")
from wtal.models import co2net  # noqa: F401  (registers "co2net")
from wtal.models import delu  # noqa: F401  (registers "delu")
from wtal.models import mil  # noqa: F401  (registers "mil")
from wtal.models import basnet  # noqa: F401  (registers "basnet")
from wtal.models import wtalc  # noqa: F401  (registers "wtalc")

__all__ = ["ModelConfig", "WtalModel", "available_models", "build_model", "register_model"]
