"""The ``retouch`` field of ``/v1/models`` entries (service/describe.py) says what the validator
accepts, no more.

The playground builds its controls from this field, so every value offered must pass
``to_edit_params`` and the values the field leaves out must be refused."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from retouch.config import ApiFamily, Limits
from retouch.engine.types import EngineInfo
from retouch.errors import RetouchError
from retouch.service.describe import model_capabilities
from retouch.service.form import EditForm, Upload
from retouch.service.params import ALLOWED_FIELDS, to_edit_params
from tests.conftest import Harness

LIMITS = Limits()
INFO = EngineInfo(name="echo", description="", max_images=4, supports_transparency=False)
FAMILIES: tuple[ApiFamily, ...] = get_args(ApiFamily)
NAMES = {"dall-e-2": "dall-e-2", "gpt-image": "gpt-image-1", "gpt-image-2": "gpt-image-2",
         "native": "echo"}  # fmt: skip


def accepts(family: ApiFamily, fields: dict[str, str]) -> bool:
    form = EditForm(fields={"prompt": "p", **fields},
                    images=[Upload("image", "a.png", "image/png", b"")])  # fmt: skip
    try:
        to_edit_params(form, model=NAMES[family], served_model="echo", family=family,
                       limits=LIMITS, allow_url=family == "dall-e-2")  # fmt: skip
    except RetouchError:
        return False
    return True


@pytest.mark.parametrize("family", FAMILIES)
def test_every_offered_value_is_accepted(family: ApiFamily) -> None:
    caps = model_capabilities(NAMES[family], family, INFO, LIMITS)
    assert set(caps["params"]) == ALLOWED_FIELDS[family]
    for size in caps["sizes"]:
        assert accepts(family, {"size": size}), size
    for quality in caps["qualities"]:
        assert accepts(family, {"quality": quality}), quality
    for fmt in caps["output_formats"]:
        assert accepts(family, {"output_format": fmt})
        assert accepts(family, {"output_format": fmt, "output_compression": "50"}) == (
            fmt in caps["compression_formats"]
        )
        assert accepts(family, {"output_format": fmt, "background": "transparent"}) == (
            fmt in caps["transparent_formats"]
        )
    for fidelity in caps["input_fidelity"]:
        assert accepts(family, {"input_fidelity": fidelity})
    assert accepts(family, {"n": str(caps["n_max"])})
    assert not accepts(family, {"n": str(caps["n_max"] + 1)})
    if caps["stream"]:
        assert accepts(family, {"stream": "true", "partial_images": str(caps["partial_images_max"])})
        assert not accepts(family, {"stream": "true", "partial_images": str(caps["partial_images_max"] + 1)})
    else:
        assert not accepts(family, {"stream": "true"})


@pytest.mark.parametrize("family", FAMILIES)
def test_values_left_out_are_refused(family: ApiFamily) -> None:
    caps = model_capabilities(NAMES[family], family, INFO, LIMITS)
    for quality in {"auto", "low", "medium", "high", "standard"} - set(caps["qualities"]):
        assert not accepts(family, {"quality": quality}), quality
    for fmt in {"png", "jpeg", "webp"} - set(caps["output_formats"]):
        assert not accepts(family, {"output_format": fmt})
    for fidelity in {"low", "high"} - set(caps["input_fidelity"]):
        assert not accepts(family, {"input_fidelity": fidelity})
    if caps["free_size"] is None:
        assert not accepts(family, {"size": "640x480"})


def test_free_size_bounds_match_the_validator() -> None:
    free = model_capabilities("gpt-image-2", "gpt-image-2", INFO, LIMITS)["free_size"]
    assert free is not None
    assert accepts("gpt-image-2", {"size": "1024x768"})
    assert not accepts("gpt-image-2", {"size": f"1024x{768 + free['multiple'] // 2}"})
    assert not accepts("gpt-image-2", {"size": "2400x784"})  # beyond 3:1
    native = model_capabilities("echo", "native", INFO, LIMITS)["free_size"]
    assert native is not None
    assert native["max_pixels"] == LIMITS.max_output_pixels
    assert accepts("native", {"size": "641x481"})


def test_engine_and_name_specifics() -> None:
    caps = model_capabilities("gpt-image-1-mini", "gpt-image", INFO, LIMITS)
    assert caps["input_fidelity"] == ["low"]
    assert "transparent" not in caps["backgrounds"]  # INFO has no alpha matting
    assert caps["max_images"] == 4
    assert model_capabilities("dall-e-2", "dall-e-2", INFO, LIMITS)["max_images"] == 1


@pytest.mark.anyio
async def test_models_route_carries_the_field(classic: Harness) -> None:
    listed: dict[str, Any] = {}
    async for model in classic.sdk.models.list():
        listed[model.id] = model.model_extra["retouch"] if model.model_extra else None
    assert listed["classic"]["family"] == "native"
    assert listed["classic"]["engine"] == "classic"
    assert listed["gpt-image-2"]["free_size"]["multiple"] == 16
    assert listed["dall-e-2"]["sizes"] == ["256x256", "512x512", "1024x1024"]
    one = await classic.sdk.models.retrieve("gpt-image-1")
    assert one.model_extra is not None
    assert one.model_extra["retouch"]["family"] == "gpt-image"


@pytest.mark.anyio
async def test_page_and_assets_are_served_without_a_key(classic: Harness) -> None:
    page = await classic.http.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset, kind in (("/ui/app.js", "javascript"), ("/ui/app.css", "text/css")):
        assert asset in page.text
        response = await classic.http.get(asset)
        assert response.status_code == 200
        assert kind in response.headers["content-type"]
    # nothing but static files lives there: unknown paths stay OpenAI-shaped 404s
    missing = await classic.http.get("/ui/../../etc/passwd")
    assert missing.status_code == 404
    assert (await classic.http.get("/v1/nope")).json()["error"]["code"] == "not_found"
