"""The newest OpenAI model names and parameters, through the HTTP API with the official SDK:
the family table (``retouch/families.py``), ``response_format`` on every family, an empty
``model``, ``quality`` xhigh/max, ``complexity``, ``markup``, GIF/SVG refusals, and parameters
the prompt contradicts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import openai
import pytest

from retouch.config import Settings
from retouch.families import FAMILIES, OPENAI_MODELS, openai_family
from tests.conftest import Harness, decode_b64, encode_image, gradient, mask_bytes

pytestmark = pytest.mark.anyio

NEWEST = [
    "gpt-image-2.5-sunburst", "gpt-image-2.5-sunburst-2026-09-08", "gpt-image-2.5-flare",
    "gpt-image-2.5-flare-2026-09-08", "gpt-image-2.6-sunburst", "gpt-image-2.6-flare",
    "gpt-image-2", "chatgpt-image-latest",
]  # fmt: skip


def png(pixels: np.ndarray, name: str = "a.png") -> tuple[str, bytes, str]:
    return (name, encode_image(pixels), "image/png")


def pixels_of(b64: str | None) -> np.ndarray:
    return np.asarray(decode_b64(b64 or "").convert("RGB"))


def circle_markup(size: tuple[int, int], center: tuple[int, int], radius: int) -> np.ndarray:
    """A transparent PNG with one red ring drawn on it (a user circling what to edit)."""
    w, h = size
    markup = np.zeros((h, w, 4), np.uint8)
    cv2.circle(markup, center, radius, (255, 0, 0, 255), thickness=3)
    return markup


# -- the table ----------------------------------------------------------------------------------


def test_every_name_has_a_family_and_dated_snapshots_follow_their_base() -> None:
    for name, family in OPENAI_MODELS.items():
        assert family in FAMILIES, name
    assert openai_family("gpt-image-2.6-flare-2027-01-15") == "gpt-image-2.6"
    assert openai_family("gpt-image-1.5-2025-12-16") == "gpt-image"
    assert openai_family("gpt-image-2.6-flare-2026-13-01") is None  # not a date
    assert openai_family("dall-e-2-2026-01-01") is None
    assert openai_family("gpt-image-9") is None


async def test_models_lists_the_newest_names(classic: Harness) -> None:
    listed = {m.id async for m in classic.sdk.models.list()}
    assert set(NEWEST) <= listed
    dated = await classic.sdk.models.retrieve("gpt-image-2.5-flare-2027-02-03")
    assert dated.owned_by == "retouch:classic"
    with pytest.raises(openai.NotFoundError):
        await classic.sdk.models.retrieve("gpt-image-7")


@pytest.mark.parametrize("model", NEWEST)
async def test_newest_names_edit_on_the_default_model(classic: Harness, model: str) -> None:
    # chatgpt-image-latest follows gpt-image-1.5 (fixed sizes), the others take free sizes
    size = "1536x1024" if model == "chatgpt-image-latest" else "1024x768"
    result = await classic.sdk.images.edit(
        model=model, image=png(gradient((64, 48))), prompt="black and white", size=size
    )
    assert result.size == size
    w, h = (int(v) for v in size.split("x"))
    assert decode_b64(result.data[0].b64_json or "").size == (w, h)  # type: ignore[index]


async def test_free_sizes_follow_the_family_rules(classic: Harness) -> None:
    for size in ("1000x1000", "3840x3840", "4096x1024", "512x512"):
        with pytest.raises(openai.BadRequestError) as err:
            await classic.sdk.images.edit(
                model="gpt-image-2.6-flare", image=png(gradient()), prompt="invert", size=size
            )
        assert err.value.param == "size", size


@pytest.mark.parametrize("quality", ["xhigh", "max"])
async def test_quality_xhigh_and_max_are_reported(echo: Harness, quality: str) -> None:
    result = await echo.sdk.images.edit(
        model="gpt-image-2.5-sunburst", image=png(gradient()), prompt="p", quality=quality,  # type: ignore[arg-type]
        size="1024x1024",
    )  # fmt: skip
    assert result.quality == quality
    high = await echo.sdk.images.edit(
        model="gpt-image-2.5-sunburst", image=png(gradient()), prompt="p", quality="high",
        size="1024x1024",
    )  # fmt: skip
    assert result.usage
    assert high.usage
    assert result.usage.output_tokens > high.usage.output_tokens
    assert result.usage.output_tokens_details is not None
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(model="gpt-image-2", image=png(gradient()), prompt="p",
                                   quality=quality)  # type: ignore[arg-type]  # fmt: skip
    assert err.value.param == "quality"


async def test_complexity_names_the_engine_that_cannot(classic: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await classic.sdk.images.edit(
            model="gpt-image-2.6-sunburst", image=png(gradient()), prompt="invert",
            complexity="high",
        )  # fmt: skip
    assert (err.value.param, err.value.code) == ("complexity", "invalid_value")
    assert "'classic' engine" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        await classic.sdk.images.edit(
            model="gpt-image-2.5-flare", image=png(gradient()), prompt="invert", complexity="low"
        )
    assert (err.value.param, err.value.code) == ("complexity", "unknown_parameter")


# -- Open WebUI: response_format and an empty model ------------------------------------------------


@pytest.mark.parametrize("model", ["classic", "gpt-image-1", "gpt-image-2.6-flare", ""])
async def test_response_format_b64_json_on_every_family(classic: Harness, model: str) -> None:
    data = {"model": model, "prompt": "black and white", "response_format": "b64_json"}
    response = await classic.http.post(
        "/v1/images/edits", data=data, files={"image[]": png(gradient())}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["b64_json"]


async def test_url_for_own_names(classic: Harness) -> None:
    result = await classic.sdk.images.edit(
        model="classic", image=png(gradient()), prompt="invert", response_format="url"
    )
    assert result.data
    assert result.data[0].url
    fetched = await classic.http.get(result.data[0].url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"


# -- the response carries what the newest SDKs parse -------------------------------------------------


async def test_user_is_echoed_as_safety_identifier(echo: Harness) -> None:
    result = await echo.sdk.images.edit(model="gpt-image-1.5", image=png(gradient()), prompt="p",
                                        user="end-user-7")  # fmt: skip
    assert result.safety_identifier == "end-user-7"
    result = await echo.sdk.images.edit(model="gpt-image-1.5", image=png(gradient()), prompt="p",
                                        user="u", safety_identifier="s")  # fmt: skip
    assert result.safety_identifier == "s"


# -- markup ------------------------------------------------------------------------------------------


async def test_markup_becomes_the_edit_area_on_a_mask_engine(classic: Harness) -> None:
    """classic takes a mask: the ring and the disk it encloses are edited, every other pixel is
    the input's, byte for byte."""
    source = gradient((96, 64))
    markup = circle_markup((96, 64), (30, 30), 15)
    result = await classic.sdk.images.edit(
        model="gpt-image-2.5-flare", image=png(source), markup=png(markup, "markup.png"),
        prompt="black and white", size="auto",
    )  # fmt: skip
    out = np.asarray(decode_b64(result.data[0].b64_json or "").convert("RGB").resize((96, 64)))  # type: ignore[index]
    # size=auto on the free-size family scales the 96x64 input up; compare at the input size
    # with a second request on the native name, whose auto size keeps the input's
    native = await classic.sdk.images.edit(
        model="classic", image=png(source), markup=png(markup, "markup.png"),
        prompt="black and white",
    )  # fmt: skip
    exact = pixels_of(native.data[0].b64_json)  # type: ignore[index]
    yy, xx = np.mgrid[0:64, 0:96]
    inside = (xx - 30) ** 2 + (yy - 30) ** 2 <= 12**2
    outside = (xx - 30) ** 2 + (yy - 30) ** 2 > 18**2
    assert np.array_equal(exact[outside], source[outside])
    grey = exact[inside]
    assert np.all(grey[:, 0] == grey[:, 1])
    assert np.all(grey[:, 1] == grey[:, 2])
    assert not np.array_equal(source[inside][:, 0], source[inside][:, 1])
    assert out.shape == (64, 96, 3)


async def test_markup_errors(classic: Harness) -> None:
    source = gradient((64, 64))
    ring = circle_markup((64, 64), (32, 32), 10)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"markup": png(ring), "mask": ("m.png", mask_bytes((64, 64), (0, 0, 8, 8)), "image/png")}, "markup"),
        ({"markup": png(circle_markup((32, 32), (10, 10), 5))}, "markup"),
        ({"markup": png(np.zeros((64, 64, 4), np.uint8))}, "markup"),
        ({"markup": png(gradient((64, 64)))}, "markup"),
    ]  # fmt: skip
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            await classic.sdk.images.edit(
                model="gpt-image-2.6-flare", image=png(source), prompt="invert", **extra
            )
        assert err.value.param == param, extra
    with pytest.raises(openai.BadRequestError) as err:
        await classic.sdk.images.edit(model="gpt-image-1.5", image=png(source), prompt="invert",
                                      markup=png(ring))  # fmt: skip
    assert (err.value.param, err.value.code) == ("markup", "unknown_parameter")


# -- GIF and SVG ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gif", "svg"])
async def test_gif_and_svg_name_the_engine(classic: Harness, fmt: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await classic.sdk.images.edit(
            model="gpt-image-2.5-flare", image=png(gradient()), prompt="invert",
            output_format=fmt,  # type: ignore[arg-type]
        )  # fmt: skip
    assert (err.value.param, err.value.code) == ("output_format", "invalid_value")
    assert "'classic' engine, which cannot write" in err.value.message
    assert "none of the engines retouch ships" in err.value.message


async def test_gif_options_need_gif(classic: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await classic.sdk.images.edit(
            model="gpt-image-2.5-flare", image=png(gradient()), prompt="invert", frame_count=4
        )
    assert err.value.param == "frame_count"


# -- a parameter the prompt contradicts ------------------------------------------------------------


async def test_transparent_background_contradicted_by_the_prompt(classic: Harness) -> None:
    images = [png(gradient((64, 64))), png(np.full((64, 64, 3), 90, np.uint8), "b.png")]
    for prompt in ("use the second image as background", "put it on a blue background",
                   "blur the background"):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as err:
            await classic.sdk.images.edit(
                model="gpt-image-1.5", image=images if "second" in prompt else images[:1],
                prompt=prompt, background="transparent",
            )  # fmt: skip
        assert (err.value.param, err.value.code) == ("background", "invalid_value"), prompt
        assert "contradicts the prompt" in err.value.message
    ok = await classic.sdk.images.edit(
        model="gpt-image-1.5", image=images, prompt="use the second image as background",
        background="auto",
    )  # fmt: skip
    assert ok.background == "opaque"


async def test_native_names_take_the_newest_options(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(make_settings())
    result = await harness.sdk.images.edit(
        model="classic", image=png(gradient((40, 30))), prompt="invert", quality="max"
    )
    assert result.quality == "max"
    assert result.size == "40x30"
