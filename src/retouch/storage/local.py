"""Blobs as files in ``DATA_DIR/blobs``; the expiry is part of the file name."""

from __future__ import annotations

import time
from pathlib import Path

from retouch.storage.base import Blob, new_key, parse_key


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, *, content_type: str, extension: str, expires_at: int) -> str:
        key = new_key(content_type=content_type, extension=extension, expires_at=expires_at)
        tmp = self.root / f".{key}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / key)
        return key

    def get(self, key: str) -> Blob | None:
        parsed = parse_key(key)
        if parsed is None or parsed.expires_at < time.time():
            return None
        try:
            data = (self.root / key).read_bytes()
        except OSError:
            return None
        return Blob(data, parsed.content_type)

    def delete(self, key: str) -> None:
        if parse_key(key) is not None:
            (self.root / key).unlink(missing_ok=True)

    def sweep(self, now: int) -> int:
        deleted = 0
        for path in self.root.iterdir():
            parsed = parse_key(path.name)
            if parsed is not None and parsed.expires_at < now:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted

    def direct_url(self, key: str, expires_at: int) -> str | None:
        return None

    def close(self) -> None:
        return None
