"""Prompts the classic engine cannot carry out get OpenAI's 400 envelope with the code
``unsupported_instruction`` and a message that says what it can do and how to get more."""

from __future__ import annotations

from typing import Any

import numpy as np
import openai
import pytest

from retouch.engine.classic import ClassicEngine
from retouch.engine.types import EditJob
from retouch.errors import UnsupportedInstruction
from tests.classic_helpers import edit, edit_all, scene
from tests.conftest import Harness

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "prompt",
    [
        "add a red rose",
        "加一朵红玫瑰",
        "make it look like a watercolor by Monet",
        "a sunlit indoor lounge area with a pool",
        "black and white and add a dragon",  # half understood is not understood
    ],
)
async def test_unsupported_prompt_is_refused(classic: Harness, prompt: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await edit(classic, prompt, scene())
    error = info.value
    assert error.status_code == 400
    assert error.code == "unsupported_instruction"
    body = error.body
    assert isinstance(body, dict)
    assert body.get("param") == "prompt"
    assert "black and white" in error.message  # what it can do
    assert "retouch serve --model" in error.message  # how to get a generative model


async def test_refusal_names_the_words_it_did_not_understand(classic: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await edit(classic, "black and white and add a dragon", scene())
    assert "dragon" in info.value.message


async def test_extra_images_without_a_use_are_refused(classic: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await edit_all(classic, "black and white", [scene(), scene()])
    assert info.value.code == "unsupported_instruction"


async def test_second_image_background_needs_a_second_image(classic: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await edit(classic, "use the second image as background", scene())
    assert info.value.code == "unsupported_instruction"


def _job(prompt: str, mask: np.ndarray | None = None) -> EditJob:
    image = scene()
    return EditJob(
        prompt=prompt,
        images=(image,),
        mask=mask,
        size=(image.shape[1], image.shape[0]),
        n=1,
        quality="high",
        input_fidelity="low",
        background="auto",
        partial_images=0,
    )


@pytest.mark.parametrize(
    ("prompt", "mask", "reason"),
    [
        ("rotate 45 degrees", None, "multiples of 90"),
        ("rotate 90 degrees", np.full((96, 96), 255, np.uint8), "mask"),
        ("invert", np.zeros((96, 96), np.uint8), "no transparent"),
        ("remove the object", np.full((96, 96), 255, np.uint8), "whole image"),
        ("add the text ''", None, "empty"),
    ],
)
def test_check_refuses_before_queueing(prompt: str, mask: np.ndarray | None, reason: str) -> None:
    with pytest.raises(UnsupportedInstruction, match=reason):
        ClassicEngine().check(_job(prompt, mask))


def test_text_no_font_can_draw_is_refused_or_drawn() -> None:
    """CJK text: drawn when a CJK font is installed, otherwise refused with the fix."""
    engine = ClassicEngine()
    job = _job("添加文字“你好”")
    from retouch.engine.classic.text import pick_font

    if pick_font("你好", engine.settings.fonts) is None:
        with pytest.raises(UnsupportedInstruction, match="font"):
            engine.check(job)
    else:
        engine.check(job)


def test_configured_font_that_lacks_glyphs_still_refuses(tmp_path: Any) -> None:
    """A configured font is tried, not trusted: the bundled DejaVu has no Chinese glyphs."""
    from retouch.engine.classic.text import BUNDLED_FONT, missing_characters

    assert missing_characters("你好", [BUNDLED_FONT]) == "你好"
    assert missing_characters("Hello, Ωμέγα", [BUNDLED_FONT]) == ""
