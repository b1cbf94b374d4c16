"""Our responses validated against OpenAI's published schemas.

``tests/openapi/openai-images-openapi.yaml`` (vendored; OpenAI publishes it under the MIT
licence, see ``tests/openapi/NOTICE.md``) is an unedited extract of OpenAI's OpenAPI 3.1 document; 3.1 schemas are JSON Schema 2020-12,
so ``jsonschema`` validates against them directly, resolving ``$ref``s into the components.

The extract has no ``Error`` component (it holds only what the image paths reference), so the
error envelope is checked against the SPEC's ``Error`` / ``ErrorResponse`` as quoted in the
contract §6.1: all four keys required, ``param`` and ``code`` strings or null.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
import yaml
from PIL import Image
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.conftest import Harness, encode_image, gradient, mask_bytes, png_bytes

pytestmark = pytest.mark.anyio

SPEC_PATH = Path(__file__).resolve().parent / "openapi" / "openai-images-openapi.yaml"
SPEC_URI = "urn:openai:images-openapi"

ERROR_RESPONSE = {  # SPEC ErrorResponse + Error (contract §6.1); extra keys are allowed
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    if not SPEC_PATH.is_file():
        raise FileNotFoundError(f"OpenAI's schema extract is missing: {SPEC_PATH}")
    document = yaml.safe_load(SPEC_PATH.read_text())
    resource = Resource.from_contents(document, default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


def check(registry: Registry, component: str, instance: Any) -> None:
    schema = {"$ref": f"{SPEC_URI}#/components/schemas/{component}"}
    validator = jsonschema.Draft202012Validator(
        schema, registry=registry, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_validator_rejects_what_the_schema_forbids(registry: Registry) -> None:
    """The schemas have teeth: our checks would catch a wrong shape."""
    bad = [
        {"data": []},  # no created
        {"created": 1, "size": "64x64"},  # not an OpenAI size
        {"created": 1, "quality": "auto"},  # auto must be resolved
        {"created": 1, "usage": {"input_tokens": 1, "total_tokens": 1, "output_tokens": 0}},
    ]
    for instance in bad:
        with pytest.raises(AssertionError):
            check(registry, "ImagesResponse", instance)
    with pytest.raises(AssertionError):
        check(registry, "ImageEditCompletedEvent", {"type": "image_edit.completed", "b64_json": ""})


async def edit(harness: Harness, **fields: Any) -> httpx2.Response:
    files = fields.pop("files", None) or {
        "image": ("a.png", encode_image(gradient((96, 64))), "image/png")
    }
    data = {"prompt": "hello world", **{k: str(v) for k, v in fields.items()}}
    return await harness.http.post("/v1/images/edits", data=data, files=files)


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "gpt-image-1"},
        {"model": "gpt-image-1", "quality": "low", "size": "1024x1024", "n": 2},
        {
            "model": "gpt-image-1.5",
            "output_format": "jpeg",
            "output_compression": 50,
            "quality": "medium",
        },
        {
            "model": "gpt-image-1",
            "output_format": "webp",
            "background": "transparent",
            "quality": "low",
        },
        {
            "model": "gpt-image-1-mini",
            "input_fidelity": "low",
            "size": "1024x1536",
            "quality": "low",
        },
        {"model": "gpt-image-2", "size": "1024x1024", "quality": "low"},
    ],
)
async def test_images_response(echo: Harness, registry: Registry, fields: dict[str, Any]) -> None:
    response = await edit(echo, **fields)
    assert response.status_code == 200, response.text
    doc = response.json()
    check(registry, "ImagesResponse", doc)
    assert {"created", "data", "background", "output_format", "quality", "size", "usage"} <= set(
        doc
    )


async def test_images_response_dall_e_2(echo: Harness, registry: Registry) -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    files = {"image": ("a.png", _png(rgba), "image/png")}
    for fmt in ("url", "b64_json"):
        response = await edit(
            echo, model="dall-e-2", size="256x256", response_format=fmt, files=files
        )
        assert response.status_code == 200, response.text
        doc = response.json()
        check(registry, "ImagesResponse", doc)
        assert set(doc["data"][0]) == {fmt}


async def test_stream_events(echo: Harness, registry: Registry) -> None:
    response = await edit(
        echo, model="gpt-image-1", stream="true", partial_images=2, quality="low",
        files={"image": ("a.png", encode_image(gradient((64, 64))), "image/png"),
               "mask": ("m.png", mask_bytes((64, 64), (0, 0, 8, 8)), "image/png")},
    )  # fmt: skip
    assert response.status_code == 200
    events = []
    for block in response.text.split("\n\n"):
        lines = [line for line in block.splitlines() if not line.startswith(":")]
        if not lines:
            continue
        event = dict(line.split(": ", 1) for line in lines)
        payload = json.loads(event["data"])
        assert payload["type"] == event["event"]
        events.append(payload)
    assert [e["type"] for e in events] == ["image_edit.partial_image"] * 2 + [
        "image_edit.completed"
    ]
    for payload in events[:2]:
        check(registry, "ImageEditPartialImageEvent", payload)
    check(registry, "ImageEditCompletedEvent", events[2])
    for payload in events:
        Image.open(io.BytesIO(base64.b64decode(payload["b64_json"]))).verify()


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"model": "gpt-image-1", "size": "1x1"}, 400),
        ({"model": "gpt-image-1", "response_format": "url"}, 400),
        ({"model": "gpt-image-1", "files": {"image": ("a.svg", b"<svg/>", "image/svg+xml")}}, 400),
        ({"model": "nope"}, 400),
        ({"model": "gpt-image-2", "input_fidelity": "high"}, 400),
    ],
)
async def test_error_bodies(echo: Harness, fields: dict[str, Any], status: int) -> None:
    response = await edit(echo, **fields)
    assert response.status_code == status
    jsonschema.validate(response.json(), ERROR_RESPONSE)
    assert isinstance(response.json()["error"]["code"], str)


async def test_error_bodies_outside_the_edit_route(echo: Harness) -> None:
    for response in (
        await echo.http.get("/v1/unknown"),
        await echo.http.get("/v1/blobs/x?expires=1&sig=y"),
        await echo.http.post(
            "/v1/images/edits", content=b"{", headers={"content-type": "application/json"}
        ),
        await echo.http.post(
            "/v1/images/edits",
            files={"prompt": (None, "x"), "image": ("a.png", png_bytes(), "image/png")},
            headers={"content-length": str(10**12)},
        ),
    ):
        assert response.status_code >= 400
        jsonschema.validate(response.json(), ERROR_RESPONSE)


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
