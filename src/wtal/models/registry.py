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
from wtal.localize import InferenceConfig


class ConfigChecks:
    """Range and choice checks for a model's (or a model part's) config dataclass."""

    def fail(self, source: str, key: str, expected: str, prefix: str = "model") -> None:
        """Raise :class:`WtalError` naming ``<prefix>.<key>``, what was expected and what was found."""
        raise WtalError(f"{source}: {prefix}.{key}: expected {expected}, found {getattr(self, key)!r}")

    def check(
        self,
        source: str,
        *,
        prefix: str = "model",
        counts: Iterable[str] = (),
        probabilities: Iterable[str] = (),
        positive: Iterable[str] = (),
        non_negative: Iterable[str] = (),
        flags: Iterable[str] = (),
        choices: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        """Check fields by kind: counts (integers >= 1), probabilities in [0, 1), numbers
        > 0 or >= 0, booleans, and fields restricted to ``choices``; errors name ``<prefix>.<field>``."""
        for key, allowed in (choices or {}).items():
            if getattr(self, key) not in tuple(allowed):
                self.fail(source, key, f"one of {list(allowed)}", prefix)
        for key in counts:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                self.fail(source, key, "an integer >= 1", prefix)
        for key in positive:
            if not getattr(self, key) > 0:
                self.fail(source, key, "a number > 0", prefix)
        for key in non_negative:
            if not getattr(self, key) >= 0:
                self.fail(source, key, "a number >= 0", prefix)
        for key in probabilities:
            if not 0 <= getattr(self, key) < 1:
                self.fail(source, key, "a probability in [0, 1)", prefix)
        for key in flags:
            if not isinstance(getattr(self, key), bool):
                self.fail(source, key, "true or false", prefix)


@dataclass
class ModelConfig(ConfigChecks):
    """Base of every model's config; ``name`` selects the registered model.

    What a model declares for the parts that sit on it as a base (``whole_video_bg``) is in the
    class attributes below and in :class:`wtal.models.base.WtalModel`.
    """

    name: str = ""

    # The method's own post-processing (its authors'), which the config loader starts from; the
    # user's inference.* keys replace its fields.
    inference_defaults: ClassVar[InferenceConfig] = InferenceConfig()
    # Whether the classifier's last channel is background. A model without one takes
    # ``background_row=True`` (see build_model) to add a background output for a part that needs it.
    has_background: ClassVar[bool] = False
    # The kinds of scores WtalModel.background_scores gives: cas (the classifier's) and, for a model
    # with attention-suppressed scores, cas_fg.
    score_kinds: ClassVar[tuple[str, ...]] = ("cas",)

    @classmethod
    def inference_defaults_for(cls, values: Mapping[str, Any]) -> InferenceConfig:
        """The post-processing defaults of a model configured by ``values`` (its ``model:``
        mapping); a model that wraps another one overrides this to take its base's."""
        return cls.inference_defaults

    # The field checks validate() applies (keyword arguments of ConfigChecks.check: counts,
    # probabilities, positive, non_negative, flags, choices).
    checks: ClassVar[Mapping[str, Any]] = {}

    def validate(self, source: str = "config", prefix: str = "model") -> None:
        """Raise :class:`WtalError` naming ``<prefix>.<field>`` for a bad choice or range (``checks``;
        a model with more to check extends this)."""
        self.check(source, prefix=prefix, **self.checks)

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


# The base a model that wraps one (whole_video_bg, model.base) starts from: the paper is evaluated in
# CO2-Net's protocol and compared against it.
DEFAULT_BASE = "co2net"

_MODELS: dict[str, tuple[type[nn.Module], type[ModelConfig]]] = {}


def register_model(name: str, config_class: type[ModelConfig]) -> Callable[[type], type]:
    """Register ``model_class`` under ``name`` with its config dataclass (whose ``name`` field
    defaults to ``name``); a name can be registered once per process."""

    def decorator(model_class: type) -> type:
        if name in _MODELS:
            taken = _MODELS[name][0]
            raise WtalError(
                f"model.name: {name!r} is registered already (by {taken.__module__}.{taken.__qualname__}); "
                f"{model_class.__module__}.{model_class.__qualname__} needs a name of its own"
            )
        _MODELS[name] = (model_class, config_class)
        return model_class

    return decorator


def available_models() -> list[str]:
    return sorted(_MODELS)


def _entry(name: str) -> tuple[type[nn.Module], type[ModelConfig]]:
    if name not in _MODELS:
        raise WtalError(
            f"model.name: unknown model {name!r}; expected one of {available_models()} (a model of your own "
            "is registered by listing its file under imports, docs/adding_a_method.md)"
        )
    return _MODELS[name]


def model_config_class(name: str) -> type[ModelConfig]:
    return _entry(name)[1]


def build_model(cfg: ModelConfig, in_dim: int, num_classes: int, background_row: bool = False) -> nn.Module:
    """Instantiate the registered model ``cfg.name`` for ``in_dim`` features and ``num_classes``;
    ``background_row`` adds a background output to a model without a background channel."""
    model_class, _ = _entry(cfg.name)
    if not background_row:
        return model_class(cfg, in_dim=in_dim, num_classes=num_classes)
    if cfg.has_background:
        raise WtalError(f"{cfg.describe()}: has a background channel already; no background row to add")
    return model_class(cfg, in_dim=in_dim, num_classes=num_classes, background_row=True)
