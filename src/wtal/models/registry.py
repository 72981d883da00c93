"""A registry of models: a method is one file that registers its network and config.

    @register_model("mil", MILConfig)
    class MIL(WtalModel): ...

``build_model(cfg, in_dim, num_classes)`` looks the name up; config loading
uses ``model_config_class(name)`` to turn the YAML ``model:`` section into
that method's dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Mapping

from torch import nn

from wtal.errors import WtalError


@dataclass
class ModelConfig:
    """Base of every model's config; ``name`` selects the registered model."""

    name: str = ""

    # The method's own post-processing (its authors'): InferenceConfig values that replace the
    # generic defaults; the user's inference.* keys replace both.
    inference_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def inference_defaults_for(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """The post-processing defaults of a model configured by ``values`` (its ``model:``
        mapping); a model that wraps another one overrides this to take its base's."""
        return cls.inference_defaults

    def two_streams(self) -> bool:
        """Whether the network reads RGB and flow as two separate halves of each feature vector
        (then ``data.modality`` must be ``both``)."""
        return False

    def describe(self) -> str:
        """How error messages name this model, e.g. ``model.name=co2net``."""
        return f"model.name={self.name}"

    def single_stream_hint(self) -> str:
        """What to use instead when the data has one stream and this model reads two."""
        return "e.g. model.name=mil or basnet"

    def fail(self, source: str, key: str, expected: str) -> None:
        """Raise :class:`WtalError` naming ``model.<key>``, what was expected and what was found."""
        raise WtalError(f"{source}: model.{key}: expected {expected}, found {getattr(self, key)!r}")

    def check(
        self,
        source: str,
        *,
        counts: Iterable[str] = (),
        probabilities: Iterable[str] = (),
        positive: Iterable[str] = (),
        non_negative: Iterable[str] = (),
        flags: Iterable[str] = (),
        choices: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Check fields by kind: counts (integers >= 1), probabilities in [0, 1), numbers
        > 0 or >= 0, booleans, and fields restricted to ``choices``."""
        for key, allowed in (choices or {}).items():
            if getattr(self, key) not in tuple(allowed):
                self.fail(source, key, f"one of {list(allowed)}")
        for key in counts:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self.fail(source, key, "an integer >= 1")
        for key in positive:
            if not getattr(self, key) > 0:
                self.fail(source, key, "a number > 0")
        for key in non_negative:
            if not getattr(self, key) >= 0:
                self.fail(source, key, "a number >= 0")
        for key in probabilities:
            if not 0 <= getattr(self, key) < 1:
                self.fail(source, key, "a probability in [0, 1)")
        for key in flags:
            if not isinstance(getattr(self, key), bool):
                self.fail(source, key, "true or false")


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
