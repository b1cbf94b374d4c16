"""Blob storage for ``response_format=url`` and the signatures that guard its links."""

from __future__ import annotations

from pathlib import Path

from retouch.config import StorageSettings
from retouch.storage.base import BlobStore


def open_store(settings: StorageSettings, data_dir: Path) -> BlobStore:
    """The configured store, ready to use (an S3 bucket is checked, or created, here)."""
    if settings.backend == "s3":
        from retouch.storage.s3 import S3BlobStore

        store = S3BlobStore(settings.s3)
        store.prepare()
        return store
    from retouch.storage.local import LocalBlobStore

    return LocalBlobStore(data_dir / "blobs")
