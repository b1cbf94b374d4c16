"""The prompt grammar of the classic engine: a table of phrases and the operations they mean."""

from __future__ import annotations

from typing import Any

import pytest

from retouch.engine.classic.grammar import NotUnderstood, parse
from retouch.engine.classic.phrases import COLORS


def summary(prompt: str) -> list[tuple[Any, ...]]:
    """Each op as (name, the fields that differ from the defaults)."""
    out: list[tuple[Any, ...]] = []
    for op in parse(prompt):
        fields = {
            k: v
            for k, v in vars(op).items()
            if k != "name" and v not in (0, "", None) and not (k == "amount" and v == 1.0)
        }
        out.append((op.name, fields) if fields else (op.name,))
    return out


TABLE: list[tuple[str, list[tuple[Any, ...]]]] = [
    # English
    ("black and white", [("grayscale",)]),
    ("Make it B&W please", [("grayscale",)]),
    ("sepia tone", [("sepia",)]),
    ("make it slightly brighter", [("brightness", {"amount": 0.5})]),
    ("much darker", [("brightness", {"amount": -1.7})]),
    ("increase the contrast", [("contrast",)]),
    ("less saturated", [("saturation", {"amount": -1.0})]),
    ("warmer tones", [("temperature",)]),
    ("cool it down", [("temperature", {"amount": -1.0})]),
    ("gaussian blur", [("blur",)]),
    ("sharpen", [("sharpen",)]),
    ("pixelate", [("pixelate",)]),
    ("invert the colors", [("invert",)]),
    ("mirror", [("flip", {"axis": "horizontal"})]),
    ("flip it vertically", [("flip", {"axis": "vertical"})]),
    ("rotate 90 degrees counterclockwise", [("rotate", {"degrees": 270})]),
    ("turn it upside down", [("rotate", {"degrees": 180})]),
    ("pencil sketch", [("sketch",)]),
    ("cartoonize", [("cartoon",)]),
    ("posterize to 3 levels", [("posterize", {"levels": 3})]),
    ("add a vignette", [("vignette",)]),
    ("darken the corners", [("vignette",)]),
    ("crop to the subject", [("crop_subject",)]),
    ("remove the background", [("remove_background",)]),
    ("make the background transparent", [("remove_background",)]),
    ("white background", [("background_color", {"color": COLORS["white"]})]),
    (
        "change the background to light blue",
        [("background_color", {"color": COLORS["light blue"]})],
    ),
    ("use the second image as background", [("background_image", {"image": 1})]),
    ("blur the background", [("blur_background",)]),
    ("remove the person", [("fill", {"subject": "the person"})]),
    ("fill the hole", [("fill",)]),
    (
        "add the text 'Hello World' at the top in red",
        [("text", {"text": "Hello World", "position": "top", "color": COLORS["red"]})],
    ),
    ('write "50% off" at the bottom', [("text", {"text": "50% off", "position": "bottom"})]),
    # several in one prompt, in prompt order
    ("black and white with a vignette", [("grayscale",), ("vignette",)]),
    (
        "erase the car, then make it warmer and add a vignette",
        [("fill", {"subject": "the car"}), ("temperature",), ("vignette",)],
    ),
    # Chinese
    ("把图片变成黑白的", [("grayscale",)]),
    ("复古", [("sepia",)]),
    ("稍微调亮一点", [("brightness", {"amount": 0.5})]),
    ("调暗", [("brightness", {"amount": -1.0})]),
    ("对比度调高", [("contrast",)]),
    ("降低饱和度", [("saturation", {"amount": -1.0})]),
    ("暖色调", [("temperature",)]),
    ("模糊", [("blur",)]),
    ("锐化", [("sharpen",)]),
    ("打马赛克", [("pixelate",)]),
    ("反色", [("invert",)]),
    ("水平翻转", [("flip", {"axis": "horizontal"})]),
    ("逆时针旋转90度", [("rotate", {"degrees": 270})]),
    ("素描", [("sketch",)]),
    ("卡通风格", [("cartoon",)]),
    ("色调分离", [("posterize",)]),
    ("加暗角", [("vignette",)]),
    ("裁剪到主体", [("crop_subject",)]),
    ("抠图", [("remove_background",)]),
    ("蓝底", [("background_color", {"color": COLORS["blue"]})]),
    ("把背景换成白色", [("background_color", {"color": COLORS["white"]})]),
    ("用第二张图作为背景", [("background_image", {"image": 1})]),
    ("背景虚化", [("blur_background",)]),
    ("把这个人去掉", [("fill", {"subject": "这个人"})]),
    ("去掉水印", [("fill", {"subject": "水印"})]),
    ("添加文字“你好”在顶部", [("text", {"text": "你好", "position": "top"})]),
    ("黑白并加暗角", [("grayscale",), ("vignette",)]),
    ("请把照片调成暖色调，然后锐化一下", [("temperature",), ("sharpen",)]),
]


@pytest.mark.parametrize(("prompt", "expected"), TABLE, ids=[p for p, _ in TABLE])
def test_phrase_means(prompt: str, expected: list[tuple[Any, ...]]) -> None:
    assert summary(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "unknown"),
    [
        ("add a red rose", "red rose"),
        ("加一朵红玫瑰", "朵红玫瑰"),
        ("black and white and add a dragon", "dragon"),
        ("make it look like a watercolor", "watercolor"),
        ("a photo of a cat", "cat"),
        ("make it 'pop' and vivid", None),
        ("", None),
        ("please", None),
    ],
)
def test_unknown_words_refuse_the_whole_prompt(prompt: str, unknown: str | None) -> None:
    if unknown is None and prompt == "make it 'pop' and vivid":
        # a quoted word that is not text to add is not an instruction either
        assert [op.name for op in parse(prompt)] == ["text", "saturation"]
        return
    with pytest.raises(NotUnderstood) as info:
        parse(prompt)
    if unknown:
        assert unknown in info.value.fragment


def test_quoted_text_is_never_read_as_instructions() -> None:
    ops = parse("add the text 'black and white'")
    assert [(op.name, op.text) for op in ops] == [("text", "black and white")]


def test_apostrophes_do_not_open_quotes() -> None:
    assert [op.name for op in parse("let's make it brighter")] == ["brightness"]
    with pytest.raises(NotUnderstood):
        parse("don't blur it")  # negation is not understood, so it is not carried out
