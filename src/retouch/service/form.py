"""The request as it arrived, before validation: text fields and uploaded files.

Both the multipart reader and the JSON-body reader produce an ``EditForm``; ``params.py`` turns it
into validated ``EditParams`` once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from retouch.types import Upload

__all__ = ["EditForm", "Upload"]  # Upload lives in the leaf ``retouch.types``


@dataclass
class EditForm:
    fields: dict[str, str] = field(default_factory=dict)
    """Text fields, empty values already dropped."""
    images: list[Upload] = field(default_factory=list)
    """Input images in request order, whatever spelling they came in."""
    mask: Upload | None = None
    json_body: bool = False
    """Sent as OpenAI's JSON edit variant (GPT-image models only, no ``response_format``)."""
