"""HMAC-SHA256 signatures for blob links: over the exact key and expiry, compared in constant
time, with several keys so they can be rotated (the first signs, all verify)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path


class UrlSigner:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = keys

    @classmethod
    def from_settings(cls, configured: list[str], data_dir: Path) -> UrlSigner:
        if configured:
            return cls([k.encode() for k in configured])
        path = data_dir / "signing.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return cls([path.read_text().strip().encode()])

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
