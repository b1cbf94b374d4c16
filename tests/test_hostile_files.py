"""Unusual and hostile uploads, against one live server that must keep serving throughout.

The corpus is built here in code. Unusual but valid images must come back right (the echo
engine returns its input, so the output pixels are compared with the decoded input); invalid
or hostile ones must each get the right 4xx naming the offending part. The last test checks
that the server still serves a normal edit and released every queue slot.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from PIL import Image, ImageOps

from retouch.imaging import decode
from tests.conftest import LiveServer, decode_b64, encode_image, gradient, mask_bytes, png_bytes

# -- corpus builders ---------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(
    width: int, height: int, *, bit_depth: int = 8, color_type: int = 2,
    rows: bytes | None = None, extra: list[bytes] | None = None,
) -> bytes:  # fmt: skip
    """A PNG written by hand: ``rows`` are the unfiltered scanlines (filter bytes added here);
    ``None`` writes a tiny IDAT that holds almost none of the declared pixels (a bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    if rows is None:
        idat = zlib.compress(b"\0" * 64)
    else:
        stride = len(rows) // height
        idat = zlib.compress(
            b"".join(b"\0" + rows[i * stride : (i + 1) * stride] for i in range(height))
        )
    chunks = [
        png_chunk(b"IHDR", ihdr),
        *(extra or []),
        png_chunk(b"IDAT", idat),
        png_chunk(b"IEND", b""),
    ]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def noise(size: tuple[int, int], channels: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], channels), dtype=np.uint8)


def pattern(size: tuple[int, int] = (64, 32)) -> np.ndarray:
    """A gradient with a red top-left block: orientation mistakes show."""
    pixels = gradient(size).copy()
    pixels[:8, :16] = (255, 0, 0)
    return pixels


def pillow_rgb(data: bytes) -> np.ndarray:
    """What a careful reader sees: Pillow's decode, EXIF orientation applied, RGB(A)."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert image is not None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def exif_with_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


# -- unusual but valid -------------------------------------------------------------------------


def cmyk_jpeg() -> tuple[bytes, np.ndarray, float]:
    src = gradient((64, 48))
    data = save(Image.fromarray(src).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    return data, src, 12.0


def gray16_png() -> tuple[bytes, np.ndarray, float]:
    gray8 = gradient((64, 48))[:, :, 0]
    data = save(Image.fromarray(gray8.astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    return data, np.dstack([gray8] * 3), 0.0


def gray16_dark_png() -> tuple[bytes, np.ndarray, float]:
    """16-bit values 0..200 are near black (at most 0.3 % brightness): they must stay dark."""
    values = (gradient((32, 32))[:, :, 0].astype(np.uint16) * 200 // 255).astype(np.uint16)
    data = save(Image.fromarray(values), "PNG")
    return data, np.zeros((32, 32, 3), np.uint8), 1.0


def rgb16_png() -> tuple[bytes, np.ndarray, float]:
    src = gradient((40, 30))
    wide = (src.astype(">u2") * 257).tobytes()
    data = raw_png(40, 30, bit_depth=16, color_type=2, rows=wide)
    assert Image.open(io.BytesIO(data)).mode == "RGB"
    return data, src, 0.0


def rgba16_png() -> tuple[bytes, np.ndarray, float]:
    src = np.dstack([gradient((40, 30)), np.full((30, 40), 128, np.uint8)])
    data = raw_png(40, 30, bit_depth=16, color_type=6, rows=(src.astype(">u2") * 257).tobytes())
    return data, src, 0.0


def gray_png() -> tuple[bytes, np.ndarray, float]:
    gray = gradient((50, 40))[:, :, 1]
    return save(Image.fromarray(gray), "PNG"), np.dstack([gray] * 3), 0.0


def gray_jpeg() -> tuple[bytes, np.ndarray, float]:
    gray = gradient((48, 48))[:, :, 1]
    data = save(Image.fromarray(gray), "JPEG", quality=95)
    return data, np.dstack([gray] * 3), 4.0


def one_bit_png() -> tuple[bytes, np.ndarray, float]:
    bits = (gradient((40, 40))[:, :, 0] > 127).astype(np.uint8) * 255
    return save(Image.fromarray(bits).convert("1"), "PNG"), np.dstack([bits] * 3), 0.0


def palette_png_with_transparency() -> tuple[bytes, np.ndarray, float]:
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (250, 250, 250)]
    alphas = [0, 128, 255, 255]
    index = (np.arange(48 * 32).reshape(32, 48) // 7 % 4).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([c for rgb in colors for c in rgb])
    data = save(image, "PNG", transparency=bytes(alphas))
    expected = np.array([(*colors[i], alphas[i]) for i in range(4)], np.uint8)[index]
    return data, expected, 0.0


def la_png() -> tuple[bytes, np.ndarray, float]:
    gray, alpha = gradient((32, 48))[:, :, 0], gradient((32, 48))[:, :, 1]
    data = save(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG")
    return data, np.dstack([gray, gray, gray, alpha]), 0.0


def rgb_png_with_color_key() -> tuple[bytes, np.ndarray, float]:
    src = pattern((32, 32))
    data = save(Image.fromarray(src), "PNG", transparency=(255, 0, 0))
    alpha = np.where((src == (255, 0, 0)).all(axis=2), 0, 255).astype(np.uint8)
    return data, np.dstack([src, alpha]), 0.0


def exif_rotated_jpeg(orientation: int) -> Callable[[], tuple[bytes, np.ndarray, float]]:
    def build() -> tuple[bytes, np.ndarray, float]:
        data = save(
            Image.fromarray(pattern()), "JPEG", quality=95, exif=exif_with_orientation(orientation)
        )
        return data, pillow_rgb(data), 0.0

    return build


def exif_rotated_png() -> tuple[bytes, np.ndarray, float]:
    data = save(Image.fromarray(pattern()), "PNG", exif=exif_with_orientation(6))
    expected = pillow_rgb(data)
    assert expected.shape[:2] == (64, 32)
    return data, expected, 0.0


def webp_lossless() -> tuple[bytes, np.ndarray, float]:
    src = np.dstack([gradient((48, 40)), gradient((48, 40))[:, :, 0]])
    # exact=True: libwebp would otherwise drop the colour under fully transparent pixels
    return save(Image.fromarray(src), "WEBP", lossless=True, exact=True), src, 0.0


def webp_lossy() -> tuple[bytes, np.ndarray, float]:
    src = gradient((64, 64))
    return save(Image.fromarray(src), "WEBP", quality=90), src, 6.0


def progressive_jpeg() -> tuple[bytes, np.ndarray, float]:
    src = gradient((64, 64))
    data = save(Image.fromarray(src), "JPEG", quality=95, progressive=True)
    return data, src, 4.0


VALID: dict[str, Callable[[], tuple[bytes, np.ndarray, float]]] = {
    "cmyk-jpeg": cmyk_jpeg,
    "gray-16bit-png": gray16_png,
    "gray-16bit-dark-png": gray16_dark_png,
    "rgb-16bit-png": rgb16_png,
    "rgba-16bit-png": rgba16_png,
    "gray-png": gray_png,
    "gray-jpeg": gray_jpeg,
    "1bit-png": one_bit_png,
    "palette-png-trns": palette_png_with_transparency,
    "la-png": la_png,
    "rgb-png-color-key": rgb_png_with_color_key,
    "jpeg-exif-3": exif_rotated_jpeg(3),
    "jpeg-exif-6": exif_rotated_jpeg(6),
    "jpeg-exif-8": exif_rotated_jpeg(8),
    "jpeg-exif-5": exif_rotated_jpeg(5),
    "png-exif-6": exif_rotated_png,
    "webp-lossless-rgba": webp_lossless,
    "webp-lossy": webp_lossy,
    "jpeg-progressive": progressive_jpeg,
}


@pytest.mark.parametrize("name", list(VALID))
def test_unusual_valid_images_are_edited_correctly(live_server: LiveServer, name: str) -> None:
    data, expected, tolerance = VALID[name]()
    with live_server.sdk() as sdk:
        result = sdk.images.edit(model="echo", image=("upload.bin", data, "image/png"), prompt="x")
    out = np.asarray(decode_b64(result.data[0].b64_json or ""))
    h, w = expected.shape[:2]
    assert result.size == f"{w}x{h}"
    assert out.shape == expected.shape
    diff = np.abs(out.astype(np.int16) - expected.astype(np.int16))
    assert diff.mean() <= tolerance
    if tolerance == 0:
        assert diff.max() == 0


def test_exif_orientation_matches_pillow_for_every_value() -> None:
    """The decoder's own transposes against Pillow's exif_transpose, all eight orientations."""
    from retouch.service.form import Upload

    for orientation in range(1, 9):
        data = save(
            Image.fromarray(pattern((20, 12))), "PNG", exif=exif_with_orientation(orientation)
        )
        opened = decode.open_upload(Upload("image", "a.png", None, data), max_pixels=10_000)
        pixels = decode.load_pixels(opened)
        expected = pillow_rgb(data)
        assert (opened.width, opened.height) == (expected.shape[1], expected.shape[0])
        np.testing.assert_array_equal(pixels, expected)


def test_decoding_leaves_the_warning_filters_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding runs in a thread pool; ``warnings.catch_warnings`` there is a race that can
    leave a filter installed for the whole process, so the decoder must not touch them."""
    import warnings

    from retouch.service.form import Upload

    touched: list[str] = []

    def forbidden(name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> Any:
            touched.append(name)
            raise AssertionError(f"warnings.{name} called while decoding")

        return record

    for name in ("catch_warnings", "simplefilter", "filterwarnings", "resetwarnings"):
        monkeypatch.setattr(warnings, name, forbidden(name))
    for build in (cmyk_jpeg, palette_png_with_transparency, exif_rotated_jpeg(6), webp_lossy):
        data = build()[0]
        opened = decode.open_upload(Upload("image", "a", None, data), max_pixels=1_000_000)
        decode.load_pixels(opened)
    for hostile in (bomb(), truncated(NOISY_PNG)):
        with pytest.raises(Exception, match="Invalid file"):
            decode.load_pixels(
                decode.open_upload(Upload("image", "a", None, hostile), max_pixels=1_000_000)
            )
    assert touched == []


def test_mask_from_palette_png_and_octet_stream_content_type(live_server: LiveServer) -> None:
    """Content types are not trusted either way: bytes decide (a PNG sent as octet-stream is
    fine). A palette mask with transparency is a mask with alpha."""
    index = np.zeros((32, 32), np.uint8)
    index[4:12, 4:12] = 1
    mask = Image.fromarray(index, "P")
    mask.putpalette([0, 0, 0, 0, 0, 0])
    mask_data = save(mask, "PNG", transparency=bytes([255, 0]))
    with live_server.http() as http:
        response = http.post(
            "/v1/images/edits", data={"prompt": "x", "model": "echo"},
            files={"image": ("a", png_bytes((32, 32)), "application/octet-stream"),
                   "mask": ("m.png", mask_data, "image/png")},
        )  # fmt: skip
    assert response.status_code == 200, response.text


# -- hostile and invalid -----------------------------------------------------------------------

OK = png_bytes((64, 64))


def bomb(side: int = 20000) -> bytes:
    return raw_png(side, side)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def truncated(data: bytes) -> bytes:
    return data[: len(data) * 6 // 10]


NOISY_PNG = encode_image(noise((64, 64)))
NOISY_JPEG = encode_image(noise((64, 64)), "JPEG", quality=90)
SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="red"/></svg>'
GIF = save(Image.new("RGB", (32, 32), (0, 255, 0)), "GIF")
TEXT = b"this is not an image, just text with a .png name\n"

Files = list[tuple[str, tuple[str, bytes, str]]]


def image(
    data: bytes, name: str = "image", filename: str = "a.png"
) -> tuple[str, tuple[str, bytes, str]]:
    return (name, (filename, data, "image/png"))


HOSTILE: dict[str, tuple[Files, int, str | None, str]] = {
    "bomb-20000": ([image(bomb())], 413, "image", "image_too_large"),
    "bomb-5000": ([image(bomb(5000))], 413, "image", "image_too_large"),
    "bomb-as-third-image": (
        [image(OK, "image[]"), image(OK, "image[]"), image(bomb(), "image[]")], 413, "image[2]", "image_too_large",
    ),
    "bomb-mask": ([image(OK), image(bomb(), "mask")], 413, "mask", "image_too_large"),
    "request-pixels": ([image(raw_png(4000, 4000), "image[]") for _ in range(5)], 413, "image", "image_too_large"),
    "truncated-png": ([image(truncated(NOISY_PNG))], 400, "image", "invalid_image_file"),
    "truncated-jpeg": ([image(truncated(NOISY_JPEG), filename="a.jpg")], 400, "image", "invalid_image_file"),
    "truncated-png-second": ([image(OK, "image[]"), image(truncated(NOISY_PNG), "image[]")], 400, "image[1]", "invalid_image_file"),
    "png-header-only": ([image(NOISY_PNG[:40])], 400, "image", "invalid_image_file"),
    "animated-webp": ([image(animated("WEBP"), filename="a.webp")], 400, "image", "invalid_image_file"),
    "animated-png": ([image(animated("PNG"))], 400, "image", "invalid_image_file"),
    "svg": ([image(SVG, filename="a.svg")], 400, "image", "invalid_image_file"),
    "gif": ([image(GIF, filename="a.gif")], 400, "image", "invalid_image_file"),
    "zero-bytes": ([image(b"")], 400, "image", "invalid_image_file"),
    "text-renamed-png": ([image(TEXT)], 400, "image", "invalid_image_file"),
    "text-as-image-2": ([image(OK, "image[0]"), image(OK, "image[1]"), image(TEXT, "image[2]")], 400, "image[2]", "invalid_image_file"),
    "mask-wrong-size": ([image(OK), image(mask_bytes((32, 32), (0, 0, 8, 8)), "mask")], 400, "mask", "mask_size_mismatch"),
    "mask-without-alpha": ([image(OK), image(png_bytes((64, 64)), "mask")], 400, "mask", "invalid_mask_image_format"),
    "mask-jpeg": ([image(OK), image(NOISY_JPEG, "mask")], 400, "mask", "invalid_mask_image_format"),
    "mask-truncated": ([image(OK), image(truncated(mask_bytes((64, 64), (0, 0, 8, 8))), "mask")], 400, "mask", "invalid_mask_image_format"),
    "mask-text": ([image(OK), image(TEXT, "mask")], 400, "mask", "invalid_mask_image_format"),
    "two-masks": ([image(OK), image(OK, "mask"), image(OK, "mask[]")], 400, "mask", "invalid_value"),
    "17-images": ([image(OK, "image[]") for _ in range(17)], 400, "image", "too_many_images"),
    "18-files": ([image(OK, "image[]") for _ in range(18)], 400, "image", "too_many_images"),
    "duplicate-index": ([image(OK, "image[0]"), image(OK, "image[0]")], 400, "image[0]", "invalid_value"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_files_get_the_right_4xx(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    files, status, param, code = HOSTILE[name]
    decoded: list[str] = []
    real_load = decode.load_pixels

    def counting_load(opened: decode.OpenedImage) -> Any:
        decoded.append(opened.upload.param)
        return real_load(opened)

    monkeypatch.setattr(decode, "load_pixels", counting_load)
    with live_server.http() as http:
        response = http.post(
            "/v1/images/edits", data={"prompt": "x", "model": "gpt-image-1"}, files=files
        )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert set(error) == {"message", "type", "param", "code"}
    assert response.headers["x-request-id"].startswith("req_")
    if code == "image_too_large":
        assert decoded == []  # refused from the headers: not one image was decoded


@pytest.mark.parametrize("name", ["bomb-20000", "truncated-jpeg", "svg", "mask-without-alpha"])
def test_hostile_files_raise_the_sdk_exception(live_server: LiveServer, name: str) -> None:
    files, status, param, code = HOSTILE[name]
    images = [f[1] for f in files if f[0] != "mask"]
    masks = [f[1] for f in files if f[0] == "mask"]
    with live_server.sdk() as sdk, pytest.raises(openai.APIStatusError) as err:
        sdk.images.edit(
            model="gpt-image-1", image=images[0], prompt="x",
            **({"mask": masks[0]} if masks else {}),
        )  # fmt: skip
    assert err.value.status_code == status
    assert isinstance(err.value, openai.BadRequestError) == (status == 400)
    assert (err.value.param, err.value.code) == (param, code)


def test_field_over_the_field_cap(live_server: LiveServer) -> None:
    with live_server.http() as http:
        response = http.post("/v1/images/edits", data={"prompt": "p" * 200_000}, files=[image(OK)])
    assert response.status_code == 413
    assert response.json()["error"]["param"] == "prompt"
    assert response.json()["error"]["code"] == "field_too_large"


def test_too_many_fields(live_server: LiveServer) -> None:
    fields = {f"field{i}": "v" for i in range(40)}
    with live_server.http() as http:
        response = http.post("/v1/images/edits", data={"prompt": "x", **fields}, files=[image(OK)])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "too_many_fields"


@pytest.mark.parametrize(
    "body",
    [
        b'--xyz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nx',  # never closed
        b"garbage without any boundary",
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n',
    ],
)
def test_malformed_multipart(live_server: LiveServer, body: bytes) -> None:
    with live_server.http() as http:
        response = http.post(
            "/v1/images/edits", content=body,
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )  # fmt: skip
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_server_keeps_serving_after_the_corpus(live_server: LiveServer) -> None:
    src = gradient((48, 48))
    with live_server.sdk() as sdk:
        result = sdk.images.edit(
            model="echo", image=("a.png", encode_image(src), "image/png"), prompt="x"
        )
    np.testing.assert_array_equal(np.asarray(decode_b64(result.data[0].b64_json or "")), src)
    with httpx2.Client(base_url=live_server.base_url) as http:
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").json()["status"] == "ready"
    for worker in live_server.services.workers.values():  # no slot leaked by a refused request
        assert (worker.admitted, worker.running) == (0, 0)
