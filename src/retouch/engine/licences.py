"""Licences of the engines' weights, readable without importing any engine (``/v1/models``
shows them; the HTTP layer must not pull engine code and its imaging libraries in)."""

from __future__ import annotations

from retouch.config import ModelSettings

LICENSES = {
    "classic": "apache-2.0",  # retouch's own code and the bundled u2netp (Apache-2.0)
    "echo": "apache-2.0",
    "flux2-klein": "apache-2.0",  # FLUX.2-klein-4B; the 9B variants are non-commercial
    "qwen-image-edit": "apache-2.0",
    "sd-inpaint": "creativeml-openrail-m",
    "flux-kontext": "flux-1-dev-non-commercial",
    "joyimage-edit": "apache-2.0",
    "longcat-image-edit": "apache-2.0",
    "qwen-image-2.1": "qwen-research-non-commercial",  # Qwen-Image-2.1's research licence
    "upstream": "upstream-terms",  # a relay: the upstream provider's own terms apply
}
"""Licence of each engine's default weights; ``ModelSettings.license`` overrides it for other
weights (e.g. FLUX.2-klein-9B, non-commercial, on the flux2-klein engine)."""
NON_COMMERCIAL = "non-commercial"


def license_of(model: ModelSettings) -> str | None:
    """The licence shown in ``/v1/models`` for a configured model (None: not known here, e.g.
    an engine kind added elsewhere that relays to another server)."""
    return model.license or LICENSES.get(model.engine)
