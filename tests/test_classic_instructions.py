"""Every instruction of the classic engine, in English and in Chinese, through the HTTP API with
the official SDK. Each check is a property of the result (grey means R == G == B, an inverted
image is 255 - input, ...), so a no-op or a wrong operation fails."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest

from tests.classic_helpers import SIZE, edit, edit_all, scene, subject_mask
from tests.conftest import Harness, decode_b64

pytestmark = pytest.mark.anyio

Check = Callable[[np.ndarray, np.ndarray], None]


def _f(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64)


def _chroma(a: np.ndarray) -> float:
    return float((_f(a).max(axis=2) - _f(a).min(axis=2)).mean())


def _detail(a: np.ndarray) -> float:
    gray = cv2.cvtColor(a[..., :3], cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def grey(src: np.ndarray, out: np.ndarray) -> None:
    assert out.shape == src.shape
    assert np.array_equal(out[..., 0], out[..., 1])
    assert np.array_equal(out[..., 1], out[..., 2])


def sepia(src: np.ndarray, out: np.ndarray) -> None:
    r, g, b = (_f(out[..., i]) for i in range(3))
    assert (r >= g).mean() > 0.95
    assert (g >= b).mean() > 0.95
    assert _chroma(out) > 5


def brighter(src: np.ndarray, out: np.ndarray) -> None:
    assert out.mean() > src.mean() + 5


def darker(src: np.ndarray, out: np.ndarray) -> None:
    assert out.mean() < src.mean() - 5


def more_contrast(src: np.ndarray, out: np.ndarray) -> None:
    assert out.std() > src.std() * 1.1


def less_contrast(src: np.ndarray, out: np.ndarray) -> None:
    assert out.std() < src.std() * 0.9


def more_saturated(src: np.ndarray, out: np.ndarray) -> None:
    assert _chroma(out) > _chroma(src) * 1.15


def less_saturated(src: np.ndarray, out: np.ndarray) -> None:
    assert _chroma(out) < _chroma(src) * 0.85


def warmer(src: np.ndarray, out: np.ndarray) -> None:
    assert (_f(out[..., 0]) - _f(out[..., 2])).mean() > (
        _f(src[..., 0]) - _f(src[..., 2])
    ).mean() + 5


def cooler(src: np.ndarray, out: np.ndarray) -> None:
    assert (_f(out[..., 0]) - _f(out[..., 2])).mean() < (
        _f(src[..., 0]) - _f(src[..., 2])
    ).mean() - 5


def blurred(src: np.ndarray, out: np.ndarray) -> None:
    assert _detail(out) < _detail(src) * 0.5


def sharpened(src: np.ndarray, out: np.ndarray) -> None:
    assert _detail(out) > _detail(src) * 1.3


def pixelated(src: np.ndarray, out: np.ndarray) -> None:
    same_as_left = (out[:, 1:] == out[:, :-1]).all(axis=2).mean()
    assert same_as_left > 0.5 > (src[:, 1:] == src[:, :-1]).all(axis=2).mean()


def inverted(src: np.ndarray, out: np.ndarray) -> None:
    assert np.array_equal(out, 255 - src)


def mirrored(src: np.ndarray, out: np.ndarray) -> None:
    assert np.array_equal(out, src[:, ::-1])


def flipped_vertically(src: np.ndarray, out: np.ndarray) -> None:
    assert np.array_equal(out, src[::-1])


def rotated_clockwise(src: np.ndarray, out: np.ndarray) -> None:
    assert np.array_equal(out, np.rot90(src, -1))


def rotated_180(src: np.ndarray, out: np.ndarray) -> None:
    assert np.array_equal(out, src[::-1, ::-1])


def sketched(src: np.ndarray, out: np.ndarray) -> None:
    grey(src, out)
    assert out.mean() > 180
    assert out.min() < out.mean() - 40


def cartooned(src: np.ndarray, out: np.ndarray) -> None:
    colours = lambda a: len(np.unique(a.reshape(-1, 3), axis=0))  # noqa: E731
    assert colours(out) < colours(src) / 3
    assert _chroma(out) > 5


def posterized(src: np.ndarray, out: np.ndarray) -> None:
    assert all(len(np.unique(out[..., c])) <= 6 for c in range(3))
    assert len(np.unique(src[..., 0])) > 20


def vignetted(src: np.ndarray, out: np.ndarray) -> None:
    c = SIZE // 2
    centre = slice(c - 4, c + 4)
    assert abs(out[centre, centre].mean() - src[centre, centre].mean()) < 3
    assert out[:6, :6].mean() < src[:6, :6].mean() * 0.8


def cropped_to_subject(src: np.ndarray, out: np.ndarray) -> None:
    assert out.shape == src.shape
    orange = lambda a: ((_f(a[..., 0]) - _f(a[..., 2])) > 60).mean()  # noqa: E731
    assert orange(out) > orange(src) * 1.3


def text_at_bottom(src: np.ndarray, out: np.ndarray) -> None:
    changed = (out != src).any(axis=2)
    assert changed[SIZE // 2 :].sum() > 40
    assert not changed[: SIZE // 3].any()


def text_at_top(src: np.ndarray, out: np.ndarray) -> None:
    changed = (out != src).any(axis=2)
    assert changed[: SIZE // 2].sum() > 40
    assert not changed[2 * SIZE // 3 :].any()


def transparent_background(src: np.ndarray, out: np.ndarray) -> None:
    assert out.shape == (SIZE, SIZE, 4)
    alpha = out[..., 3]
    inside = subject_mask(SIZE - 24)  # well inside the disc
    pad = 12
    assert alpha[pad:-pad, pad:-pad][inside].mean() > 200
    assert alpha[:8, :8].mean() < 40
    assert alpha[-8:, -8:].mean() < 40


def white_background(src: np.ndarray, out: np.ndarray) -> None:
    assert out.shape == (SIZE, SIZE, 3)
    assert out[:8, :8].mean() > 230
    assert out[-8:, -8:].mean() > 230
    c = SIZE // 2
    assert (
        np.abs(_f(out[c - 3 : c + 3, c - 3 : c + 3]) - src[c - 3 : c + 3, c - 3 : c + 3]).max() < 40
    )


def blue_background(src: np.ndarray, out: np.ndarray) -> None:
    corner = _f(out[:8, :8]).reshape(-1, 3).mean(axis=0)
    assert corner[2] > 150
    assert corner[2] > corner[0] + 80


def background_blurred(src: np.ndarray, out: np.ndarray) -> None:
    ring = ~subject_mask()
    diff = lambda a: np.abs(np.diff(_f(a), axis=1)).mean(axis=2)[:, :][ring[:, 1:]].mean()  # noqa: E731
    assert diff(out) < diff(src) * 0.6
    c = SIZE // 2
    assert (
        np.abs(_f(out[c - 3 : c + 3, c - 3 : c + 3]) - src[c - 3 : c + 3, c - 3 : c + 3]).max() < 40
    )


CASES: list[tuple[str, str, Check]] = [
    ("black and white", "把图片变成黑白的", grey),
    ("make it sepia", "复古效果", sepia),
    ("make it brighter", "调亮一点", brighter),
    ("darker please", "调暗一些", darker),
    ("more contrast", "增加对比度", more_contrast),
    ("lower the contrast", "降低对比度", less_contrast),
    ("more saturated", "增加饱和度", more_saturated),
    ("desaturate", "降低饱和度", less_saturated),
    ("warmer tones", "暖色调", warmer),
    ("make it cooler", "冷色调", cooler),
    ("blur the image", "模糊", blurred),
    ("sharpen", "锐化", sharpened),
    ("pixelate", "打马赛克", pixelated),
    ("invert the colors", "反色", inverted),
    ("flip horizontally", "水平翻转", mirrored),
    ("flip vertically", "垂直翻转", flipped_vertically),
    ("rotate 90 degrees clockwise", "顺时针旋转90度", rotated_clockwise),
    ("rotate 180", "旋转180度", rotated_180),
    ("pencil sketch", "素描", sketched),
    ("cartoon style", "卡通风格", cartooned),
    ("posterize", "色调分离", posterized),
    ("add a vignette", "加暗角", vignetted),
    ("crop to the subject", "裁剪到主体", cropped_to_subject),
    ("add the text 'Hello'", "添加文字'Hello'", text_at_bottom),
    ("write 'SALE' at the top", "在顶部添加文字'SALE'", text_at_top),
    ("remove the background", "去掉背景", transparent_background),
    ("white background", "换成白色背景", white_background),
    ("put it on a blue background", "蓝底", blue_background),
    ("blur the background", "背景虚化", background_blurred),
]


@pytest.mark.parametrize(
    ("prompt", "check"),
    [pytest.param(p, c, id=p) for en, zh, c in CASES for p in (en, zh)],
)
async def test_instruction(classic: Harness, prompt: str, check: Check) -> None:
    src = scene()
    out = await edit(classic, prompt, src)
    check(src, out)


async def test_several_in_one_prompt(classic: Harness) -> None:
    src = scene()
    for prompt in ("black and white with a vignette", "黑白并加暗角"):
        out = await edit(classic, prompt, src)
        grey(src, out)
        assert out[:6, :6].mean() < out[SIZE // 2 - 4 : SIZE // 2 + 4].mean() * 0.7


async def test_second_image_as_background(classic: Harness) -> None:
    src = scene()
    backdrop = np.zeros_like(src)
    backdrop[:] = (20, 200, 30)
    for prompt in ("use the second image as background", "用第二张图片作为背景"):
        out = await edit(classic, prompt, [src, backdrop])
        assert out.shape == src.shape
        corner = _f(out[:8, :8]).reshape(-1, 3).mean(axis=0)
        assert corner[1] > 170
        assert corner[0] < 60
        c = SIZE // 2
        assert out[c, c, 0] > 150  # the orange subject stays


async def test_masked_instruction_changes_only_the_edit_area(classic: Harness) -> None:
    src = scene()
    hole = np.zeros((SIZE, SIZE), bool)
    hole[10:40, 50:90] = True
    out = await edit(classic, "invert the colors", src, mask=hole)
    assert np.array_equal(out[~hole], src[~hole])
    assert np.array_equal(out[hole], 255 - src[hole])


async def test_openai_model_name_aliases_classic(classic: Harness) -> None:
    src = scene()
    out = await edit(classic, "invert", src, model="gpt-image-1", size="1024x1024", quality="low")
    assert out.shape == (1024, 1024, 3)
    assert out.mean() == pytest.approx(255 - src.mean(), abs=3)


async def test_n_gives_variations_only_where_the_operation_allows(classic: Harness) -> None:
    src = scene()
    a, b = await edit_all(classic, "cartoon", src, n=2)
    assert not np.array_equal(a, b)
    c, d = await edit_all(classic, "black and white", src, n=2)
    assert np.array_equal(c, d)


async def test_auto_size_of_another_aspect_is_cropped_never_stretched(classic: Harness) -> None:
    """gpt-image-1 with size auto turns a 4:3 input into 1536x1024: a circle stays round."""
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (256, 192), (30, 30, 30))
    ImageDraw.Draw(image).ellipse((88, 56, 168, 136), fill=(250, 250, 250))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    result = await classic.sdk.images.edit(
        model="gpt-image-1", image=("a.png", buf.getvalue(), "image/png"), prompt="black and white"
    )
    assert result.size == "1536x1024"
    out = np.asarray(decode_b64(result.data[0].b64_json).convert("L"))
    ys, xs = np.nonzero(out > 128)
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert abs(width / height - 1.0) < 0.05
