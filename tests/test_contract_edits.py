"""Contract tests for ``POST /v1/images/edits`` driven by the official ``openai`` SDK.

The ``echo`` engine returns its first input image fitted to the output size, so every test can
check that the right pixels went in and came back. OpenAI's model names (``gpt-image-1``,
``dall-e-2``, ``gpt-image-2``) alias it with their own validation family.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import time
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from PIL import Image

from retouch.config import Settings
from retouch.engine.echo import EchoEngine
from retouch.engine.types import EditJob, EditOutput, Progress
from tests.conftest import (
    Harness,
    LiveServer,
    decode_b64,
    echo_models,
    encode_image,
    gradient,
    mask_bytes,
    png_bytes,
)
from tests.waiting import async_wait_until

pytestmark = pytest.mark.anyio

PROMPT = "hello world"  # 2 tokens in o200k_base
PROMPT_TOKENS = 2


def png_file(pixels: np.ndarray, name: str = "a.png") -> tuple[str, bytes, str]:
    return (name, encode_image(pixels), "image/png")


def solid(color: tuple[int, ...], size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.full((size[1], size[0], len(color)), color, np.uint8)


def assert_envelope(response: httpx2.Response, status: int, *, param: Any, code: str) -> None:
    """The 4-key OpenAI error envelope with a string code, and a request id header."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["x-request-id"].startswith("req_")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    assert isinstance(error["code"], str)
    assert error["code"] == code
    assert error["param"] == param


class RecordingEcho(EchoEngine):
    """The echo engine, keeping every job it ran (to check what reached the engine)."""

    def __init__(self, name: str = "echo", options: dict[str, Any] | None = None) -> None:
        super().__init__(name, options)
        self.jobs: list[EditJob] = []

    def run(self, job: EditJob, progress: Progress) -> EditOutput:
        self.jobs.append(job)
        return super().run(job, progress)


@pytest.fixture
async def recording(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> tuple[Harness, RecordingEcho]:
    engine = RecordingEcho()
    harness: Harness = await harness_factory(
        make_settings(models=echo_models()), engines={"echo": engine}
    )
    return harness, engine


def output_pixels(b64: str | None) -> np.ndarray:
    assert b64 is not None
    return np.asarray(decode_b64(b64))


# -- one image, several images, spellings ----------------------------------------------------


async def test_one_image_async_sdk(echo: Harness) -> None:
    src = gradient((48, 32))
    result = await echo.sdk.images.edit(model="echo", image=png_file(src), prompt=PROMPT)
    assert len(result.data) == 1
    assert result.size == "48x32"
    assert result.output_format == "png"
    assert result.quality == "high"
    assert result.background == "opaque"
    np.testing.assert_array_equal(output_pixels(result.data[0].b64_json), src)


def test_one_image_sync_sdk(live_server: LiveServer) -> None:
    src = gradient((40, 24))
    with live_server.sdk() as sdk:
        response = sdk.images.with_raw_response.edit(
            model="echo", image=png_file(src), prompt=PROMPT
        )
    assert response.headers["x-request-id"].startswith("req_")
    result = response.parse()
    np.testing.assert_array_equal(output_pixels(result.data[0].b64_json), src)


def test_several_images_sync_sdk(live_server: LiveServer) -> None:
    """The SDK sends a list as repeated ``image[]``; echo returns the first one."""
    first, second = solid((250, 0, 0)), solid((0, 0, 250))
    with live_server.sdk() as sdk:
        result = sdk.images.edit(
            model="gpt-image-1", image=[png_file(first), png_file(second, "b.png")],
            prompt=PROMPT, size="1024x1024", quality="low",
        )  # fmt: skip
    out = output_pixels(result.data[0].b64_json)
    assert out.shape == (1024, 1024, 3)
    assert tuple(out[500, 500]) == (250, 0, 0)
    assert result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 2 * (65 + 129)


RED, GREEN, BLUE = solid((255, 0, 0)), solid((0, 255, 0)), solid((0, 0, 255))


@pytest.mark.parametrize(
    ("names", "first_color"),
    [
        (["image"], (255, 0, 0)),
        (["image", "image", "image"], (255, 0, 0)),
        (["image[]", "image[]"], (255, 0, 0)),
        # indexed spellings are sorted by index, whatever the wire order
        (["image[2]", "image[0]", "image[1]"], (0, 255, 0)),
        (["image.1", "image.0"], (0, 255, 0)),
        (["image.2.items", "image.1.items", "image.0.items"], (0, 0, 255)),
    ],
)
async def test_image_array_spellings(
    recording: tuple[Harness, RecordingEcho], names: list[str], first_color: tuple[int, ...]
) -> None:
    harness, engine = recording
    colors = [RED, GREEN, BLUE]
    files = [
        (name, (f"{i}.png", encode_image(colors[i]), "image/png")) for i, name in enumerate(names)
    ]
    response = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT, "model": "echo"}, files=files
    )
    assert response.status_code == 200, response.text
    out = output_pixels(response.json()["data"][0]["b64_json"])
    assert tuple(out[0, 0]) == first_color
    assert len(engine.jobs[-1].images) == len(names)


@pytest.mark.parametrize(
    "names", [["image", "image[1]"], ["image[]", "image.0"], ["image[0]", "image[]"]]
)
async def test_mixed_indexed_and_unindexed_spellings_are_refused(
    echo: Harness, names: list[str]
) -> None:
    files = [(n, (f"{i}.png", png_bytes(), "image/png")) for i, n in enumerate(names)]
    response = await echo.http.post("/v1/images/edits", data={"prompt": PROMPT}, files=files)
    assert_envelope(response, 400, param="image", code="invalid_value")


async def test_text_fields_after_files_and_empty_file_part(echo: Harness) -> None:
    """Field order does not matter; an empty, unnamed file part (a browser form with nothing
    selected) is ignored."""
    boundary = "b0undary"
    parts = [
        ("image", "a.png", png_bytes((16, 16))),
        ("image", "", b""),
        ("prompt", None, PROMPT.encode()),
        ("model", None, b"echo"),
    ]
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    response = await echo.http.post(
        "/v1/images/edits", content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["size"] == "16x16"


# -- mask ------------------------------------------------------------------------------------


async def test_mask_reaches_engine_inverted(recording: tuple[Harness, RecordingEcho]) -> None:
    """OpenAI masks mark the edit area with alpha 0; engines get 255 there."""
    harness, engine = recording
    result = await harness.sdk.images.edit(
        model="gpt-image-1", image=png_file(gradient((64, 64))),
        mask=("m.png", mask_bytes((64, 64), (8, 8, 24, 40)), "image/png"), prompt=PROMPT,
        quality="low",
    )  # fmt: skip
    assert result.data[0].b64_json
    mask = engine.jobs[-1].mask
    assert mask is not None
    assert mask.shape == (64, 64)
    assert (mask[8:40, 8:24] == 255).all()
    assert mask.sum() == 255 * 16 * 32


async def test_mask_applies_to_first_of_several_images(
    recording: tuple[Harness, RecordingEcho],
) -> None:
    harness, engine = recording
    await harness.sdk.images.edit(
        model="echo", image=[png_file(gradient((64, 32))), png_file(gradient((20, 20)), "b.png")],
        mask=("m.png", mask_bytes((64, 32), (0, 0, 8, 8)), "image/png"), prompt=PROMPT,
    )  # fmt: skip
    mask = engine.jobs[-1].mask
    assert mask is not None
    assert mask.shape == (32, 64)


# -- output formats, compression, transparency -----------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
async def test_output_formats(echo: Harness, fmt: str, pil_format: str) -> None:
    src = gradient((64, 48))
    result = await echo.sdk.images.edit(
        model="gpt-image-1", image=png_file(src), prompt=PROMPT, output_format=fmt,  # type: ignore[arg-type]
        size="1536x1024", quality="low",
    )  # fmt: skip
    assert result.output_format == fmt
    assert result.size == "1536x1024"
    image = decode_b64(result.data[0].b64_json or "")
    assert image.format == pil_format
    assert image.size == (1536, 1024)
    assert image.mode == "RGB"
    assert not image.info.get("exif")
    assert not image.info.get("icc_profile")


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
async def test_output_compression_changes_the_encoding(echo: Harness, fmt: str) -> None:
    rng = np.random.default_rng(1)
    noisy = rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)
    sizes = []
    for compression in (5, 95):
        result = await echo.sdk.images.edit(
            model="echo", image=png_file(noisy), prompt=PROMPT, output_format=fmt,  # type: ignore[arg-type]
            output_compression=compression,
        )  # fmt: skip
        sizes.append(len(base64.b64decode(result.data[0].b64_json or "")))
    assert sizes[0] < sizes[1] / 2


@pytest.mark.parametrize("value", [-1, 101])
async def test_output_compression_out_of_range(echo: Harness, value: int) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-1", image=png_file(RED), prompt=PROMPT, output_format="jpeg",
            output_compression=value,
        )  # fmt: skip
    assert err.value.param == "output_compression"
    assert err.value.code == "invalid_value"


def rgba_with_hole(size: tuple[int, int] = (64, 64)) -> np.ndarray:
    rgba = np.dstack([gradient(size), np.full(size[::-1], 255, np.uint8)])
    rgba[10:30, 10:30, 3] = 0
    return rgba


@pytest.mark.parametrize(
    ("fmt", "background"), [("png", "transparent"), ("webp", "transparent"), ("png", "auto")]
)
async def test_transparent_output_keeps_alpha(echo: Harness, fmt: str, background: str) -> None:
    src = rgba_with_hole()
    result = await echo.sdk.images.edit(
        model="gpt-image-1", image=png_file(src), prompt=PROMPT, output_format=fmt,  # type: ignore[arg-type]
        background=background, size="1024x1024", quality="low",  # type: ignore[arg-type]
    )  # fmt: skip
    assert result.background == "transparent"
    image = decode_b64(result.data[0].b64_json or "")
    assert image.mode == "RGBA"
    alpha = np.asarray(image)[:, :, 3]
    assert alpha[300, 300] == 0  # inside the (scaled) hole
    assert alpha[800, 800] == 255


async def test_opaque_background_flattens(echo: Harness) -> None:
    result = await echo.sdk.images.edit(
        model="echo", image=png_file(rgba_with_hole()), prompt=PROMPT, background="opaque"
    )
    assert result.background == "opaque"
    image = decode_b64(result.data[0].b64_json or "")
    assert image.mode == "RGB"
    assert tuple(np.asarray(image)[20, 20]) == (255, 255, 255)  # the hole, on white


async def test_jpeg_with_transparent_background_is_refused(echo: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-1", image=png_file(RED), prompt=PROMPT, output_format="jpeg",
            background="transparent",
        )  # fmt: skip
    assert err.value.param == "background"
    assert err.value.code == "invalid_value"
    assert err.value.request_id
    assert err.value.request_id.startswith("req_")


# -- n ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 10])
async def test_n_images(echo: Harness, n: int) -> None:
    result = await echo.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT, n=n)
    assert len(result.data) == n
    assert result.usage is not None
    one = await echo.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    assert one.usage is not None
    assert result.usage.output_tokens == n * one.usage.output_tokens


@pytest.mark.parametrize("n", [0, 11])
async def test_n_out_of_range(echo: Harness, n: int) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(model="gpt-image-1", image=png_file(RED), prompt=PROMPT, n=n)
    assert (err.value.param, err.value.code) == ("n", "invalid_value")


async def test_n_not_an_integer(echo: Harness) -> None:
    response = await echo.http.post(
        "/v1/images/edits", data={"prompt": PROMPT, "n": "two"},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )  # fmt: skip
    assert_envelope(response, 400, param="n", code="invalid_type")


# -- size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((64, 64), "1024x1024"),
        ((96, 64), "1536x1024"),
        ((64, 96), "1024x1536"),
        ((160, 100), "1536x1024"),  # 1.6:1 -> closest is 3:2
        ((100, 90), "1024x1024"),
        ((300, 100), "1536x1024"),
    ],
)
async def test_size_auto_gpt_image_picks_closest_fixed_size(
    echo: Harness, source: tuple[int, int], expected: str
) -> None:
    result = await echo.sdk.images.edit(
        model="gpt-image-1", image=png_file(gradient(source)), prompt=PROMPT, size="auto",
        quality="low",
    )  # fmt: skip
    assert result.size == expected
    w, h = (int(v) for v in expected.split("x"))
    assert decode_b64(result.data[0].b64_json or "").size == (w, h)


async def test_size_omitted_is_auto_for_gpt_image(echo: Harness) -> None:
    result = await echo.sdk.images.edit(
        model="gpt-image-1", image=png_file(gradient((64, 96))), prompt=PROMPT, quality="low"
    )
    assert result.size == "1024x1536"


@pytest.mark.parametrize("size", ["256x256", "1792x1024", "1024x1023", "big"])
async def test_size_not_offered_by_gpt_image(echo: Harness, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-1",
            image=png_file(RED),
            prompt=PROMPT,
            size=size,  # type: ignore[arg-type]
        )
    assert (err.value.param, err.value.code) == ("size", "invalid_value")


@pytest.mark.parametrize(
    ("source", "aspect"), [((64, 48), 4 / 3), ((40, 120), 1 / 3), ((32, 32), 1.0)]
)
async def test_size_auto_gpt_image_2_free_size(
    echo: Harness, source: tuple[int, int], aspect: float
) -> None:
    result = await echo.sdk.images.edit(
        model="gpt-image-2", image=png_file(gradient(source)), prompt=PROMPT, quality="low"
    )
    assert result.size is not None
    w, h = (int(v) for v in result.size.split("x"))
    assert w % 16 == 0
    assert h % 16 == 0
    assert 655_360 <= w * h <= 8_294_400
    assert max(w, h) <= 3840
    assert max(w, h) <= 3 * min(w, h)
    assert abs(w / h - aspect) / aspect < 0.05
    assert decode_b64(result.data[0].b64_json or "").size == (w, h)


async def test_gpt_image_2_explicit_free_size(echo: Harness) -> None:
    result = await echo.sdk.images.edit(
        model="gpt-image-2",
        image=png_file(RED),
        prompt=PROMPT,
        size="1024x640",
        quality="low",  # type: ignore[arg-type]
    )
    assert result.size == "1024x640"
    assert decode_b64(result.data[0].b64_json or "").size == (1024, 640)


@pytest.mark.parametrize(
    "size",
    [
        "1000x1000",  # not multiples of 16
        "3072x768",  # 4:1
        "768x768",  # 589,824 px: below the minimum
        "3856x2160",  # edge above 3840
        "3840x2176",  # 8,355,840 px: above the maximum
        "0x1024",
        "1024*1024",
    ],
)
async def test_gpt_image_2_size_bounds(echo: Harness, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-2",
            image=png_file(RED),
            prompt=PROMPT,
            size=size,  # type: ignore[arg-type]
        )
    assert (err.value.param, err.value.code) == ("size", "invalid_value")


@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024"])
async def test_dall_e_2_sizes(echo: Harness, size: str) -> None:
    result = await echo.sdk.images.edit(
        model="dall-e-2", image=png_file(rgba_with_hole()), prompt=PROMPT, size=size,  # type: ignore[arg-type]
        response_format="b64_json",
    )  # fmt: skip
    side = int(size.split("x")[0])
    assert decode_b64(result.data[0].b64_json or "").size == (side, side)
    assert result.usage is None  # dall-e-2 reports no usage
    assert result.size is None
    assert result.output_format is None


@pytest.mark.parametrize("size", ["1536x1024", "auto", "128x128"])
async def test_dall_e_2_refuses_other_sizes(echo: Harness, size: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="dall-e-2",
            image=png_file(rgba_with_hole()),
            prompt=PROMPT,
            size=size,  # type: ignore[arg-type]
        )
    assert (err.value.param, err.value.code) == ("size", "invalid_value")


async def test_dall_e_2_needs_square_png_with_alpha_or_mask(echo: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(model="dall-e-2", image=png_file(gradient((64, 32))), prompt="x")
    assert err.value.param == "image"
    with pytest.raises(openai.BadRequestError) as err:  # RGB, no mask: nothing to edit
        await echo.sdk.images.edit(model="dall-e-2", image=png_file(gradient((64, 64))), prompt="x")
    assert err.value.param == "image"
    jpeg = ("a.jpg", encode_image(gradient((64, 64)), "JPEG"), "image/jpeg")
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(model="dall-e-2", image=jpeg, prompt="x")
    assert err.value.param == "image"
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="dall-e-2", image=[png_file(rgba_with_hole()), png_file(rgba_with_hole())],
            prompt="x",
        )  # fmt: skip
    assert err.value.code == "too_many_images"
    # an RGB square with a mask is fine
    result = await echo.sdk.images.edit(
        model="dall-e-2", image=png_file(gradient((64, 64))),
        mask=("m.png", mask_bytes((64, 64), (0, 0, 8, 8)), "image/png"), prompt="x", size="256x256",
        response_format="b64_json",
    )  # fmt: skip
    assert result.data[0].b64_json


# -- response_format -------------------------------------------------------------------------


async def test_dall_e_2_url_by_default_and_the_link_serves_the_image(echo: Harness) -> None:
    src = rgba_with_hole()
    result = await echo.sdk.images.edit(
        model="dall-e-2", image=png_file(src), prompt=PROMPT, size="256x256"
    )
    url = result.data[0].url
    assert url is not None
    assert url.startswith("http://retouch.test/")
    assert result.data[0].b64_json is None
    fetched = await echo.http.get(url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"
    assert fetched.headers["x-request-id"].startswith("req_")
    image = Image.open(io.BytesIO(fetched.content))
    assert image.size == (256, 256)


async def test_tampered_and_expired_links(echo: Harness) -> None:
    result = await echo.sdk.images.edit(
        model="dall-e-2", image=png_file(rgba_with_hole()), prompt=PROMPT, size="256x256",
        response_format="url",
    )  # fmt: skip
    url = httpx2.URL(result.data[0].url or "")
    key = url.path.rsplit("/", 1)[1]
    expires = int(url.params["expires"])
    signature = url.params["sig"]
    tampered = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    response = await echo.http.get(url.copy_merge_params({"sig": tampered}))
    assert_envelope(response, 403, param=None, code="invalid_signature")
    response = await echo.http.get(url.copy_merge_params({"expires": str(expires + 1)}))
    assert_envelope(response, 403, param=None, code="invalid_signature")
    with pytest.raises(openai.PermissionDeniedError) as denied:  # the SDK's class for 403
        await echo.sdk.get(
            f"/blobs/{key}", cast_to=object,
            options={"params": {"expires": expires, "sig": tampered}},
        )  # fmt: skip
    assert denied.value.code == "invalid_signature"
    past = int(time.time()) - 10
    signer = echo.services.signer
    response = await echo.http.get(
        url.copy_merge_params({"expires": str(past), "sig": signer.sign(key, past)})
    )
    assert response.status_code == 404
    assert_envelope(response, 404, param=None, code=response.json()["error"]["code"])


async def test_dall_e_2_b64_json(echo: Harness) -> None:
    result = await echo.sdk.images.edit(
        model="dall-e-2", image=png_file(rgba_with_hole()), prompt=PROMPT, size="512x512",
        response_format="b64_json",
    )  # fmt: skip
    assert result.data[0].url is None
    assert decode_b64(result.data[0].b64_json or "").size == (512, 512)


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-2", "gpt-image-2.6-flare"])
async def test_response_format_is_unknown_for_gpt_families(echo: Harness, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model=model, image=png_file(RED), prompt=PROMPT, response_format="url"
        )
    assert (err.value.param, err.value.code) == ("response_format", "unknown_parameter")


async def test_response_format_url_for_gpt_when_allowed(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(
        make_settings(models=echo_models(), storage={"allow_url_for_gpt_models": True})
    )
    result = await harness.sdk.images.edit(
        model="gpt-image-1", image=png_file(RED), prompt=PROMPT, response_format="url",
        output_format="webp", quality="low",
    )  # fmt: skip
    url = result.data[0].url
    assert url is not None
    fetched = await harness.http.get(url)
    assert fetched.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(fetched.content)).format == "WEBP"
    b64 = await harness.sdk.images.edit(
        model="gpt-image-1", image=png_file(RED), prompt=PROMPT, response_format="b64_json",
        quality="low",
    )  # fmt: skip
    assert b64.data[0].b64_json


# -- JSON body -------------------------------------------------------------------------------


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


async def test_json_body_with_data_urls(recording: tuple[Harness, RecordingEcho]) -> None:
    harness, engine = recording
    body = {
        "model": "gpt-image-1",
        "prompt": PROMPT,
        "images": [
            {"image_url": data_url(encode_image(GREEN))},
            {"image_url": data_url(encode_image(RED, "WEBP", lossless=True), "image/webp")},
        ],
        "mask": {"image_url": data_url(mask_bytes((32, 32), (0, 0, 4, 4)))},
        "n": 2,
        "quality": "low",
        "size": "1024x1024",
        "output_format": "jpeg",
        "output_compression": 80,
        "moderation": "low",
        "stream": False,
    }
    response = await harness.http.post("/v1/images/edits", json=body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert len(doc["data"]) == 2
    assert doc["output_format"] == "jpeg"
    assert len(engine.jobs[-1].images) == 2
    assert engine.jobs[-1].mask is not None
    assert doc["usage"]["input_tokens_details"]["image_tokens"] == 2 * 194


@pytest.mark.parametrize(
    ("images", "param", "code"),
    [
        ([{"file_id": "file-abc123"}], "images[0]", "unsupported_file_id"),
        ([{"image_url": "ftp://example.com/a.png"}], "images[0].image_url", "invalid_image_url"),
        ([{"image_url": "data:image/png;base64,%%%"}], "images[0].image_url", "invalid_value"),
        ([{"image_url": "data:image/png,plain"}], "images[0].image_url", "invalid_value"),
        ([{"image_url": "x", "file_id": "y"}], "images[0]", "unsupported_file_id"),
        ("not-a-list", "images", "invalid_value"),
        ([], "images", "invalid_value"),
    ],
)
async def test_json_body_bad_image_refs(echo: Harness, images: Any, param: str, code: str) -> None:
    response = await echo.http.post(
        "/v1/images/edits", json={"prompt": PROMPT, "model": "gpt-image-1", "images": images}
    )
    assert_envelope(response, 400, param=param, code=code)


async def test_json_body_other_errors(echo: Harness) -> None:
    ok = [{"image_url": data_url(png_bytes())}]
    response = await echo.http.post(
        "/v1/images/edits", json={"prompt": PROMPT, "images": ok, "response_format": "url"}
    )
    assert_envelope(response, 400, param="response_format", code="unknown_parameter")
    response = await echo.http.post(
        "/v1/images/edits", json={"prompt": PROMPT, "images": ok, "model": "dall-e-2"}
    )
    assert_envelope(response, 400, param="model", code="invalid_value")
    response = await echo.http.post("/v1/images/edits", json={"prompt": PROMPT, "image": ok})
    assert_envelope(response, 400, param="image", code="unknown_parameter")
    response = await echo.http.post("/v1/images/edits", json={"prompt": PROMPT})
    assert_envelope(response, 400, param="image", code="missing_required_parameter")
    response = await echo.http.post(
        "/v1/images/edits", json={"prompt": PROMPT, "images": ok, "n": [1]}
    )
    assert_envelope(response, 400, param="n", code="invalid_type")
    response = await echo.http.post(
        "/v1/images/edits", json={"prompt": PROMPT, "images": ok, "svg": {"model": "x"}}
    )
    assert_envelope(response, 400, param="svg[model]", code="unknown_parameter")
    response = await echo.http.post(
        "/v1/images/edits", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400, param=None, code="invalid_json")
    response = await echo.http.post(
        "/v1/images/edits", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert_envelope(response, 400, param=None, code="invalid_json")


async def test_unsupported_content_type(echo: Harness) -> None:
    response = await echo.http.post(
        "/v1/images/edits", content=b"prompt=x", headers={"content-type": "text/plain"}
    )
    assert_envelope(response, 400, param=None, code="unsupported_content_type")


# -- unknown and family-specific parameters --------------------------------------------------


async def test_unknown_parameter(echo: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-1", image=png_file(RED), prompt=PROMPT, extra_body={"colour": "red"}
        )
    assert (err.value.param, err.value.code) == ("colour", "unknown_parameter")
    assert err.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("model", "params", "param"),
    [
        ("dall-e-2", {"output_format": "png"}, "output_format"),
        ("dall-e-2", {"background": "opaque"}, "background"),
        ("dall-e-2", {"stream": True}, "stream"),
        ("dall-e-2", {"input_fidelity": "low"}, "input_fidelity"),
        ("gpt-image-2", {"input_fidelity": "high"}, "input_fidelity"),
        ("gpt-image-1", {"response_format": "url"}, "response_format"),
        ("gpt-image-1", {"extra_body": {"svg": {"model": "x"}}}, "svg[model]"),
        ("gpt-image-1", {"extra_body": {"complexity": "low"}}, "complexity"),
    ],
)
async def test_parameter_not_taken_by_the_family(
    echo: Harness, model: str, params: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model=model, image=png_file(rgba_with_hole()), prompt=PROMPT, **params
        )
    assert (err.value.param, err.value.code) == (param, "unknown_parameter")


async def test_markup_file_is_an_unknown_parameter(echo: Harness) -> None:
    response = await echo.http.post(
        "/v1/images/edits", data={"prompt": PROMPT},
        files=[("image", ("a.png", png_bytes(), "image/png")), ("markup", ("m.png", png_bytes(), "image/png"))],
    )  # fmt: skip
    assert_envelope(response, 400, param="markup", code="unknown_parameter")


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"quality": "ultra"}, "quality", "invalid_value"),
        ({"quality": "standard"}, "quality", "invalid_value"),
        ({"output_format": "gif"}, "output_format", "invalid_value"),
        ({"background": "green"}, "background", "invalid_value"),
        ({"input_fidelity": "max"}, "input_fidelity", "invalid_value"),
        ({"stream": "yes"}, "stream", "invalid_type"),
        ({"stream": "true", "partial_images": "4"}, "partial_images", "invalid_value"),
        ({"partial_images": "2"}, "partial_images", "invalid_value"),
        ({"moderation": "none"}, "moderation", "invalid_value"),
        ({"model": "no-such-model"}, "model", "model_not_found"),
        ({"prompt": "x" * 32001}, "prompt", "string_above_max_length"),
        ({"prompt": "x", "prompt2": "y"}, "prompt2", "unknown_parameter"),
    ],
)
async def test_invalid_values(echo: Harness, fields: dict[str, str], param: str, code: str) -> None:
    data = {"prompt": PROMPT, "model": "gpt-image-1", **fields}
    response = await echo.http.post(
        "/v1/images/edits", data=data, files={"image": ("a.png", png_bytes(), "image/png")}
    )
    assert_envelope(response, 400, param=param, code=code)


async def test_missing_prompt_and_image(echo: Harness) -> None:
    response = await echo.http.post(
        "/v1/images/edits", data={"model": "gpt-image-1"},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )  # fmt: skip
    assert_envelope(response, 400, param="prompt", code="missing_required_parameter")
    response = await echo.http.post("/v1/images/edits", files={"prompt": (None, PROMPT)})
    assert_envelope(response, 400, param="image", code="missing_required_parameter")
    response = await echo.http.post(
        "/v1/images/edits", files={"prompt": (None, PROMPT), "image": (None, "not a file")}
    )
    assert_envelope(response, 400, param="image", code="invalid_type")


async def test_dall_e_2_prompt_limit(echo: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="dall-e-2", image=png_file(rgba_with_hole()), prompt="y" * 1001
        )
    assert (err.value.param, err.value.code) == ("prompt", "string_above_max_length")


async def test_gpt_image_1_mini_input_fidelity(echo: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-1-mini", image=png_file(RED), prompt=PROMPT, input_fidelity="high"
        )
    assert (err.value.param, err.value.code) == ("input_fidelity", "invalid_value")


# -- status codes, request ids, body caps ----------------------------------------------------


async def test_request_id_on_every_response(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    harness: Harness = await harness_factory(
        make_settings(models=[*echo_models(), *failing_model()])
    )
    ok = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT, "model": "echo"},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )  # fmt: skip
    assert ok.status_code == 200
    assert ok.headers["x-request-id"].startswith("req_")
    bad = await harness.http.post("/v1/images/edits", files={"prompt": (None, PROMPT)})
    assert_envelope(bad, 400, param="image", code="missing_required_parameter")
    route = await harness.http.get("/v1/nothing-here")
    assert_envelope(route, 404, param=None, code="not_found")
    method = await harness.http.get("/v1/images/edits")
    assert_envelope(method, 405, param=None, code="method_not_allowed")
    engine_error = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT, "model": "broken"},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )  # fmt: skip
    assert_envelope(engine_error, 500, param=None, code="engine_error")

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(harness.services.edits, "prepare", explode)
    crash = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )  # fmt: skip
    assert_envelope(crash, 500, param=None, code="internal_error")
    ids = {r.headers["x-request-id"] for r in (ok, bad, route, method, engine_error, crash)}
    assert len(ids) == 6


def failing_model() -> list[Any]:
    from retouch.config import ModelSettings

    return [ModelSettings(name="broken", engine="echo", family="native", options={"fail": True})]


async def test_engine_failure_raises_internal_server_error(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(make_settings(models=failing_model()))
    with pytest.raises(openai.InternalServerError) as err:
        await harness.sdk.images.edit(model="broken", image=png_file(RED), prompt=PROMPT)
    assert err.value.code == "engine_error"
    assert err.value.request_id
    assert err.value.request_id.startswith("req_")


async def test_engine_failure_mid_stream_is_an_error_event_the_sdk_raises(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(make_settings(models=failing_model()))
    stream = await harness.sdk.images.edit(
        model="broken", image=png_file(RED), prompt=PROMPT, stream=True, partial_images=1
    )
    seen: list[str] = []

    async def drain() -> None:
        async for event in stream:
            seen.append(event.type)

    with pytest.raises(openai.APIError) as err:
        await drain()
    assert seen == ["image_edit.partial_image"]  # the partial went out before the failure
    assert err.value.code == "engine_error"


async def test_queue_full_raises_rate_limit_error(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(
        make_settings(models=echo_models(delay_s=2.0, steps=40), queue={"max_queue": 0})
    )
    worker = harness.services.workers["echo"]
    first = asyncio.ensure_future(
        harness.sdk.images.edit(model="echo", image=png_file(RED), prompt=PROMPT)
    )
    await async_wait_until(lambda: worker.running, timeout=5)
    assert worker.running == 1
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as err:
            await harness.sdk.images.edit(
                model="echo", image=png_file(RED), prompt=PROMPT, stream=stream
            )
        assert int(err.value.response.headers["retry-after"]) >= 1
        assert err.value.request_id
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first


async def test_not_found_via_sdk(echo: Harness) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await echo.sdk.models.retrieve("no-such-model")
    assert (err.value.param, err.value.code) == ("model", "model_not_found")


async def test_body_over_the_cap_is_413(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(
        make_settings(models=echo_models(), limits={"max_body_bytes": 20_000})
    )
    rng = np.random.default_rng(2)
    big = encode_image(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
    assert len(big) > 20_000
    with pytest.raises(openai.APIStatusError) as err:
        await harness.sdk.images.edit(
            model="echo", image=("a.png", big, "image/png"), prompt=PROMPT
        )
    assert err.value.status_code == 413
    assert err.value.code == "request_too_large"

    async def chunks() -> Any:  # no Content-Length: the cap must hold while streaming
        boundary = b"--xyz\r\n"
        yield boundary + b'Content-Disposition: form-data; name="prompt"\r\n\r\nx\r\n'
        yield boundary + b'Content-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
        for _ in range(10):
            yield b"\0" * 4096

    response = await harness.http.post(
        "/v1/images/edits", content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )  # fmt: skip
    assert "content-length" not in response.request.headers
    assert_envelope(response, 413, param=None, code="request_too_large")


async def test_file_part_over_its_cap_is_413(
    harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    harness: Harness = await harness_factory(
        make_settings(
            models=echo_models(), limits={"max_image_bytes": 10_000, "max_mask_bytes": 5_000}
        )
    )
    rng = np.random.default_rng(3)
    big = encode_image(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    small = png_bytes((8, 8))
    response = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT},
        files=[("image[]", ("a.png", small, "image/png")), ("image[]", ("b.png", big, "image/png"))],
    )  # fmt: skip
    assert_envelope(response, 413, param="image[1]", code="file_too_large")
    response = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT}, files={"image": ("a.png", big, "image/png")}
    )
    assert_envelope(response, 413, param="image", code="file_too_large")
    big_mask = encode_image(rng.integers(0, 255, (64, 64, 4), dtype=np.uint8))
    response = await harness.http.post(
        "/v1/images/edits", data={"prompt": PROMPT},
        files={"image": ("a.png", small, "image/png"), "mask": ("m.png", big_mask, "image/png")},
    )  # fmt: skip
    assert_envelope(response, 413, param="mask", code="file_too_large")


# -- usage -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "source", "fields", "image_tokens", "output_tokens"),
    [
        ("gpt-image-1", (1024, 1024), {"quality": "high", "size": "1024x1024"}, 194, 4160),
        ("gpt-image-1", (1024, 1536), {"quality": "high"}, 323, 6240),
        ("gpt-image-1", (1536, 1024), {"quality": "medium"}, 323, 1568),
        ("gpt-image-1", (1024, 1024), {"quality": "low", "input_fidelity": "high"}, 4354, 272),
        ("gpt-image-1", (1024, 1536), {"quality": "low", "input_fidelity": "high"}, 6563, 408),
        ("gpt-image-1", (1024, 1024), {}, 194, 4160),  # quality auto -> high, size auto
        ("gpt-image-2", (1024, 1024), {"quality": "high", "size": "1024x1024"}, 4354, 7024),
        ("gpt-image-2", (1024, 1024), {"quality": "high", "size": "1536x1024"}, 4354, 5488),
        ("gpt-image-2", (1024, 1024), {"quality": "low", "size": "1024x1024"}, 4354, 196),
    ],
)
async def test_usage_matches_the_contract(
    echo: Harness, model: str, source: tuple[int, int], fields: dict[str, str],
    image_tokens: int, output_tokens: int,
) -> None:  # fmt: skip
    image = png_bytes(source, color=(10, 20, 30))
    response = await echo.http.post(
        "/v1/images/edits", data={"prompt": PROMPT, "model": model, **fields},
        files={"image": ("a.png", image, "image/png")},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage == {
        "input_tokens": PROMPT_TOKENS + image_tokens,
        "input_tokens_details": {"text_tokens": PROMPT_TOKENS, "image_tokens": image_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
        "total_tokens": PROMPT_TOKENS + image_tokens + output_tokens,
    }


async def test_usage_sums_input_images_and_ignores_the_mask(echo: Harness) -> None:
    result = await echo.sdk.images.edit(
        model="gpt-image-1",
        image=[("a.png", png_bytes((1024, 1024)), "image/png"), ("b.png", png_bytes((1024, 1536)), "image/png")],
        mask=("m.png", mask_bytes((1024, 1024), (0, 0, 10, 10)), "image/png"),
        prompt=PROMPT, quality="low", size="1024x1024", n=3,
    )  # fmt: skip
    assert result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 194 + 323
    assert result.usage.output_tokens == 3 * 272


# -- streaming -------------------------------------------------------------------------------


async def test_stream_async_event_order_and_usage(echo: Harness) -> None:
    src = gradient((1024, 1024))
    stream = await echo.sdk.images.edit(
        model="gpt-image-1", image=png_file(src), prompt=PROMPT, stream=True, partial_images=2,
        quality="high", size="1024x1024",
    )  # fmt: skip
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_edit.partial_image", "image_edit.partial_image", "image_edit.completed",
    ]  # fmt: skip
    partials, completed = events[:2], events[2]
    assert [e.partial_image_index for e in partials] == [0, 1]  # type: ignore[union-attr]
    for event in events:
        assert (event.size, event.quality, event.output_format) == ("1024x1024", "high", "png")
        assert event.background == "opaque"
        assert event.created_at > 0
    final = output_pixels(completed.b64_json)
    np.testing.assert_array_equal(final, src)
    for partial in partials:  # real intermediate images, not copies of the final one
        pixels = output_pixels(partial.b64_json)
        assert pixels.shape == final.shape
        assert not np.array_equal(pixels, final)
    usage = completed.usage  # type: ignore[union-attr]
    assert usage.output_tokens == 4160 + 2 * 100
    assert usage.input_tokens_details.image_tokens == 194
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


async def test_stream_without_partials_sends_one_completed_event(echo: Harness) -> None:
    stream = await echo.sdk.images.edit(
        model="gpt-image-1", image=png_file(RED), prompt=PROMPT, stream=True, quality="low",
        output_format="webp",
    )  # fmt: skip
    events = [event async for event in stream]
    assert [e.type for e in events] == ["image_edit.completed"]
    assert events[0].output_format == "webp"
    assert decode_b64(events[0].b64_json).format == "WEBP"
    assert events[0].usage.output_tokens == 272  # type: ignore[union-attr]


async def test_stream_n_2_sends_a_completed_event_per_image(echo: Harness) -> None:
    stream = await echo.sdk.images.edit(
        model="echo", image=png_file(RED), prompt=PROMPT, stream=True, n=2, partial_images=1
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_edit.partial_image", "image_edit.completed", "image_edit.completed",
    ]  # fmt: skip


async def test_stream_raw_framing(echo: Harness) -> None:
    response = await echo.http.post(
        "/v1/images/edits",
        data={"prompt": PROMPT, "model": "gpt-image-1", "stream": "true", "partial_images": "1", "quality": "low"},
        files={"image": ("a.png", png_bytes(), "image/png")},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"].startswith("req_")
    blocks = [b for b in response.text.split("\n\n") if b.strip()]
    assert [b.splitlines()[0] for b in blocks] == [
        "event: image_edit.partial_image", "event: image_edit.completed",
    ]  # fmt: skip
    assert "[DONE]" not in response.text


def test_stream_sync_sdk_over_a_socket(live_server: LiveServer) -> None:
    with live_server.sdk() as sdk:
        stream = sdk.images.edit(
            model="gpt-image-1", image=png_file(gradient((96, 64))), prompt=PROMPT, stream=True,
            partial_images=3, quality="medium",
        )  # fmt: skip
        events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image"] * 3 + ["image_edit.completed"]
    assert [e.partial_image_index for e in events[:3]] == [0, 1, 2]  # type: ignore[union-attr]
    assert events[-1].size == "1536x1024"
    assert events[-1].usage.output_tokens == 1568 + 300  # type: ignore[union-attr]


async def test_stream_errors_before_the_first_byte_are_plain_4xx(echo: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await echo.sdk.images.edit(
            model="gpt-image-1", image=("a.png", b"not an image", "image/png"), prompt=PROMPT,
            stream=True,
        )  # fmt: skip
    assert (err.value.param, err.value.code) == ("image", "invalid_image_file")


# -- models and health -----------------------------------------------------------------------


async def test_models_list(echo: Harness) -> None:
    page = await echo.sdk.models.list()
    ids = [m.id for m in page.data]
    assert ids[0] == "echo"
    assert {"gpt-image-1", "gpt-image-1.5", "gpt-image-2", "dall-e-2"} <= set(ids)
    model = await echo.sdk.models.retrieve("gpt-image-1")
    assert model.id == "gpt-image-1"
    assert model.object == "model"


async def test_health_and_readiness(echo: Harness) -> None:
    health = await echo.http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert health.headers["x-request-id"].startswith("req_")
    ready = await echo.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert "echo" in ready.json()["models"]
