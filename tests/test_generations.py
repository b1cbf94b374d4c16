"""``POST /v1/images/generations`` through the official SDK: the same families, validation,
usage, ledger, limits, idempotency and admission as edits (the generative engines themselves are
tested on tiny pipelines in ``tests/engines/test_generations.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import pytest

from retouch.config import Settings
from retouch.service.tokens import output_image_tokens, text_tokens
from tests.conftest import Harness, decode_b64, echo_models

pytestmark = pytest.mark.anyio
PROMPT = "a lighthouse at dusk"


async def test_generate_plain(echo: Harness) -> None:
    result = await echo.sdk.images.generate(
        model="gpt-image-1.5", prompt=PROMPT, size="1536x1024", quality="medium", n=2,
        output_format="webp", output_compression=70, user="u-1",
    )  # fmt: skip
    assert result.data
    assert len(result.data) == 2
    image = decode_b64(result.data[0].b64_json or "")
    assert (image.format, image.size) == ("WEBP", (1536, 1024))
    assert (result.size, result.quality, result.output_format) == ("1536x1024", "medium", "webp")
    assert result.background == "opaque"
    assert result.safety_identifier == "u-1"
    assert result.usage is not None
    assert result.usage.input_tokens_details.text_tokens == text_tokens(PROMPT)
    assert result.usage.input_tokens_details.image_tokens == 0
    assert result.usage.output_tokens == 2 * 1568  # the quality x size table, per image


async def test_generate_streaming(echo: Harness) -> None:
    stream = await echo.sdk.images.generate(
        model="gpt-image-2", prompt=PROMPT, stream=True, partial_images=2, size="1024x1024",
        quality="high",
    )  # fmt: skip
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]  # type: ignore[union-attr]
    done = events[-1]
    assert done.usage.output_tokens == output_image_tokens("gpt-image-2", "high", 1024, 1024) + 200  # type: ignore[union-attr]
    assert done.size == "1024x1024"


async def test_size_auto_and_the_newest_options(echo: Harness) -> None:
    result = await echo.sdk.images.generate(prompt=PROMPT)
    assert result.size == "1024x1024"
    assert result.quality == "high"
    newest = await echo.sdk.images.generate(
        model="gpt-image-2.5-flare-2026-09-08", prompt=PROMPT, size="2048x1152", quality="max"
    )
    assert (newest.size, newest.quality) == ("2048x1152", "max")


async def test_json_nulls_are_absent(echo: Harness) -> None:
    """The SDKs send an explicit None as JSON null."""
    response = await echo.http.post("/v1/images/generations", json={
        "prompt": PROMPT, "model": None, "size": None, "quality": None, "n": None,
        "background": None, "response_format": "b64_json", "moderation": "low", "style": None,
    })  # fmt: skip
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({}, "prompt", "missing_required_parameter"),
        ({"prompt": "x" * 32001}, "prompt", "string_above_max_length"),
        ({"prompt": PROMPT, "model": "dall-e-2", "prompt_len": 1}, "prompt_len", "unknown_parameter"),
        ({"prompt": "x" * 1001, "model": "dall-e-2"}, "prompt", "string_above_max_length"),
        ({"prompt": PROMPT, "model": "dall-e-2", "size": "1024x1536"}, "size", "invalid_value"),
        ({"prompt": PROMPT, "size": "256x256"}, "size", "invalid_value"),
        ({"prompt": PROMPT, "model": "gpt-image-2", "size": "1000x1000"}, "size", "invalid_value"),
        ({"prompt": PROMPT, "n": 11}, "n", "invalid_value"),
        ({"prompt": PROMPT, "quality": "hd"}, "quality", "invalid_value"),
        ({"prompt": PROMPT, "style": "vivid"}, "style", "unknown_parameter"),
        ({"prompt": PROMPT, "input_fidelity": "high"}, "input_fidelity", "unknown_parameter"),
        ({"prompt": PROMPT, "image": "x"}, "image", "unknown_parameter"),
        ({"prompt": PROMPT, "response_format": "url"}, "response_format", "unknown_parameter"),
        ({"prompt": PROMPT, "partial_images": 2}, "partial_images", "invalid_value"),
        ({"prompt": PROMPT, "background": "transparent", "output_format": "jpeg"}, "background", "invalid_value"),
        ({"prompt": PROMPT, "model": "dall-e-3"}, "model", "model_not_found"),
        ({"prompt": PROMPT, "model": "gpt-image-2.5-flare", "output_format": "gif"}, "output_format", "invalid_value"),
        ({"prompt": PROMPT, "model": "gpt-image-2.6-flare", "complexity": "low"}, "complexity", "invalid_value"),
        ({"prompt": PROMPT, "model": "gpt-image-2.5-flare", "svg": {"model": "m"}}, "svg", "invalid_value"),
    ],
)  # fmt: skip
async def test_validation_is_the_edit_validation(
    echo: Harness, body: dict[str, Any], param: str, code: str
) -> None:
    response = await echo.http.post("/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


async def test_dall_e_2_urls_and_open_webui_defaults(echo: Harness) -> None:
    """Open WebUI's default generation: dall-e-2, 512x512, n=1, b64_json for non-gpt-image."""
    body = {"model": "dall-e-2", "prompt": PROMPT, "n": 1, "size": "512x512",
            "response_format": "b64_json"}  # fmt: skip
    response = await echo.http.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"created", "data"}
    url = await echo.sdk.images.generate(model="dall-e-2", prompt=PROMPT, size="256x256")
    assert url.data
    assert url.data[0].url
    fetched = await echo.http.get(url.data[0].url)
    assert fetched.status_code == 200


async def test_not_json_is_a_400(echo: Harness) -> None:
    response = await echo.http.post("/v1/images/generations", data={"prompt": PROMPT})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unsupported_content_type"


async def test_classic_cannot_generate_and_says_how_to(classic: Harness) -> None:
    """Never a 404: the route exists, the engine cannot, and the message says what to serve."""
    with pytest.raises(openai.BadRequestError) as err:
        await classic.sdk.images.generate(prompt=PROMPT)
    assert err.value.status_code == 400
    assert err.value.param == "model"
    assert "'classic' engine, which cannot generate images from text" in err.value.message
    assert "retouch serve --model klein=flux2-klein" in err.value.message


async def test_generation_hint_names_a_served_generative_model(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    models = [{"name": "classic", "engine": "classic"}, {"name": "echo", "engine": "echo"}]
    h: Harness = await harness_factory(make_settings(models=models, default_model="classic"))
    with pytest.raises(openai.BadRequestError) as err:
        await h.sdk.images.generate(model="gpt-image-1", prompt=PROMPT)
    assert "'echo' (echo)" in err.value.message
    assert (await h.sdk.images.generate(model="echo", prompt=PROMPT)).data


async def test_admission_queue_full(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(models=echo_models(delay_s=0.5), queue={"max_queue": 0})
    h: Harness = await harness_factory(settings)
    first = h.http.post("/v1/images/generations", json={"prompt": PROMPT})
    second = h.http.post("/v1/images/generations", json={"prompt": PROMPT})
    answers: list[httpx2.Response] = list(await asyncio.gather(first, second))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 429], [a.text for a in answers]
    busy = next(a for a in answers if a.status_code == 429)
    assert busy.json()["error"]["code"] == "queue_full"
    assert "retry-after" in busy.headers
