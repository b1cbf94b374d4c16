"""Usage arithmetic against the worked values of ``openai-images-edit-contract.md`` §9."""

from __future__ import annotations

import pytest

from retouch.service.tokens import (
    PARTIAL_IMAGE_TOKENS,
    compute_usage,
    gpt_image_2_output_tokens,
    input_image_tokens,
    output_image_tokens,
    text_tokens,
)


@pytest.mark.parametrize(
    ("size", "fidelity", "tokens"),
    [
        ((1024, 1024), "low", 194),  # -> 512x512, 1 tile
        ((1024, 1536), "low", 323),  # -> 512x768, 2 tiles
        ((1536, 1024), "low", 323),
        ((1024, 1024), "high", 4354),  # + 4160 square
        ((1024, 1536), "high", 6563),  # + 6240 non-square
        ((512, 512), "low", 194),
        ((256, 256), "low", 194),  # never upscaled: still one tile
        ((4096, 4096), "low", 194),  # 2048 -> 512
        ((4096, 1024), "low", 65 + 129 * 4),  # 2048x512 -> 4 tiles
        ((600, 2000), "low", 65 + 129 * 4),  # 512x1707 -> 1x4 tiles
        ((513, 513), "low", 194),
        ((1, 1), "low", 194),
    ],
)
def test_input_image_tokens(size: tuple[int, int], fidelity: str, tokens: int) -> None:
    assert input_image_tokens(*size, fidelity) == tokens


@pytest.mark.parametrize(
    ("quality", "table"),
    [
        ("low", {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400}),
        ("medium", {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568}),
        ("high", {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208}),
    ],
)
def test_output_tokens_gpt_image_table(quality: str, table: dict[tuple[int, int], int]) -> None:
    for (w, h), tokens in table.items():
        assert output_image_tokens("gpt-image", quality, w, h) == tokens
        q = {"low": 16, "medium": 32, "high": 64}[quality]  # the table's observed pattern
        pattern = {
            (1024, 1024): q * (q + 1),
            (1024, 1536): (q + 1) * 3 * q // 2,
            (1536, 1024): q * (3 * q // 2 + 1),
        }
        assert tokens == pattern[(w, h)]


@pytest.mark.parametrize(
    ("size", "tokens"),
    [
        ((1024, 1024), 7024),
        ((1536, 1024), 5488),
        ((1024, 1536), 5488),
        ((1024, 640), 3824),
        ((3072, 1024), 3952),
        ((2560, 1440), 7370),
        ((3840, 1280), 5311),
        ((2048, 2048), 14272),
        ((3840, 2160), 13342),
    ],
)
def test_output_tokens_gpt_image_2_high(size: tuple[int, int], tokens: int) -> None:
    assert gpt_image_2_output_tokens("high", *size) == tokens
    assert output_image_tokens("gpt-image-2", "high", *size) == tokens


def test_output_tokens_gpt_image_2_low_square() -> None:
    assert output_image_tokens("gpt-image-2", "low", 1024, 1024) == 196


def test_output_tokens_native_sizes_scale_with_pixels() -> None:
    assert output_image_tokens("native", "high", 1024, 1024) == 4160
    assert output_image_tokens("native", "high", 512, 512) == 1040
    assert output_image_tokens("native", "low", 64, 64) == 1  # never zero


def test_text_tokens_o200k() -> None:
    assert text_tokens("hello world") == 2
    assert text_tokens("") == 0
    assert text_tokens("a " * 100) > 50


def test_contract_example_usage() -> None:
    """§7 example: one 1024² input, high, 1024² output -> 194 image and 4160 output tokens."""
    usage = compute_usage(
        family="gpt-image", prompt="hello world", input_sizes=[(1024, 1024)], fidelity="low",
        quality="high", size=(1024, 1024), images_out=1, partials_sent=0,
    )  # fmt: skip
    assert usage.wire() == {
        "input_tokens": 196,
        "input_tokens_details": {"text_tokens": 2, "image_tokens": 194},
        "output_tokens": 4160,
        "output_tokens_details": {"image_tokens": 4160, "text_tokens": 0},
        "total_tokens": 4356,
    }


def test_partials_add_100_each_and_inputs_sum() -> None:
    """§8 capture: partial_images=3 at high 1024² -> 4160 + 3 x 100 = 4460 output tokens."""
    usage = compute_usage(
        family="gpt-image", prompt="x", input_sizes=[(1024, 1024)], fidelity="low",
        quality="high", size=(1024, 1024), images_out=1, partials_sent=3,
    )  # fmt: skip
    assert PARTIAL_IMAGE_TOKENS == 100
    assert usage.output_tokens == 4460
    several = compute_usage(
        family="gpt-image", prompt="x", input_sizes=[(1024, 1024), (1024, 1536), (600, 2000)],
        fidelity="low", quality="low", size=(1536, 1024), images_out=2, partials_sent=0,
    )  # fmt: skip
    assert several.image_tokens == 194 + 323 + 581
    assert several.output_tokens == 2 * 400
    assert several.input_tokens == several.text_tokens + several.image_tokens
    assert several.total_tokens == several.input_tokens + several.output_tokens


def test_real_capture_portrait_input() -> None:
    """§7 capture: 323 image tokens for one portrait input (71 text tokens, 4160 output)."""
    usage = compute_usage(
        family="gpt-image", prompt="word " * 71, input_sizes=[(1024, 1536)], fidelity="low",
        quality="high", size=(1024, 1024), images_out=1, partials_sent=0,
    )  # fmt: skip
    assert usage.image_tokens == 323
    assert usage.output_tokens == 4160
    assert usage.total_tokens == usage.text_tokens + 323 + 4160
