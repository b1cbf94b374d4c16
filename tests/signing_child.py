"""The child process of ``tests/test_storage.py``'s key race, in a module of its own: a spawned
child imports the module that holds its target, and this one needs only the signer (the test
module would cost each of its 24 children some 2 s of imports on a 2-core host)."""

from __future__ import annotations

from pathlib import Path

from retouch.storage.signing import UrlSigner


def start_signer(data_dir: str, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    signer = UrlSigner.from_settings([], Path(data_dir))
    out.put(signer.sign("k", 1))  # type: ignore[attr-defined]
