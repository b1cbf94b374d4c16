"""Model settings -> engine instances. The only place that knows every engine module.

Generative engines import torch/diffusers lazily, so a server without the ``diffusers`` extra
still starts with the built-in engine and says which extra a configured model needs.
"""

from __future__ import annotations

import importlib

from retouch.config import ModelSettings
from retouch.engine.types import Engine, EngineLoadError

_GENERATIVE = {
    "flux2-klein": ("retouch.engine.flux2_klein", "Flux2KleinEngine"),
    "qwen-image-edit": ("retouch.engine.qwen_image_edit", "QwenImageEditEngine"),
    "sd-inpaint": ("retouch.engine.sd_inpaint", "SDInpaintEngine"),
}


def build_engine(model: ModelSettings) -> Engine:
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
