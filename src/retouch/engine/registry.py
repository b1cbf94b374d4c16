"""Model settings -> engine instances. The only place that knows every engine module.

Generative engines import torch/diffusers lazily, so a server without the ``diffusers`` extra
still starts with the built-in engine and says which extra a configured model needs.
"""

from __future__ import annotations

import importlib

from retouch.config import ModelSettings
from retouch.engine.licences import LICENSES, NON_COMMERCIAL, license_of
from retouch.engine.types import Engine, EngineLoadError

__all__ = ["LICENSES", "NON_COMMERCIAL", "build_engine", "check_license", "license_of"]

_GENERATIVE = {
    "flux2-klein": ("retouch.engine.flux2_klein", "Flux2KleinEngine"),
    "qwen-image-edit": ("retouch.engine.qwen_image_edit", "QwenImageEditEngine"),
    "sd-inpaint": ("retouch.engine.sd_inpaint", "SDInpaintEngine"),
    "flux-kontext": ("retouch.engine.flux_kontext", "FluxKontextEngine"),
    "joyimage-edit": ("retouch.engine.joyimage_edit", "JoyImageEditEngine"),
    "longcat-image-edit": ("retouch.engine.longcat_image_edit", "LongCatImageEditEngine"),
    "qwen-image-2.1": ("retouch.engine.qwen_image21", "QwenImage21Engine"),
}

def check_license(model: ModelSettings) -> None:
    """Refuse to start weights whose licence forbids commercial use unless the operator
    acknowledged it with ``accept_license = "non-commercial"``."""
    licence = license_of(model) or ""
    if NON_COMMERCIAL in licence and model.accept_license != NON_COMMERCIAL:
        raise EngineLoadError(
            f"model {model.name!r} ({model.engine}): the weights' licence is {licence!r}, which "
            "does not allow commercial use. If your use is non-commercial, acknowledge it with "
            f'accept_license = "{NON_COMMERCIAL}" in this model\'s settings '
            f"(RETOUCH_MODELS__<i>__ACCEPT_LICENSE); otherwise serve a model with an open licence."
        )


def build_engine(model: ModelSettings) -> Engine:
    check_license(model)
    if model.engine == "echo":
        from retouch.engine.echo import EchoEngine

        return EchoEngine(model.name, model.options)
    if model.engine == "classic":
        from retouch.engine.classic import ClassicEngine

        return ClassicEngine(model.name, model.options)
    module_name, class_name = _GENERATIVE[model.engine]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineLoadError(
            f"model {model.name!r} uses the {model.engine} engine, which needs the diffusers "
            f"extra: pip install 'retouch[diffusers]' ({exc})"
        ) from exc
    engine: Engine = getattr(module, class_name)(model)
    return engine
