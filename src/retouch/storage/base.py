"""The blob-store seam. A store keeps bytes under a key until it expires.

Implementations: ``LocalBlobStore`` (a folder; retouch serves the links itself). An object store
(S3 and friends) implements the same four methods; its contract tests are in
``tests/test_storage.py`` (``BlobStoreContract``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Blob:
    data: bytes
    content_type: str


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
