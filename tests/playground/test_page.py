"""The playground page, driven as a person would: upload, paint a mask, stream, download."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path

import numpy as np
import openai
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from retouch.config import Settings, default_models
from tests.accounts.conftest import Accounts
from tests.live import LiveServer
from tests.playground.conftest import RecordingServer, cat_photo, open_page, shot

pytestmark = pytest.mark.browser

PHOTO = cat_photo()  # 451 x 300


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))


def multipart(content_type: str, body: bytes) -> dict[str, list[tuple[str | None, bytes]]]:
    """The parts of a multipart body by field name: (filename, bytes)."""
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts: dict[str, list[tuple[str | None, bytes]]] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        parts.setdefault(name, []).append((part.get_filename(), part.get_payload(decode=True)))
    return parts


def wait_for_models(page: Page) -> None:
    expect(page.locator("#model option[value=classic]")).to_have_count(1)


def upload(page: Page, tmp_path: Path, data: bytes = PHOTO, name: str = "cat.png") -> None:
    path = tmp_path / name
    path.write_bytes(data)
    before = page.locator("#thumbs li").count()
    page.set_input_files("#file-input", str(path))
    expect(page.locator("#thumbs li")).to_have_count(before + 1)


def paint(page: Page, points: list[tuple[float, float]]) -> None:
    """A brush stroke through ``points`` given as fractions of the canvas."""
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for x, y in at[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def test_page_loads_without_console_errors(browser: Browser, server: LiveServer) -> None:
    page, console = open_page(browser, server.url)
    wait_for_models(page)
    expect(page.locator("#server-status")).to_contain_text("open server")
    expect(page.locator("#run")).to_be_disabled()  # no image, no prompt yet
    expect(page.locator("#problems")).to_contain_text("Add at least one image.")
    shot(page, "01-loaded")
    assert console.errors == []
    page.context.close()


def test_remove_with_a_painted_mask_streams_and_equals_the_api(
    browser: Browser, server: RecordingServer, tmp_path: Path
) -> None:
    page, console = open_page(browser, server.url)
    wait_for_models(page)
    page.select_option("#model", "classic")
    upload(page, tmp_path)
    expect(page.locator("#base-image")).to_be_visible()
    paint(page, [(0.30, 0.30), (0.38, 0.36), (0.45, 0.42)])
    page.fill("#prompt", "remove this")
    page.fill("#partial_images", "2")
    shot(page, "02-mask-painted")
    server.recorded.clear()
    page.click("#run")
    card = page.locator("#gallery .card").first
    expect(card).to_be_visible()
    expect(page.locator("#progress-text")).to_contain_text("finished")
    assert page.locator("#partials li").count() >= 1
    shot(page, "03-result")

    # what the page sent, as the server received it (Playwright does not expose multipart
    # bodies with files)
    [(content_type, body)] = server.recorded
    parts = multipart(content_type, body)
    fields = {k: v[0][1].decode() for k, v in parts.items() if v[0][0] is None}
    assert fields["stream"] == "true"
    assert fields["partial_images"] == "2"
    assert fields["model"] == "classic"
    assert parts["image[]"][0][1] == PHOTO  # the upload itself, not a re-encoding
    mask = pixels(parts["mask"][0][1])
    assert mask.shape[:2] == (300, 451)  # at the image's own size
    alpha = mask[..., 3]
    assert (alpha == 0).sum() > 500  # painted: to edit
    assert alpha[5, 5] == 255  # untouched corner: kept
    assert alpha[int(0.36 * 300), int(0.38 * 451)] == 0  # on the stroke

    with page.expect_download() as download:
        card.locator("a.download").click()
    saved = Path(download.value.path())
    assert download.value.suggested_filename.endswith(".png")

    # The same request through the official SDK, without streaming: identical pixels.
    with server.sdk() as client:
        expected = client.images.edit(
            model="classic", image=("cat.png", PHOTO, "image/png"),
            mask=("mask.png", parts["mask"][0][1], "image/png"), prompt="remove this",
            size=fields["size"], quality=fields["quality"],  # type: ignore[arg-type]
            output_format=fields["output_format"], background=fields["background"],  # type: ignore[arg-type]
        )  # fmt: skip
    assert expected.data
    api_pixels = pixels(base64.b64decode(expected.data[0].b64_json or ""))
    assert np.array_equal(pixels(saved.read_bytes()), api_pixels)
    assert not np.array_equal(api_pixels[..., :3], pixels(PHOTO)[..., :3])  # it did edit
    assert card.locator("dd").first.inner_text() == f"{expected.size}"
    assert expected.usage is not None
    # input tokens are the same request's; output differs (streamed partials are billed)
    expect(card).to_contain_text(f"{expected.usage.input_tokens} in")

    # the before/after slider moves the divider
    slider = card.locator("input[type=range]")
    slider.fill("20")
    assert "20%" in (card.locator(".divider").get_attribute("style") or "")
    assert console.errors == []
    page.context.close()


def test_the_servers_error_is_shown_as_is(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    with server.sdk() as client, pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(model="classic", image=("cat.png", PHOTO), prompt="add a red rose")
    message = refused.value.body["message"]  # type: ignore[index]
    page, _ = open_page(browser, server.url)
    wait_for_models(page)
    page.select_option("#model", "classic")
    upload(page, tmp_path)
    page.fill("#prompt", "add a red rose")
    page.click("#run")
    error = page.locator("#error")
    expect(error).to_be_visible()
    assert error.locator("strong").inner_text() == message
    expect(error).to_contain_text("HTTP 400")
    expect(page.locator("#progress-text")).to_contain_text("failed")
    shot(page, "04-error")
    page.context.close()


def test_disallowed_combinations_are_explained_before_sending(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    page, console = open_page(browser, server.url)
    wait_for_models(page)
    upload(page, tmp_path)
    page.fill("#prompt", "remove the background")
    page.select_option("#model", "gpt-image-1")
    page.select_option("#output_format", "jpeg")
    page.select_option("#background", "transparent")
    problems = page.locator("#problems")
    expect(problems).to_contain_text("A transparent background needs png or webp output, not jpeg.")
    expect(page.locator("#run")).to_be_disabled()
    page.select_option("#output_format", "webp")
    expect(page.locator("#run")).to_be_enabled()
    expect(page.locator("#output_compression")).to_be_enabled()
    page.select_option("#output_format", "png")
    expect(page.locator("#output_compression")).to_be_disabled()  # lossless: nothing to set
    # gpt-image-2's free sizes, with the reasons a size is refused
    page.select_option("#model", "gpt-image-2")
    expect(page.locator("[data-param=input_fidelity]")).to_be_hidden()
    page.select_option("#size", "custom")
    page.fill("#size-w", "1000")
    page.fill("#size-h", "4000")
    expect(problems).to_contain_text("multiples of 16")
    expect(problems).to_contain_text("within 1:3 and 3:1")
    expect(problems).to_contain_text("Edges may be at most 3840 pixels.")
    page.fill("#size-w", "1024")
    page.fill("#size-h", "768")
    expect(page.locator("#run")).to_be_enabled()
    # dall-e-2 takes one square PNG and no output options
    page.select_option("#model", "dall-e-2")
    expect(problems).to_contain_text("dall-e-2 takes one square PNG image.")
    expect(page.locator("[data-param=output_format]")).to_be_hidden()
    # a model without text-to-image support
    page.check("input[name=mode][value=generate]")
    page.select_option("#model", "classic")
    expect(page.locator("#editor-section")).to_be_hidden()
    expect(problems).to_contain_text("classic cannot generate images from text")
    shot(page, "05-explained")
    assert console.errors == []
    page.context.close()


def test_images_by_drop_and_paste_reorder_and_remove(
    browser: Browser, server: LiveServer, tmp_path: Path
) -> None:
    page, console = open_page(browser, server.url)
    wait_for_models(page)
    upload(page, tmp_path)
    small = cat_photo((120, 80))
    page.evaluate(
        """async ([b64, how]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], how + ".png", { type: "image/png" }));
            if (how === "pasted") document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt }));
            else document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
        }""",
        [base64.b64encode(small).decode(), "dropped"],
    )
    expect(page.locator("#thumbs li")).to_have_count(2)
    page.evaluate(
        """async ([b64, how]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], how + ".png", { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt }));
        }""",
        [base64.b64encode(small).decode(), "pasted"],
    )
    expect(page.locator("#thumbs li")).to_have_count(3)
    alts = page.locator("#thumbs img")
    expect(alts.nth(1)).to_have_attribute("alt", "Image 2: dropped.png")
    expect(alts.nth(2)).to_have_attribute("alt", "Image 3: pasted.png")
    # keyboard: move the pasted one to the front; it becomes the mask's image
    page.get_by_role("button", name="Move image 3 earlier").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")  # focus follows the moved image
    expect(alts.nth(0)).to_have_attribute("alt", "Image 1: pasted.png")
    canvas = page.locator("#mask-canvas")
    assert canvas.evaluate("c => [c.width, c.height]") == [120, 80]
    page.get_by_role("button", name="Remove image 1").click()
    expect(page.locator("#thumbs li")).to_have_count(2)
    assert canvas.evaluate("c => [c.width, c.height]") == [451, 300]
    # classic takes at most two images: a third is explained, not sent
    upload(page, tmp_path, small, "third.png")
    page.fill("#prompt", "use the second image as background")
    page.select_option("#model", "classic")
    expect(page.locator("#problems")).to_contain_text("classic takes at most 2 images; remove 1.")
    # the prompt history keeps what was run
    page.get_by_role("button", name="Remove image 3").click()
    page.click("#run")
    expect(page.locator("#progress-text")).to_contain_text("finished")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#gallery .card")).to_have_count(1)
    page.fill("#prompt", "")
    page.select_option("#history", index=1)
    expect(page.locator("#prompt")).to_have_value("use the second image as background")
    assert console.errors == []
    page.context.close()


def test_keyed_server_asks_for_a_key_once(
    browser: Browser, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    accounts = Accounts(make_settings, f"sqlite:///{tmp_path / 'accounts.db'}")
    _, secret = accounts.create_key("playground")
    settings = accounts.settings(models=default_models())
    with LiveServer(settings, gate_factory=accounts.gate) as server:
        page, console = open_page(browser, server.url)
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#server-status")).to_contain_text("needs an API key")
        shot(page, "06-key-asked", full_page=False)
        page.fill("#key-input", "sk-wrong")
        page.keyboard.press("Enter")
        expect(page.locator("#key-reason")).to_contain_text("The saved key was refused")
        page.fill("#key-input", secret)
        page.click("#key-dialog button[value=save]")
        expect(dialog).to_be_hidden()
        wait_for_models(page)
        expect(page.locator("#server-status")).to_contain_text("key saved in this browser")
        upload(page, tmp_path)
        page.select_option("#model", "classic")
        page.fill("#prompt", "black and white")
        page.click("#run")
        expect(page.locator("#gallery .card")).to_have_count(1)
        assert [r["status"] for r in accounts.rows()] == [200]  # billed to the key
        page.reload()  # kept in the browser: not asked again
        wait_for_models(page)
        expect(dialog).to_be_hidden()
        # 401 console lines are the browser reporting the refused requests, nothing else
        assert [e for e in console.errors if "401" not in e] == []
        page.context.close()
    accounts.close()


def test_phone_sized_screen(browser: Browser, server: LiveServer, tmp_path: Path) -> None:
    page, console = open_page(browser, server.url, viewport={"width": 390, "height": 844},
                              is_mobile=True, has_touch=True, device_scale_factor=2)  # fmt: skip
    wait_for_models(page)
    upload(page, tmp_path)
    page.select_option("#model", "classic")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0  # nothing sticks out sideways
    page.locator("#mask-canvas").scroll_into_view_if_needed()
    box = page.locator("#mask-canvas").bounding_box()
    assert box is not None
    assert box["width"] <= 390
    page.touchscreen.tap(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.4)
    page.fill("#prompt", "remove this")
    run = page.locator("#run")
    run.scroll_into_view_if_needed()
    run_box = run.bounding_box()
    assert run_box is not None
    assert run_box["height"] >= 36  # a finger-sized target
    run.tap()
    expect(page.locator("#progress-text")).to_contain_text("finished")
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#gallery .card")).to_have_count(1)
    page.locator("#results-title").scroll_into_view_if_needed()
    shot(page, "07-phone", full_page=False)
    assert console.errors == []
    page.context.close()
