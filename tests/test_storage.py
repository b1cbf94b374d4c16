"""The blob-store contract (every store must pass it) and the URL signatures."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from retouch.storage.local import LocalBlobStore
from retouch.storage.signing import UrlSigner

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 32


class BlobStoreContract:
    """Subclass with a ``store`` fixture to check another backend."""

    def test_put_get_roundtrip(self, store: LocalBlobStore) -> None:
        key = store.put(PNG, content_type="image/png", extension="png", expires_at=int(time.time()) + 60)
        blob = store.get(key)
        assert blob is not None
        assert (blob.data, blob.content_type) == (PNG, "image/png")

    def test_keys_are_unguessable_and_distinct(self, store: LocalBlobStore) -> None:
        exp = int(time.time()) + 60
        keys = {store.put(PNG, content_type="image/png", extension="png", expires_at=exp) for _ in range(20)}
        assert len(keys) == 20
        assert all(len(k) > 40 for k in keys)

    def test_expired_blob_is_gone_and_swept(self, store: LocalBlobStore) -> None:
        now = int(time.time())
        old = store.put(PNG, content_type="image/png", extension="png", expires_at=now - 1)
        fresh = store.put(PNG, content_type="image/png", extension="png", expires_at=now + 60)
        assert store.get(old) is None
        assert store.sweep(now) == 1
        assert store.get(fresh) is not None

    def test_unknown_and_malicious_keys(self, store: LocalBlobStore) -> None:
        assert store.get("nope") is None
        assert store.get("../../etc/passwd") is None
        assert store.get(f"{int(time.time()) + 60}_{'a' * 32}.png") is None

    def test_refuses_types_it_must_never_serve(self, store: LocalBlobStore) -> None:
        with pytest.raises(ValueError, match="unsupported"):
            store.put(b"<svg/>", content_type="image/svg+xml", extension="svg", expires_at=0)

    def test_delete(self, store: LocalBlobStore) -> None:
        key = store.put(PNG, content_type="image/png", extension="png", expires_at=int(time.time()) + 60)
        store.delete(key)
        assert store.get(key) is None


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalBlobStore:
        return LocalBlobStore(tmp_path / "blobs")


def test_signatures_verify_and_rotate(tmp_path: Path) -> None:
    old, new = UrlSigner([b"old"]), UrlSigner([b"new", b"old"])
    sig = old.sign("k.png", 100)
    assert new.verify("k.png", 100, sig)  # rotation: old links stay valid
    assert not new.verify("k.png", 101, sig)  # expiry is signed
    assert not new.verify("k2.png", 100, sig)
    assert not UrlSigner([b"other"]).verify("k.png", 100, sig)
    assert not new.verify("k.png", 100, sig[:-1])


def test_generated_key_is_kept_private(tmp_path: Path) -> None:
    a = UrlSigner.from_settings([], tmp_path)
    b = UrlSigner.from_settings([], tmp_path)
    assert b.verify("k", 1, a.sign("k", 1))
    assert (tmp_path / "signing.key").stat().st_mode & 0o077 == 0


def _start_signer(data_dir: str, start: object, out: object) -> None:
    start.wait()  # type: ignore[attr-defined]
    signer = UrlSigner.from_settings([], Path(data_dir))
    out.put(signer.sign("k", 1))  # type: ignore[attr-defined]


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    """Eight processes create the key at the same moment: all end up signing with one key,
    and no temporary file is left behind."""
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        data_dir = tmp_path / f"data{attempt}"
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=_start_signer, args=(str(data_dir), start, out)) for _ in range(8)
        ]
        for proc in procs:
            proc.start()
        start.set()
        signatures = {out.get(timeout=60) for _ in procs}
        for proc in procs:
            proc.join(timeout=30)
            assert proc.exitcode == 0
        assert len(signatures) == 1
        assert [p.name for p in data_dir.iterdir()] == ["signing.key"]
        key = data_dir / "signing.key"
        assert key.stat().st_mode & 0o777 == 0o600
        assert UrlSigner.from_settings([], data_dir).sign("k", 1) in signatures


def test_threads_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    barrier = threading.Barrier(16)

    def start() -> str:
        barrier.wait()
        return UrlSigner.from_settings([], tmp_path).sign("k", 1)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        signatures = set(pool.map(lambda _: start(), range(16)))
    assert len(signatures) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]


def test_an_empty_key_file_is_an_error_not_an_empty_key(tmp_path: Path) -> None:
    (tmp_path / "signing.key").write_text("")
    with pytest.raises(ValueError, match="empty"):
        UrlSigner.from_settings([], tmp_path)
