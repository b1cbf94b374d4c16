"""Wire shapes of the OpenAI images API, named after openai-python's types.

Only shapes live here: the service builds these models (without re-validating what it already
validated), ``retouch.api.render`` turns them into JSON and SSE bytes, and tests parse responses
with them. Base64 payloads are carried as ASCII ``bytes`` so the renderer can splice them into
the JSON without a JSON encoder scanning megabytes of them.
"""

from retouch.protocol.common import ErrorEvent, ErrorObject, ErrorResponse, OpenAIBaseModel
from retouch.protocol.images import (
    Image,
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageEditStreamEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImageGenStreamEvent,
    ImagesResponse,
    ImagesUsage,
    InputTokensDetails,
    StreamEvent,
)

__all__ = [
    "ErrorEvent",
    "ErrorObject",
    "ErrorResponse",
    "Image",
    "ImageEditCompletedEvent",
    "ImageEditPartialImageEvent",
    "ImageEditStreamEvent",
    "ImageGenCompletedEvent",
    "ImageGenPartialImageEvent",
    "ImageGenStreamEvent",
    "ImagesResponse",
    "ImagesUsage",
    "InputTokensDetails",
    "OpenAIBaseModel",
    "StreamEvent",
]
