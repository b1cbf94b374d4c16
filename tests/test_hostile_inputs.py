"""Odd input never becomes a 500 or a silently dropped parameter: integers spelled with
non-ASCII digits, a multipart body cut off before its closing boundary, and arbitrary Unicode
in every query parameter and form field of every route (a Hypothesis property)."""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from retouch.accounting.database_gate import database_gate
from retouch.config import Settings, load_settings
from retouch.integers import ascii_int
from tests.conftest import Harness, echo_models, png_bytes
from tests.live import LiveServer

OK_PNG = png_bytes((32, 32))
BOUNDARY = "hostileboundary"


def assert_client_error(response: httpx2.Response) -> dict[str, Any]:
    """A 4xx in OpenAI's envelope: the four keys, a string message and type."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    assert isinstance(error["type"], str)
    return error


# -- the helper ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "signed", "value"),
    [
        ("0", False, 0), ("42", False, 42), (" 7\t", False, 7), ("+3", True, 3), ("-3", True, -3),
        ("-3", False, None), ("²", False, None), ("٣", False, None), ("１２", False, None),
        ("1_000", False, None), ("1e3", False, None), ("", False, None), ("\u20037", False, None),
        ("1" * 41, False, None), (None, False, None), ("0x10", False, None), ("3.0", False, None),
    ],
)  # fmt: skip
def test_ascii_int(raw: str | None, signed: bool, value: int | None) -> None:
    assert ascii_int(raw, signed=signed) == value


@given(st.text())
def test_ascii_int_never_raises(raw: str) -> None:
    value = ascii_int(raw, signed=True)
    if value is not None:  # only ever what the ASCII spelling says
        assert raw.strip(" \t").isascii()
        assert value == int(raw.strip(" \t"))


# -- truncated multipart ------------------------------------------------------------------------


def multipart(fields: list[tuple[str, str]], image: bytes = OK_PNG) -> bytes:
    out = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n"
    ]
    for name, value in fields:
        out.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    return b"".join(out) + f"--{BOUNDARY}--\r\n".encode()


FIELDS = [("model", "echo"), ("prompt", "x"), ("output_format", "webp")]
COMPLETE = multipart(FIELDS)
_LAST = COMPLETE.rindex(b'--' + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="output_format"')


@pytest.mark.anyio
async def test_complete_body_is_honoured(echo: Harness) -> None:
    """The control: the same body, complete, gives a WebP (so the cut-offs below are the
    only difference)."""
    response = await echo.http.post(
        "/v1/images/edits", content=COMPLETE,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["output_format"] == "webp"


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        COMPLETE[: -len(f"--{BOUNDARY}--\r\n")],  # every part closed, no closing boundary
        COMPLETE[: -len(f"\r\n--{BOUNDARY}--\r\n")],  # the last value ends, nothing after it
        COMPLETE[: len(COMPLETE) - len(f"bp\r\n--{BOUNDARY}--\r\n")],  # 'output_format=we'
        COMPLETE[: _LAST + 40],  # inside the last part's headers
        COMPLETE[:_LAST],  # the last part never started
        COMPLETE[: -len("--\r\n")],  # a boundary, but not the closing one
    ],
    ids=["no-closing", "value-then-eof", "value-cut", "headers-cut", "part-missing", "open-boundary"],
)
async def test_truncated_multipart_is_a_400(echo: Harness, body: bytes) -> None:
    response = await echo.http.post(
        "/v1/images/edits", content=body,
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )  # fmt: skip
    error = assert_client_error(response)
    assert response.status_code == 400
    assert error["code"] == "truncated_body"
    assert "closing boundary" in error["message"]


# -- non-ASCII digits ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("value", ["²", "٣", "１", "1_0", "\u00a01"])
async def test_non_ascii_digits_in_form_integers(echo: Harness, value: str) -> None:
    for name in ("n", "output_compression", "partial_images"):
        response = await echo.http.post(
            "/v1/images/edits", data={"model": "echo", "prompt": "x", name: value},
            files=[("image", ("a.png", OK_PNG, "image/png"))],
        )  # fmt: skip
        error = assert_client_error(response)
        assert (response.status_code, error["param"]) == (400, name)


# -- every route, arbitrary Unicode (a real socket, the accounts database in open mode) ----------


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data: Path = tmp_path_factory.mktemp("unicode") / "data"
    config: Settings = load_settings(None, data_dir=data, models=echo_models())
    server = LiveServer(config, gate_factory=database_gate)
    server.start()
    yield server
    server.stop()


def test_non_ascii_digits_on_blobs_and_usage(accounts_server: LiveServer) -> None:
    with accounts_server.http() as http:
        for path in (
            "/v1/blobs/x?expires=%C2%B2&sig=x",
            "/v1/blobs/1800000000_aaaaaaaaaaaaaaaaaaaaaa.png?expires=%D9%A3&sig=x",
            "/v1/organization/usage/images?start_time=0&page=%C2%B2",
            "/v1/organization/usage/images?start_time=%C2%B2",
            "/v1/organization/usage/images?start_time=0&limit=%EF%BC%91",
        ):
            assert_client_error(http.get(path))


TEXT = st.one_of(
    st.sampled_from(["", "²", "٣", "-1", "1" * 50, "\x00", "%", "\ufeff1", "true", "1024x1024"]),
    st.text(st.characters(categories=["Nd", "No", "Zs", "Cf"]), min_size=1, max_size=6),
    st.text(max_size=40),
)
"""Arbitrary Unicode, weighted towards what looks like a number to ``str.isdigit``/``int``."""
ROUTES: dict[str, tuple[str, ...]] = {
    "/v1/blobs/KEY": ("expires", "sig"),
    "/v1/organization/usage/images": (
        "start_time", "end_time", "bucket_width", "limit", "page", "group_by", "group_by[]",
        "models", "user_ids", "api_key_ids", "project_ids",
    ),
    "/v1/models": ("after", "limit"),
    "/v1/models/MODEL": ("x",),
    "/healthz": ("x",),
    "/readyz": ("x",),
}  # fmt: skip
FORM_FIELDS = (
    "model", "prompt", "n", "size", "quality", "background", "output_format",
    "output_compression", "partial_images", "stream", "input_fidelity", "moderation", "user",
    "response_format", "mask", "image", "image[0]", "unknown_field",
)  # fmt: skip


def _quote(value: str) -> str:
    return urllib.parse.quote(value.encode("utf-8", "surrogatepass"), safe="")


def _check(response: httpx2.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert_client_error(response)


@pytest.mark.parametrize("route", sorted(ROUTES))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), path_value=TEXT)
def test_unicode_query_parameters_on_every_route(
    accounts_server: LiveServer, route: str, data: st.DataObject, path_value: str
) -> None:
    names = data.draw(st.lists(st.sampled_from(ROUTES[route]), min_size=1, max_size=4))
    values = {"start_time": "0"} if "usage" in route else {}  # so later checks are reached
    values.update({n: data.draw(TEXT) for n in names})
    query = "&".join(f"{_quote(n)}={_quote(v)}" for n, v in values.items())
    path = route.replace("KEY", _quote(path_value) or "k").replace("MODEL", _quote(path_value) or "m")
    with accounts_server.http() as http:
        _check(http.get(f"{path}?{query}"))
        _check(http.post(f"/v1/images/edits?{query}", data={"prompt": "x"}))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(fields=st.dictionaries(st.sampled_from(FORM_FIELDS), TEXT, min_size=1, max_size=5))
def test_unicode_form_fields_on_the_edit_route(
    accounts_server: LiveServer, fields: dict[str, str]
) -> None:
    fields.setdefault("prompt", "x")
    files = [("image", ("a.png", OK_PNG, "image/png"))]
    with accounts_server.http() as http:
        _check(http.post("/v1/images/edits", data=fields, files=files))
        json_body = {k: v for k, v in fields.items() if k not in ("image", "mask", "image[0]")}
        _check(http.post("/v1/images/edits", json=json_body))


def test_a_sample_png_is_valid() -> None:
    """Guards the property tests above: their image is a real PNG, so a 4xx from them is
    about the text fields, not the file."""
    import io

    assert Image.open(io.BytesIO(OK_PNG)).size == (32, 32)

