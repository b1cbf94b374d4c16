"""Request model names -> the configured model that serves them, and its validation family.

OpenAI's names (``families.OPENAI_MODELS``, plus any dated snapshot of them) are aliases of the
default model with their family's rules; retouch's own names and aliases follow the family their
``ModelSettings`` declares.
"""

from __future__ import annotations

from dataclasses import dataclass

from retouch.config import ModelSettings, Settings
from retouch.errors import InvalidValue
from retouch.families import DEFAULT_REQUEST_MODEL, OPENAI_MODELS, ApiFamily, openai_family


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
        for name, family in OPENAI_MODELS.items():
            self._names[name] = Route(name, self.default, family)
        for m in settings.models:
            for name in (m.name, *m.aliases):
                family = openai_family(name) or m.family
                self._names[name] = Route(name, m, family)

    def resolve(self, requested: str | None) -> Route:
        """No ``model`` (absent, empty or blank: Open WebUI's default config sends an empty
        one) goes to the default model with the rules of ``DEFAULT_REQUEST_MODEL``."""
        if requested is None or not requested.strip():
            return Route(DEFAULT_REQUEST_MODEL, self.default, OPENAI_MODELS[DEFAULT_REQUEST_MODEL])
        route = self._names.get(requested)
        if route is None:
            family = openai_family(requested)  # a dated snapshot of a known name
            if family is not None:
                return Route(requested, self.default, family)
            raise InvalidValue(
                f"Invalid value: '{requested[:80]}'. The model does not exist on this server; "
                f"served models: {', '.join(sorted(self.models))}.",
                param="model",
                code="model_not_found",
            )
        return route

    def served_by(self, requested: str) -> ModelSettings | None:
        """The model a request name would run on (``/v1/models/{id}``), or ``None``."""
        try:
            return self.resolve(requested).model
        except InvalidValue:
            return None

    def names(self) -> list[tuple[str, ModelSettings]]:
        """Every listed request name with its model, served names first."""
        own = [(n, r.model) for n, r in self._names.items() if n not in OPENAI_MODELS]
        aliases = [(n, r.model) for n, r in self._names.items() if n in OPENAI_MODELS]
        return own + aliases
