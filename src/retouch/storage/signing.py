"""HMAC-SHA256 signatures for blob links: over the exact key and expiry, compared in constant
time, with several keys so they can be rotated (the first signs, all verify)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
from pathlib import Path


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``, created on first use so that processes starting together agree.

    The new key is written to a private temporary file (``O_CREAT|O_EXCL``, mode 0600, never
    readable by others even briefly) and published with ``link()``, which fails if the name
    exists: exactly one process wins, and no process can read a half-written key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as file:
                file.write(secrets.token_urlsafe(32))
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another process won: use its key
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if not key:
        raise ValueError(f"the URL signing key file {path} is empty; delete it to make a new one")
    return key.encode()


class UrlSigner:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = keys

    @classmethod
    def from_settings(cls, configured: list[str], data_dir: Path) -> UrlSigner:
        if configured:
            return cls([k.encode() for k in configured])
        return cls([load_or_create_key(data_dir / "signing.key")])

    @staticmethod
    def _mac(key: bytes, blob_key: str, expires: int) -> str:
        digest = hmac.new(key, f"{blob_key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, blob_key: str, expires: int) -> str:
        return self._mac(self._keys[0], blob_key, expires)

    def verify(self, blob_key: str, expires: int, signature: str) -> bool:
        return any(
            hmac.compare_digest(self._mac(k, blob_key, expires), signature) for k in self._keys
        )
