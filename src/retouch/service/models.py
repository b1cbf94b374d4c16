"""Request model names -> the configured model that serves them, and its validation family."""

from __future__ import annotations

from dataclasses import dataclass

from retouch.config import OPENAI_IMAGE_MODELS, ApiFamily, ModelSettings, Settings
from retouch.errors import InvalidValue


@dataclass(frozen=True)
class Route:
    requested: str
    model: ModelSettings
    family: ApiFamily


class ModelRoutes:
    def __init__(self, settings: Settings) -> None:
        self.models = {m.name: m for m in settings.models}
        self.default = self.models[settings.default_model or settings.models[0].name]
        self._names: dict[str, Route] = {}
        for name, family in OPENAI_IMAGE_MODELS.items():
            self._names[name] = Route(name, self.default, family)
        for m in settings.models:
            for name in (m.name, *m.aliases):
                family = OPENAI_IMAGE_MODELS.get(name, m.family)
                self._names[name] = Route(name, m, family)

    def resolve(self, requested: str | None) -> Route:
        """``None`` (no ``model`` field) goes to the default model with GPT-image rules."""
        if requested is None:
            return Route("gpt-image-1.5", self.default, "gpt-image")
        route = self._names.get(requested)
        if route is None:
            raise InvalidValue(
                f"Invalid value: '{requested[:80]}'. The model does not exist on this server; "
                f"served models: {', '.join(sorted(self.models))}.",
                param="model",
                code="model_not_found",
            )
        return route

    def names(self) -> list[tuple[str, ModelSettings]]:
        """Every request name with its model, served names first."""
        own = [(n, r.model) for n, r in self._names.items() if n not in OPENAI_IMAGE_MODELS]
        aliases = [(n, r.model) for n, r in self._names.items() if n in OPENAI_IMAGE_MODELS]
        return own + aliases
