"""``ImagesResponse`` and the image stream events (edits now; generations share the shapes)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from retouch.protocol.common import ErrorEvent, OpenAIBaseModel

OutputFormat = Literal["png", "jpeg", "webp"]
Quality = Literal["low", "medium", "high", "auto", "standard"]
Background = Literal["transparent", "opaque"]


class InputTokensDetails(OpenAIBaseModel):
    text_tokens: int
    image_tokens: int


class ImagesUsage(OpenAIBaseModel):
    """Token usage of one response (GPT-image families; dall-e-2 responses carry none)."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    total_tokens: int


class Image(OpenAIBaseModel):
    """One output image: base64 data or a signed URL, never both."""

    b64_json: bytes | None = Field(None, description="Base64 image (ASCII bytes).")
    url: str | None = Field(None, description="Signed link (response_format=url).")


class ImagesResponse(OpenAIBaseModel):
    created: int
    data: list[Image]
    background: Background | None = None
    output_format: OutputFormat | None = None
    quality: Quality | None = None
    size: str | None = None
    safety_identifier: str | None = None
    usage: ImagesUsage | None = None


class _ImageEvent(OpenAIBaseModel):
    type: str
    b64_json: bytes = Field(description="Base64 image (ASCII bytes).")
    background: Background
    created_at: int
    output_format: OutputFormat
    quality: Quality
    size: str
    safety_identifier: str | None = None


class _PartialImage(_ImageEvent):
    partial_image_index: int = Field(description="0-based, in the order the partials were sent.")


class _Completed(_ImageEvent):
    usage: ImagesUsage


class ImageEditPartialImageEvent(_PartialImage):
    type: Literal["image_edit.partial_image"] = "image_edit.partial_image"


class ImageEditCompletedEvent(_Completed):
    type: Literal["image_edit.completed"] = "image_edit.completed"


class ImageGenPartialImageEvent(_PartialImage):
    type: Literal["image_generation.partial_image"] = "image_generation.partial_image"


class ImageGenCompletedEvent(_Completed):
    type: Literal["image_generation.completed"] = "image_generation.completed"


ImageEditStreamEvent = Annotated[
    ImageEditPartialImageEvent | ImageEditCompletedEvent, Field(discriminator="type")
]
ImageGenStreamEvent = Annotated[
    ImageGenPartialImageEvent | ImageGenCompletedEvent, Field(discriminator="type")
]
StreamEvent = Annotated[
    ImageEditPartialImageEvent
    | ImageEditCompletedEvent
    | ImageGenPartialImageEvent
    | ImageGenCompletedEvent
    | ErrorEvent,
    Field(discriminator="type"),
]
"""Any frame an image stream may carry."""
