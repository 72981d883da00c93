"""A registry of models: a method is one file that registers its network and config.

    @register_model("mil", MILConfig)
    class MIL(WtalModel): ...

``build_model(cfg, in_dim, num_classes)`` looks the name up; config loading
uses ``model_config_class(name)`` to turn the YAML ``model:`` section into
that method's dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from wtal.errors import WtalError


@dataclass
class ModelConfig:
    """Base of every model's config; ``name`` selects the registered model."""

    name: str = ""


_MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {}


def register_model(name: str, config_class: type[ModelConfig]) -> Callable[[type], type]:
    def decorator(model_class: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = (model_class, config_class)
        return model_class

    return decorator


def available_models() -> list[str]:
    return sorted(_MODELS)


def _entry(name: str) -> tuple[type[nn.Module], type[ModelConfig]]:
    if name not in _MODELS:
        raise WtalError(f"model.name: unknown model {name!r}; expected one of {available_models()}")
    return _MODELS[name]


def model_config_class(name: str) -> type[ModelConfig]:
    return _entry(name)[1]


def build_model(cfg: ModelConfig, in_dim: int, num_classes: int) -> nn.Module:
    """Instantiate the registered model ``cfg.name`` for ``in_dim`` features and ``num_classes``."""
    model_class, _ = _entry(cfg.name)
    return model_class(cfg, in_dim=in_dim, num_classes=num_classes)
