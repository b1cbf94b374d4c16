"""The blob-store seam. A store keeps bytes under a key until it expires.

Implementations: ``LocalBlobStore`` (a folder; retouch serves the links itself) and
``S3BlobStore`` (any S3-compatible object store). Every store passes the same contract suite
(``tests/test_storage.py``, parametrised over the stores).

Keys carry their own expiry (``<unix-seconds>_<random>.<ext>``): a store never needs a side
table, and the expiry prefix sorts, so a sweep of a listing can stop at the first live key.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Protocol

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_KEY = re.compile(r"^([0-9]{10,12})_([A-Za-z0-9_-]{22,64})\.(png|jpeg|webp)$")


@dataclass(frozen=True)
class Blob:
    data: bytes
    content_type: str


@dataclass(frozen=True)
class BlobKey:
    key: str
    expires_at: int
    content_type: str


def new_key(*, content_type: str, extension: str, expires_at: int) -> str:
    """A fresh random key; only the image types retouch produces are accepted, so a store can
    never be made to serve anything a browser would run."""
    if CONTENT_TYPES.get(extension) != content_type:
        raise ValueError(f"unsupported blob type {content_type} / {extension}")
    return f"{expires_at:010d}_{secrets.token_urlsafe(24)}.{extension}"


def parse_key(key: str) -> BlobKey | None:
    """The key's parts, or None for anything a store did not make (including path tricks)."""
    match = _KEY.match(key)
    if match is None:
        return None
    return BlobKey(key, int(match[1]), CONTENT_TYPES[match[3]])


class BlobStore(Protocol):
    def put(self, data: bytes, *, content_type: str, extension: str, expires_at: int) -> str:
        """Store ``data`` until ``expires_at`` (unix seconds); returns a new random key."""
        ...

    def get(self, key: str) -> Blob | None:
        """The blob, or None when it does not exist or has expired."""
        ...

    def delete(self, key: str) -> None: ...

    def sweep(self, now: int) -> int:
        """Delete expired blobs; returns how many were deleted."""
        ...

    def direct_url(self, key: str, expires_at: int) -> str | None:
        """A link that serves the blob without retouch (an S3 presigned URL), or None: then
        retouch signs its own ``/v1/blobs/{key}`` link, which any front can serve."""
        ...

    def close(self) -> None: ...
