"""Validation tables: legal and illegal forms per model family (``service/params.py``)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from retouch.config import Limits
from retouch.errors import InvalidValue, MissingParameter, RetouchError, UnknownParameter
from retouch.families import ApiFamily
from retouch.service.form import EditForm, Upload
from retouch.service.params import (
    EditParams,
    gpt_image_2_auto_size,
    gpt_image_2_size_problems,
    resolve_size,
    to_edit_params,
)

LIMITS = Limits()
IMAGE = Upload("image", "a.png", "image/png", b"")


def validate(
    family: ApiFamily, fields: dict[str, str], *, model: str = "m", allow_url: bool = False,
    json_body: bool = False, images: int = 1,
) -> EditParams:  # fmt: skip
    form = EditForm(fields={"prompt": "p", **fields}, images=[IMAGE] * images, json_body=json_body)
    allow_url = allow_url or family == "dall-e-2"
    return to_edit_params(
        form, model=model, served_model="echo", family=family, limits=LIMITS, allow_url=allow_url
    )


LEGAL: list[tuple[ApiFamily, dict[str, str], dict[str, Any]]] = [
    # dall-e-2
    ("dall-e-2", {}, {"size": (1024, 1024), "response_format": "url", "n": 1, "stream": False}),
    ("dall-e-2", {"size": "256x256", "response_format": "b64_json"}, {"size": (256, 256), "response_format": "b64_json"}),
    ("dall-e-2", {"size": "512x512", "n": "10", "quality": "standard"}, {"size": (512, 512), "n": 10}),
    ("dall-e-2", {"user": "u1"}, {"user": "u1"}),
    # gpt-image
    ("gpt-image", {}, {"size": None, "quality": "high", "quality_requested": "auto", "output_format": "png",
                       "background": "auto", "response_format": "b64_json", "input_fidelity": "low",
                       "output_compression": 100, "partial_images": 0, "moderation": "auto"}),
    ("gpt-image", {"size": "auto"}, {"size": None}),
    ("gpt-image", {"size": "1536x1024"}, {"size": (1536, 1024)}),
    ("gpt-image", {"size": "1024x1536", "quality": "low"}, {"size": (1024, 1536), "quality": "low"}),
    ("gpt-image", {"quality": "medium", "input_fidelity": "high"}, {"quality": "medium", "input_fidelity": "high"}),
    ("gpt-image", {"output_format": "jpeg", "output_compression": "0"}, {"output_format": "jpeg", "output_compression": 0}),
    ("gpt-image", {"output_format": "webp", "output_compression": " 55 "}, {"output_compression": 55}),
    ("gpt-image", {"output_format": "png", "output_compression": "100"}, {"output_compression": 100}),
    ("gpt-image", {"background": "transparent", "output_format": "webp"}, {"background": "transparent"}),
    ("gpt-image", {"background": "opaque", "output_format": "jpeg"}, {"background": "opaque"}),
    ("gpt-image", {"stream": "true", "partial_images": "3"}, {"stream": True, "partial_images": 3}),
    ("gpt-image", {"stream": "TRUE"}, {"stream": True}),
    ("gpt-image", {"stream": "false", "partial_images": "0"}, {"stream": False, "partial_images": 0}),
    ("gpt-image", {"moderation": "low", "safety_identifier": "s"}, {"moderation": "low", "safety_identifier": "s"}),
    ("gpt-image", {"n": "10"}, {"n": 10}),
    ("gpt-image", {"prompt": "x" * 32000}, {}),
    # gpt-image-2
    ("gpt-image-2", {}, {"size": None, "input_fidelity": "high"}),
    ("gpt-image-2", {"size": "1024x1024"}, {"size": (1024, 1024)}),
    ("gpt-image-2", {"size": "1024x640"}, {"size": (1024, 640)}),
    ("gpt-image-2", {"size": "3840x2160"}, {"size": (3840, 2160)}),
    ("gpt-image-2", {"size": "3072x1024"}, {"size": (3072, 1024)}),
    ("gpt-image-2", {"size": "1024x3072"}, {"size": (1024, 3072)}),
    ("gpt-image-2", {"size": "2880x2880"}, {"size": (2880, 2880)}),
    # gpt-image-2.5 / 2.6: free sizes, xhigh / max, gif and svg (engines refuse them later)
    ("gpt-image-2.5", {"size": "2048x1152", "quality": "xhigh"}, {"size": (2048, 1152), "quality": "xhigh", "input_fidelity": "high"}),
    ("gpt-image-2.5", {"quality": "max", "response_format": "b64_json"}, {"quality": "max", "response_format": "b64_json"}),
    ("gpt-image-2.5", {"output_format": "gif", "frame_count": "4", "frame_duration_ms": "155"}, {"output_format": "gif", "frame_count": 4, "frame_duration_ms": 160}),
    ("gpt-image-2.5", {"output_format": "gif"}, {"frame_count": 9, "frame_duration_ms": 200}),
    ("gpt-image-2.5", {"output_format": "svg", "svg[model]": "m", "svg[reasoning][effort]": "low"}, {"output_format": "svg"}),
    ("gpt-image-2.6", {"complexity": "low", "quality": "max"}, {"complexity": "low", "quality": "max"}),
    ("gpt-image-2.6", {"size": "3840x1280"}, {"size": (3840, 1280)}),
    # every family takes response_format=b64_json (Open WebUI sends it for non-gpt-image names)
    ("gpt-image", {"response_format": "b64_json"}, {"response_format": "b64_json"}),
    ("gpt-image-2", {"response_format": "b64_json"}, {"response_format": "b64_json"}),
    ("native", {"response_format": "b64_json"}, {"response_format": "b64_json"}),
    ("native", {"response_format": "url"}, {"response_format": "url"}),
    ("gpt-image", {"user": "u"}, {"user": "u", "end_user": "u"}),
    ("gpt-image", {"user": "u", "safety_identifier": "s"}, {"end_user": "s"}),
    # native (retouch's own names)
    ("native", {"complexity": "high", "quality": "xhigh"}, {"complexity": "high", "quality": "xhigh"}),
    ("native", {"size": "64x48"}, {"size": (64, 48)}),
    ("native", {"size": "3840x2160"}, {"size": (3840, 2160)}),
]  # fmt: skip


@pytest.mark.parametrize(("family", "fields", "expected"), LEGAL)
def test_legal_forms(family: ApiFamily, fields: dict[str, str], expected: dict[str, Any]) -> None:
    params = validate(family, fields)
    assert params.family == family
    for name, value in expected.items():
        assert getattr(params, name) == value, name


ILLEGAL: list[tuple[ApiFamily, dict[str, str], type[RetouchError], str, str]] = [
    # dall-e-2
    ("dall-e-2", {"size": "1536x1024"}, InvalidValue, "size", "invalid_value"),
    ("dall-e-2", {"size": "auto"}, InvalidValue, "size", "invalid_value"),
    ("dall-e-2", {"quality": "high"}, InvalidValue, "quality", "invalid_value"),
    ("dall-e-2", {"response_format": "png"}, InvalidValue, "response_format", "invalid_value"),
    ("dall-e-2", {"prompt": "x" * 1001}, InvalidValue, "prompt", "string_above_max_length"),
    ("dall-e-2", {"output_format": "png"}, UnknownParameter, "output_format", "unknown_parameter"),
    ("dall-e-2", {"output_compression": "50"}, UnknownParameter, "output_compression", "unknown_parameter"),
    ("dall-e-2", {"background": "auto"}, UnknownParameter, "background", "unknown_parameter"),
    ("dall-e-2", {"stream": "false"}, UnknownParameter, "stream", "unknown_parameter"),
    ("dall-e-2", {"partial_images": "1"}, UnknownParameter, "partial_images", "unknown_parameter"),
    ("dall-e-2", {"input_fidelity": "low"}, UnknownParameter, "input_fidelity", "unknown_parameter"),
    ("dall-e-2", {"moderation": "low"}, UnknownParameter, "moderation", "unknown_parameter"),
    # gpt-image
    ("gpt-image", {"size": "256x256"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image", {"size": "1024x640"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image", {"size": "1024X1024"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image", {"response_format": "url"}, UnknownParameter, "response_format", "unknown_parameter"),
    ("gpt-image", {"quality": "standard"}, InvalidValue, "quality", "invalid_value"),
    ("gpt-image", {"quality": "xhigh"}, InvalidValue, "quality", "invalid_value"),
    ("gpt-image", {"n": "0"}, InvalidValue, "n", "invalid_value"),
    ("gpt-image", {"n": "11"}, InvalidValue, "n", "invalid_value"),
    ("gpt-image", {"n": "1.5"}, InvalidValue, "n", "invalid_type"),
    ("gpt-image", {"output_format": "gif"}, InvalidValue, "output_format", "invalid_value"),
    ("gpt-image", {"output_format": "svg"}, InvalidValue, "output_format", "invalid_value"),
    ("gpt-image", {"output_compression": "50"}, InvalidValue, "output_compression", "invalid_value"),
    ("gpt-image", {"output_format": "jpeg", "output_compression": "101"}, InvalidValue, "output_compression", "invalid_value"),
    ("gpt-image", {"output_format": "jpeg", "output_compression": "-1"}, InvalidValue, "output_compression", "invalid_value"),
    ("gpt-image", {"output_format": "jpeg", "output_compression": "high"}, InvalidValue, "output_compression", "invalid_type"),
    ("gpt-image", {"background": "transparent", "output_format": "jpeg"}, InvalidValue, "background", "invalid_value"),
    ("gpt-image", {"background": "white"}, InvalidValue, "background", "invalid_value"),
    ("gpt-image", {"stream": "1"}, InvalidValue, "stream", "invalid_type"),
    ("gpt-image", {"partial_images": "1"}, InvalidValue, "partial_images", "invalid_value"),
    ("gpt-image", {"stream": "true", "partial_images": "4"}, InvalidValue, "partial_images", "invalid_value"),
    ("gpt-image", {"stream": "true", "partial_images": "-1"}, InvalidValue, "partial_images", "invalid_value"),
    ("gpt-image", {"input_fidelity": "medium"}, InvalidValue, "input_fidelity", "invalid_value"),
    ("gpt-image", {"moderation": "high"}, InvalidValue, "moderation", "invalid_value"),
    ("gpt-image", {"prompt": "x" * 32001}, InvalidValue, "prompt", "string_above_max_length"),
    ("gpt-image", {"prompt": ""}, MissingParameter, "prompt", "missing_required_parameter"),
    ("gpt-image", {"style": "vivid"}, UnknownParameter, "style", "unknown_parameter"),
    ("gpt-image", {"complexity": "low"}, UnknownParameter, "complexity", "unknown_parameter"),
    ("gpt-image", {"frame_count": "3"}, UnknownParameter, "frame_count", "unknown_parameter"),
    ("gpt-image", {"svg[reasoning][effort]": "low"}, UnknownParameter, "svg[reasoning][effort]", "unknown_parameter"),
    ("gpt-image", {"quality": "max"}, InvalidValue, "quality", "invalid_value"),
    ("gpt-image-2", {"quality": "xhigh"}, InvalidValue, "quality", "invalid_value"),
    ("gpt-image-2", {"complexity": "low"}, UnknownParameter, "complexity", "unknown_parameter"),
    ("gpt-image-2", {"output_format": "gif"}, InvalidValue, "output_format", "invalid_value"),
    # gpt-image-2.5 / 2.6
    ("gpt-image-2.5", {"complexity": "high"}, UnknownParameter, "complexity", "unknown_parameter"),
    ("gpt-image-2.5", {"input_fidelity": "high"}, UnknownParameter, "input_fidelity", "unknown_parameter"),
    ("gpt-image-2.5", {"size": "1000x1000"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2.5", {"size": "1024x3088"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2.5", {"quality": "ultra"}, InvalidValue, "quality", "invalid_value"),
    ("gpt-image-2.5", {"frame_count": "3"}, InvalidValue, "frame_count", "invalid_value"),
    ("gpt-image-2.5", {"output_format": "gif", "frame_count": "1"}, InvalidValue, "frame_count", "invalid_value"),
    ("gpt-image-2.5", {"output_format": "gif", "frame_count": "17"}, InvalidValue, "frame_count", "invalid_value"),
    ("gpt-image-2.5", {"output_format": "gif", "frame_duration_ms": "655351"}, InvalidValue, "frame_duration_ms", "invalid_value"),
    ("gpt-image-2.5", {"output_format": "gif", "stream": "true"}, InvalidValue, "stream", "invalid_value"),
    ("gpt-image-2.5", {"output_format": "gif", "output_compression": "50"}, InvalidValue, "output_compression", "invalid_value"),
    ("gpt-image-2.5", {"svg[model]": "m"}, InvalidValue, "svg", "invalid_value"),
    ("gpt-image-2.6", {"complexity": "extreme"}, InvalidValue, "complexity", "invalid_value"),
    ("gpt-image-2.6", {"response_format": "url"}, UnknownParameter, "response_format", "unknown_parameter"),
    # gpt-image-2
    ("gpt-image-2", {"input_fidelity": "high"}, UnknownParameter, "input_fidelity", "unknown_parameter"),
    ("gpt-image-2", {"size": "1000x1000"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"size": "768x768"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"size": "3072x1008"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"size": "3856x2160"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"size": "2896x2896"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"size": "1024"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"size": "-1024x1024"}, InvalidValue, "size", "invalid_value"),
    ("gpt-image-2", {"response_format": "url"}, UnknownParameter, "response_format", "unknown_parameter"),
    # native
    ("native", {"size": "4000x4000"}, InvalidValue, "size", "invalid_value"),
    ("native", {"size": "0x10"}, InvalidValue, "size", "invalid_value"),
]  # fmt: skip


@pytest.mark.parametrize(("family", "fields", "error", "param", "code"), ILLEGAL)
def test_illegal_forms(
    family: ApiFamily, fields: dict[str, str], error: type[RetouchError], param: str, code: str
) -> None:
    with pytest.raises(error) as err:
        validate(family, fields)
    assert err.value.status == 400
    assert (err.value.param, err.value.code) == (param, code)
    assert err.value.message


def test_dall_e_2_image_under_4_mb() -> None:
    big = Upload("image", "a.png", "image/png", b"\0" * (4 * 1024 * 1024))
    form = EditForm(fields={"prompt": "p"}, images=[big])
    with pytest.raises(InvalidValue) as err:
        to_edit_params(
            form,
            model="dall-e-2",
            served_model="echo",
            family="dall-e-2",
            limits=LIMITS,
            allow_url=True,
        )
    assert (err.value.param, err.value.code) == ("image", "image_too_large")
    form = EditForm(fields={"prompt": "p"}, images=[big])
    assert to_edit_params(
        form,
        model="gpt-image-1",
        served_model="echo",
        family="gpt-image",
        limits=LIMITS,
        allow_url=False,
    )


def test_missing_image() -> None:
    with pytest.raises(MissingParameter) as err:
        validate("gpt-image", {}, images=0)
    assert err.value.param == "image"


def test_gpt_image_1_mini_takes_only_low_fidelity() -> None:
    assert (
        validate("gpt-image", {"input_fidelity": "low"}, model="gpt-image-1-mini").input_fidelity
        == "low"
    )
    with pytest.raises(InvalidValue) as err:
        validate("gpt-image", {"input_fidelity": "high"}, model="gpt-image-1-mini")
    assert err.value.param == "input_fidelity"


def test_url_output_for_gpt_families_only_when_allowed() -> None:
    params = validate("gpt-image", {"response_format": "url"}, allow_url=True)
    assert params.response_format == "url"
    with pytest.raises(InvalidValue) as err:
        validate("gpt-image", {"response_format": "url", "stream": "true"}, allow_url=True)
    assert err.value.param == "response_format"


def test_json_body_rules() -> None:
    """OpenAI's JSON variant: GPT-image models only; b64_json (what it returns) is accepted,
    url only where the operator allows it."""
    assert validate("gpt-image", {"n": "2"}, json_body=True).n == 2
    with pytest.raises(InvalidValue) as err:
        validate("dall-e-2", {}, json_body=True)
    assert err.value.param == "model"
    assert validate("gpt-image", {"response_format": "b64_json"}, json_body=True).n == 1
    with pytest.raises(UnknownParameter) as unknown:
        validate("gpt-image", {"response_format": "url"}, json_body=True)
    assert unknown.value.param == "response_format"


def test_markup_rules() -> None:
    markup = Upload("markup", "m.png", "image/png", b"")
    form = EditForm(fields={"prompt": "p"}, images=[IMAGE], markup=markup)
    ok = to_edit_params(form, model="gpt-image-2.5-flare", served_model="echo",
                        family="gpt-image-2.5", limits=LIMITS, allow_url=False)  # fmt: skip
    assert ok.family == "gpt-image-2.5"
    for family in ("gpt-image", "gpt-image-2"):
        with pytest.raises(UnknownParameter) as unknown:
            to_edit_params(form, model="m", served_model="echo", family=family,  # type: ignore[arg-type]
                           limits=LIMITS, allow_url=False)  # fmt: skip
        assert unknown.value.param == "markup"
    both = EditForm(fields={"prompt": "p"}, images=[IMAGE], markup=markup, mask=markup)
    with pytest.raises(InvalidValue) as err:
        to_edit_params(both, model="m", served_model="echo", family="gpt-image-2.6",
                       limits=LIMITS, allow_url=False)  # fmt: skip
    assert err.value.param == "markup"


def test_partial_images_are_zero_without_stream() -> None:
    assert validate("gpt-image", {"partial_images": "0"}).partial_images == 0


# -- size resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ((1024, 1024), (1024, 1024)),
        ((10, 10), (1024, 1024)),
        ((1600, 1000), (1536, 1024)),
        ((1000, 1600), (1024, 1536)),
        ((1300, 1000), (1536, 1024)),  # log-aspects: 0.26 is nearer 0.41 (3:2) than 0 (1:1)
        ((1200, 1000), (1024, 1024)),
        ((5000, 100), (1536, 1024)),
    ],
)
def test_auto_size_gpt_image(source: tuple[int, int], expected: tuple[int, int]) -> None:
    assert resolve_size(validate("gpt-image", {}), source, LIMITS) == expected


def test_explicit_size_wins_over_the_image() -> None:
    assert resolve_size(validate("gpt-image", {"size": "1024x1536"}), (2000, 500), LIMITS) == (
        1024,
        1536,
    )


@pytest.mark.parametrize(
    "source",
    [
        (1, 1),
        (64, 48),
        (40, 120),
        (1920, 1080),
        (4000, 4000),
        (7000, 100),
        (100, 7000),
        (3840, 2160),
    ],
)
def test_auto_size_gpt_image_2_is_always_valid(source: tuple[int, int]) -> None:
    w, h = resolve_size(validate("gpt-image-2", {}), source, LIMITS)
    assert gpt_image_2_size_problems(w, h) == []
    aspect = min(max(source[0] / source[1], 1 / 3), 3)
    assert abs(w / h - aspect) / aspect < 0.02


def test_auto_size_gpt_image_2_exhaustive_small_grid() -> None:
    for w, h in itertools.product(range(16, 4000, 97), range(16, 4000, 89)):
        assert gpt_image_2_size_problems(*gpt_image_2_auto_size(w, h)) == [], (w, h)


def test_auto_size_gpt_image_2_keeps_a_valid_input_size() -> None:
    assert gpt_image_2_auto_size(1024, 640) == (1024, 640)
    assert gpt_image_2_auto_size(3840, 2160) == (3840, 2160)


def test_auto_size_native_keeps_the_image_or_scales_it_down() -> None:
    params = validate("native", {})
    assert resolve_size(params, (64, 48), LIMITS) == (64, 48)
    w, h = resolve_size(params, (8000, 4000), LIMITS)
    assert w * h <= LIMITS.max_output_pixels
    assert abs(w / h - 2) < 0.01
