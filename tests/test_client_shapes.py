"""The requests real clients build, replayed field for field over a real socket
(``shared/docs/clients.md`` §1-4): Open WebUI (aiohttp), LibreChat (axios + npm form-data; the
openai Node SDK for generations), LobeChat (the openai Node SDK), n8n (npm form-data, JSON).

Each replay either succeeds on a default ``retouch serve`` (the classic engine) or fails exactly
as OpenAI would, as ``docs/contract-notes.md`` ("Clients") lists. Generations succeed where a
generative engine serves the default model (``echo`` stands in for one here); on the default
server they are the 400 that says how to serve one. The npm form-data body is rebuilt byte for
byte (its boundary style, part headers and order), since installing axios only to send the same
bytes would test axios, not retouch.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import shutil
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
from PIL import Image

from tests.conftest import echo_models, encode_image, gradient
from tests.live import LiveServer

pytestmark = pytest.mark.live

PHOTO = encode_image(gradient((96, 64)))
PHOTO_JPEG = encode_image(gradient((96, 64)), "JPEG", quality=95)


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """``retouch serve`` with its defaults: the classic engine, open mode on loopback."""
    from retouch.config import load_settings

    with LiveServer(load_settings(None, data_dir=tmp_path_factory.mktemp("default"))) as server:
        yield server


@pytest.fixture(scope="module")
def generative_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server whose default model can generate (``echo`` stands in for FLUX.2-klein)."""
    from retouch.config import load_settings

    settings = load_settings(None, data_dir=tmp_path_factory.mktemp("gen"), models=echo_models())
    with LiveServer(settings) as server:
        yield server


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def npm_form_data(parts: list[tuple[str, str | tuple[str, bytes, str]]]) -> tuple[str, bytes]:
    """The body npm ``form-data`` writes: its boundary (26 dashes + 24 digits), a
    Content-Disposition per part, Content-Type only on files, CRLF line ends."""
    boundary = "-" * 26 + "".join(secrets.choice("0123456789") for _ in range(24))
    body = bytearray()
    for name, value in parts:
        body += f"--{boundary}\r\n".encode()
        if isinstance(value, str):
            body += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        else:
            filename, data, mime = value
            body += (
                f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                f"Content-Type: {mime}\r\n\r\n"
            ).encode()
            body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(body)


def chunked(data: bytes, size: int = 4096) -> Iterator[bytes]:
    """A storage stream without a length: sent chunked, as LibreChat's non-local storage is."""
    for i in range(0, len(data), size):
        yield data[i : i + size]


# -- Open WebUI (§1): aiohttp.FormData, text parts first, then files ---------------------------------


async def _open_webui_edit(
    base_url: str, *, configured_model: str, files: list[tuple[str, bytes, str]], as_list: bool,
    size: str = "", api_version: str = "2025-04-01-preview",
    prompt: str = "make it black and white",
) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """``image_edits()``: model = the configured IMAGE_EDIT_MODEL ('' by default); response_format
    b64_json unless that name matches ^gpt-image; a list of images -> one image[] per entry."""
    form = aiohttp.FormData()
    form.add_field("model", str(configured_model))
    form.add_field("prompt", str(prompt))
    if size and "x" in size:
        form.add_field("size", str(size))
    if not configured_model.startswith("gpt-image"):  # IMAGE_URL_RESPONSE_MODELS_REGEX_PATTERN
        form.add_field("response_format", "b64_json")
    for data, mime in ((d, m) for _, d, m in files):
        ext = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}[mime]
        name = "image[]" if as_list else "image"
        form.add_field(name, data, filename=f"{uuid.uuid4()}{ext}", content_type=mime)
    headers = {
        "Authorization": "Bearer sk-open-webui",
        "X-OpenWebUI-User-Name": urllib.parse.quote("Zoë Example"),
        "X-OpenWebUI-User-Id": str(uuid.uuid4()),
        "X-OpenWebUI-User-Email": "zoe@example.test",
        "X-OpenWebUI-User-Role": "user",
    }
    url = f"{base_url}/v1/images/edits" + (f"?api-version={api_version}" if api_version else "")
    async with aiohttp.ClientSession() as session, session.post(
        url, data=form, headers=headers
    ) as response:
        return response.status, await response.json()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("configured_model", "as_list", "files"),
    [
        ("", True, [("a", PHOTO, "image/png")]),  # the chat path with the default (empty) model
        ("", True, [("a", PHOTO_JPEG, "image/jpeg"), ("b", PHOTO, "image/png")]),
        ("classic", False, [("a", PHOTO, "image/png")]),  # the direct API route: one `image`
        ("gpt-image-1", True, [("a", PHOTO, "image/png")]),  # ^gpt-image: no response_format
    ],
)
async def test_open_webui_edit(
    default_server: LiveServer, configured_model: str, as_list: bool,
    files: list[tuple[str, bytes, str]],
) -> None:  # fmt: skip
    prompt = "use the second image as background" if len(files) == 2 else "black and white"
    status, body = await _open_webui_edit(
        default_server.url, configured_model=configured_model, files=files, as_list=as_list,
        prompt=prompt,
    )
    assert status == 200, body
    image = decoded(body["data"][0]["b64_json"])  # Open WebUI reads only data[].b64_json / url
    pixels = np.asarray(image.convert("RGB"))
    if len(files) == 1:
        assert np.array_equal(pixels[..., 0], pixels[..., 1])  # really black and white


@pytest.mark.anyio
async def test_open_webui_edit_with_size(default_server: LiveServer) -> None:
    status, body = await _open_webui_edit(
        default_server.url, configured_model="classic", files=[("a", PHOTO, "image/png")],
        as_list=True, size="48x32", api_version="",
    )  # fmt: skip
    assert status == 200, body
    assert decoded(body["data"][0]["b64_json"]).size == (48, 32)


def _open_webui_generation(model: str) -> dict[str, Any]:
    """``image_generations()``: model = IMAGE_GENERATION_MODEL or dall-e-2; n always; size
    IMAGE_SIZE (512x512 by default); b64_json unless the model matches ^gpt-image."""
    body: dict[str, Any] = {"model": model or "dall-e-2", "prompt": "a lighthouse", "n": 1,
                            "size": "512x512"}  # fmt: skip
    if not body["model"].startswith("gpt-image"):
        body["response_format"] = "b64_json"
    return body


def test_open_webui_generation(default_server: LiveServer, generative_server: LiveServer) -> None:
    headers = {"Authorization": "Bearer sk-open-webui", "X-OpenWebUI-User-Role": "user"}
    with generative_server.http() as http:
        ok = http.post("/v1/images/generations?api-version=2025-04-01-preview",
                       json=_open_webui_generation(""), headers=headers)  # fmt: skip
        assert ok.status_code == 200, ok.text
        assert decoded(ok.json()["data"][0]["b64_json"]).size == (512, 512)
        # IMAGE_GENERATION_MODEL=gpt-image-1: 512x512 is not a gpt-image-1 size, as at OpenAI
        bad = http.post("/v1/images/generations", json=_open_webui_generation("gpt-image-1"))
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "size"
    with default_server.http() as http:
        refused = http.post("/v1/images/generations", json=_open_webui_generation(""))
        assert refused.status_code == 400
        assert "cannot generate images from text" in refused.json()["error"]["message"]


# -- LibreChat (§2) -----------------------------------------------------------------------------


def _librechat_edit(model: str, prompt: str, files: list[tuple[str, bytes, str]]) -> tuple[str, bytes]:
    """``image_edit_oai``: model, prompt (newlines -> spaces, quotes removed), quality (default
    auto), size (default auto), then one image[] per referenced image."""
    clean = prompt.replace("\n", " ").replace('"', "")
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = [
        ("model", model), ("prompt", clean), ("quality", "auto"), ("size", "auto"),
        *(("image[]", f) for f in files),
    ]  # fmt: skip
    return npm_form_data(parts)


@pytest.mark.parametrize("stream_files", [False, True])
def test_librechat_edit(default_server: LiveServer, stream_files: bool) -> None:
    content_type, body = _librechat_edit(
        "gpt-image-1", 'make it "black and white"\nplease', [("photo.png", PHOTO, "image/png")]
    )
    headers = {"Authorization": "Bearer sk-librechat", "Content-Type": content_type}
    with default_server.http() as http:
        content: Any = chunked(body) if stream_files else body
        response = http.post("/v1/images/edits", content=content, headers=headers)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert decoded(doc["data"][0]["b64_json"]).size == (1536, 1024)  # auto: nearest fixed size
    assert doc["quality"] == "high"


def test_librechat_edit_with_an_llm_chosen_legacy_size(default_server: LiveServer) -> None:
    """The tool schema lets the LLM pick 256x256, which gpt-image-1 refuses at OpenAI too."""
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = [
        ("model", "gpt-image-1"), ("prompt", "invert"), ("quality", "auto"),
        ("size", "256x256"), ("image[]", ("photo.png", PHOTO, "image/png")),
    ]  # fmt: skip
    content_type, body = npm_form_data(parts)
    with default_server.http() as http:
        response = http.post("/v1/images/edits", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "size"


def test_librechat_generation(generative_server: LiveServer, default_server: LiveServer) -> None:
    """``image_gen_oai``: the openai SDK's images.generate with model, prompt, n, background
    auto, output_format (the image output type), quality auto, size auto."""
    fields: dict[str, Any] = {"model": "gpt-image-1", "prompt": "a red boat", "n": 1,
                              "background": "auto", "output_format": "webp",
                              "output_compression": 100, "quality": "auto", "size": "auto"}  # fmt: skip
    result = generative_server.sdk().images.generate(**fields)
    assert result.data
    assert result.data[0].b64_json
    assert decoded(result.data[0].b64_json).format == "WEBP"
    with pytest.raises(openai.BadRequestError) as err:
        default_server.sdk().images.generate(**fields)
    assert "retouch serve --model" in err.value.message


# -- LobeChat (§3): the openai Node SDK; Python's SDK sends the same parts (§7.1) ----------------------


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-image-1", 200),
    ("classic", 200),  # newest LobeChat sends no input_fidelity for it; older versions do, and it is taken
    ("gpt-image-2", "unknown_parameter"),  # older lobe-chat: input_fidelity=high always
    ("gpt-image-1-mini", "invalid_value"),
])  # fmt: skip
def test_lobechat_edit(default_server: LiveServer, model: str, expected: int | str) -> None:
    """n=1 always, input_fidelity=high, the image as a File named image.<subtype>, size left out
    when auto. The two 400s are OpenAI's answers too."""
    client = default_server.sdk()
    call: Callable[[], Any] = lambda: client.images.edit(  # noqa: E731
        model=model, n=1, input_fidelity="high", prompt="black and white",
        image=("image.png", PHOTO, "image/png"),
    )  # fmt: skip
    if expected == 200:
        result = call()
        assert result.data
        assert result.data[0].b64_json
        return
    with pytest.raises(openai.BadRequestError) as err:
        call()
    assert (err.value.param, err.value.code) == ("input_fidelity", expected)


# -- n8n (§4): npm form-data with Buffers; generations as JSON --------------------------------------


def _n8n_edit_gpt(mask: bytes | None = None, **options: str) -> tuple[str, bytes]:
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = [
        ("image[]", ("photo.png", PHOTO, "image/png")), ("prompt", "black and white"),
        ("model", "gpt-image-1"), ("n", "1"), ("size", "1024x1024"),
        *((k, v) for k, v in options.items()),
    ]  # fmt: skip
    if mask is not None:
        parts.append(("mask", ("data", mask, "image/png")))
    return npm_form_data(parts)


@pytest.mark.parametrize(
    ("options", "mask", "expected"),
    [
        ({"quality": "auto", "input_fidelity": "low", "background": "auto", "user": "n8n"}, None, 200),
        ({"quality": "high", "background": "opaque"}, None, 200),
        ({"quality": "standard"}, None, ("quality", "invalid_value")),  # offered by the UI
        ({"quality": "auto"}, PHOTO, ("mask", "invalid_mask_image_format")),  # the mask option's default: the photo
    ],
)  # fmt: skip
def test_n8n_edit(
    default_server: LiveServer, options: dict[str, str], mask: bytes | None, expected: Any
) -> None:
    content_type, body = _n8n_edit_gpt(mask, **options)
    with default_server.http() as http:
        response = http.post("/v1/images/edits", content=body,
                             headers={"Content-Type": content_type, "Authorization": "Bearer n8n"})  # fmt: skip
    if expected == 200:
        assert response.status_code == 200, response.text
        assert decoded(response.json()["data"][0]["b64_json"]).size == (1024, 1024)
        return
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == expected


def test_n8n_edit_dall_e_2(default_server: LiveServer) -> None:
    """dall-e-2: one `image` part (a square PNG whose transparency is the edit area),
    response_format url by default; n8n returns the data[] objects as they are."""
    rgba = np.dstack([gradient((64, 64)), np.full((64, 64), 255, np.uint8)])
    rgba[20:40, 20:40, 3] = 0
    parts: list[tuple[str, str | tuple[str, bytes, str]]] = [
        ("image", ("photo.png", encode_image(rgba), "image/png")), ("prompt", "black and white"),
        ("model", "dall-e-2"), ("n", "1"), ("size", "256x256"), ("response_format", "url"),
    ]  # fmt: skip
    content_type, body = npm_form_data(parts)
    with default_server.http() as http:
        response = http.post("/v1/images/edits", content=body, headers={"Content-Type": content_type})
        assert response.status_code == 200, response.text
        url = response.json()["data"][0]["url"]
        assert http.get(url).headers["content-type"] == "image/png"


def test_n8n_generation(generative_server: LiveServer) -> None:
    with generative_server.http() as http:
        # the node's default model, dall-e-3, was retired by OpenAI (2026-05-12)
        retired = http.post("/v1/images/generations", json={
            "prompt": "a lighthouse", "model": "dall-e-3", "response_format": "b64_json",
            "quality": "standard", "size": "1024x1024", "style": "vivid",
        })  # fmt: skip
        assert retired.status_code == 400
        assert retired.json()["error"]["code"] == "model_not_found"
        ok = http.post("/v1/images/generations", json={
            "prompt": "a lighthouse", "model": "gpt-image-1", "quality": "low", "size": "1024x1536",
        })  # fmt: skip
        assert ok.status_code == 200, ok.text
        assert decoded(ok.json()["data"][0]["b64_json"]).size == (1024, 1536)


NODE_DIR = Path(__file__).resolve().parent / "node"


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        return "run `npm ci --prefix tests/node` (make install does)"
    return None


@pytest.mark.skipif(_node_ready() is not None, reason=str(_node_ready()))
def test_lobechat_and_librechat_with_the_node_sdk(default_server: LiveServer, tmp_path: Path) -> None:
    """The same calls from the Node SDK LobeChat and LibreChat use (openai 7.57.0)."""
    image = tmp_path / "photo.png"
    image.write_bytes(PHOTO)
    done = subprocess.run(
        ["node", str(NODE_DIR / "clients.mjs"), f"{default_server.url}/v1", str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    for model in ("gpt-image-1", "classic"):
        assert out[f"lobechat_{model}"]["ok"], out
        assert out[f"lobechat_{model}"]["b64"]
    assert out["lobechat_gpt-image-2"] == {"ok": False, "status": 400, "code": "unknown_parameter",
                                           "param": "input_fidelity"}  # fmt: skip
    assert out["lobechat_gpt-image-1-mini"]["code"] == "invalid_value"
    assert out["lobechat_many"] == {"ok": True, "count": 1, "size": "1536x1024", "b64": True}
    # the default server's classic engine cannot generate: the SDK surfaces the 400
    assert (out["librechat_generate"]["status"], out["librechat_generate"]["param"]) == (400, "model")
