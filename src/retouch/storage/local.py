"""Blobs as files in ``DATA_DIR/blobs``; the expiry is part of the file name."""

from __future__ import annotations

import re
import secrets
import time
from pathlib import Path

from retouch.storage.base import Blob

_KEY = re.compile(r"^([0-9]{10,12})_([A-Za-z0-9_-]{22,64})\.(png|jpeg|webp)$")
_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, *, content_type: str, extension: str, expires_at: int) -> str:
        if extension not in _TYPES or _TYPES[extension] != content_type:
            raise ValueError(f"unsupported blob type {content_type} / {extension}")
        key = f"{expires_at}_{secrets.token_urlsafe(24)}.{extension}"
        tmp = self.root / f".{key}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.root / key)
        return key

    def get(self, key: str) -> Blob | None:
        match = _KEY.match(key)
        if not match or int(match[1]) < time.time():
            return None
        try:
            data = (self.root / key).read_bytes()
        except OSError:
            return None
        return Blob(data, _TYPES[match[3]])

    def delete(self, key: str) -> None:
        if _KEY.match(key):
            (self.root / key).unlink(missing_ok=True)

    def sweep(self, now: int) -> int:
        deleted = 0
        for path in self.root.iterdir():
            match = _KEY.match(path.name)
            if match and int(match[1]) < now:
                path.unlink(missing_ok=True)
                deleted += 1
        return deleted
