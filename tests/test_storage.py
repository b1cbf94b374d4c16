"""The blob-store contract, run against every store (local folder, S3 on a real SeaweedFS),
S3-only behaviour (bucket creation, presigned URLs, credentials) and the URL signatures."""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from PIL import Image

from retouch.config import S3Settings, Settings
from retouch.storage.base import BlobStore
from retouch.storage.local import LocalBlobStore
from retouch.storage.s3 import S3BlobStore
from retouch.storage.signing import UrlSigner
from tests.conftest import echo_models
from tests.seaweed import SeaweedS3
from tests.signing_child import start_signer
from tests.test_contract_edits import png_file, rgba_with_hole

PNG = b"\x89PNG\r\n\x1a\n" + b"0" * 32


def s3_settings(server: SeaweedS3, **overrides: Any) -> S3Settings:
    # A fresh prefix per test: sweeps and listings see only this test's objects.
    values: dict[str, Any] = {"endpoint_url": server.url, "bucket": server.bucket,
                              "addressing_style": "path", "prefix": f"t-{secrets.token_hex(4)}/"}  # fmt: skip
    return S3Settings(**{**values, **overrides})


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    made: BlobStore
    if request.param == "local":
        made = LocalBlobStore(tmp_path / "blobs")
    else:
        server = request.getfixturevalue("s3_env")
        s3 = S3BlobStore(s3_settings(server))
        s3.prepare()
        made = s3
    yield made
    made.close()


def put(store: BlobStore, expires_at: int, data: bytes = PNG) -> str:
    return store.put(data, content_type="image/png", extension="png", expires_at=expires_at)


# -- the contract: every store ------------------------------------------------------------------


def test_put_get_roundtrip(store: BlobStore) -> None:
    data = PNG + secrets.token_bytes(300_000)
    key = put(store, int(time.time()) + 60, data)
    blob = store.get(key)
    assert blob is not None
    assert (blob.data, blob.content_type) == (data, "image/png")


def test_each_type_keeps_its_content_type(store: BlobStore) -> None:
    for ext, ctype in [("jpeg", "image/jpeg"), ("webp", "image/webp")]:
        key = store.put(b"x", content_type=ctype, extension=ext, expires_at=int(time.time()) + 60)
        assert key.endswith(f".{ext}")
        blob = store.get(key)
        assert blob is not None
        assert blob.content_type == ctype


def test_keys_are_unguessable_and_distinct(store: BlobStore) -> None:
    exp = int(time.time()) + 60
    keys = {put(store, exp) for _ in range(20)}
    assert len(keys) == 20
    assert all(len(k) > 40 for k in keys)


def test_expired_blob_is_gone_and_swept(store: BlobStore) -> None:
    now = int(time.time())
    old = [put(store, now - 100), put(store, now - 1)]
    fresh = put(store, now + 60)
    assert all(store.get(k) is None for k in old)
    assert store.sweep(now) == 2
    assert store.sweep(now) == 0
    assert store.get(fresh) is not None


def test_unknown_and_malicious_keys(store: BlobStore) -> None:
    assert store.get("nope") is None
    assert store.get("../../etc/passwd") is None
    assert store.get(f"{int(time.time()) + 60}_../../{'a' * 32}.png") is None
    assert store.get(f"{int(time.time()) + 60}_{'a' * 32}.png") is None
    store.delete("../../etc/passwd")  # ignored, not an error


def test_refuses_types_it_must_never_serve(store: BlobStore) -> None:
    with pytest.raises(ValueError, match="unsupported"):
        store.put(b"<svg/>", content_type="image/svg+xml", extension="svg", expires_at=0)
    with pytest.raises(ValueError, match="unsupported"):
        store.put(b"x", content_type="text/html", extension="png", expires_at=0)


def test_delete(store: BlobStore) -> None:
    key = put(store, int(time.time()) + 60)
    store.delete(key)
    assert store.get(key) is None
    store.delete(key)  # twice is fine


def test_local_store_has_no_direct_links(tmp_path: Path) -> None:
    assert LocalBlobStore(tmp_path).direct_url("k", 0) is None


# -- S3 only ------------------------------------------------------------------------------------


@pytest.mark.s3
def test_bucket_is_created_when_missing(s3_env: SeaweedS3) -> None:
    bucket = f"made-{secrets.token_hex(4)}"
    store = S3BlobStore(s3_settings(s3_env, bucket=bucket))
    store.prepare()
    store.prepare()  # a second front finds it
    key = put(store, int(time.time()) + 60)
    assert store.get(key) is not None
    client: Any = s3_env.client()
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}


@pytest.mark.s3
def test_missing_bucket_without_create_names_the_bucket(s3_env: SeaweedS3) -> None:
    store = S3BlobStore(s3_settings(s3_env, bucket=f"absent-{secrets.token_hex(4)}", create_bucket=False))
    with pytest.raises(RuntimeError, match="absent-"):
        store.prepare()


@pytest.mark.s3
def test_wrong_credentials_are_refused_at_start(
    s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = S3BlobStore(s3_settings(s3_env))
    with pytest.raises(Exception, match="(?i)signature|denied|403"):
        store.prepare()


@pytest.mark.s3
def test_presigned_urls_serve_the_blob_and_refuse_tampering(s3_env: SeaweedS3) -> None:
    store = S3BlobStore(s3_settings(s3_env, presign=True))
    key = put(store, int(time.time()) + 60)
    url = store.direct_url(key, int(time.time()) + 60)
    assert url is not None
    assert "X-Amz-Signature=" in url
    assert "X-Amz-Expires=" in url
    reply = httpx2.get(url)
    assert reply.status_code == 200
    assert reply.content == PNG
    tampered = url.replace(key, put(store, int(time.time()) + 60))
    assert httpx2.get(tampered).status_code == 403
    # Unsigned, the object is private.
    assert httpx2.get(url.split("?")[0]).status_code == 403


@pytest.mark.s3
def test_presign_endpoint_names_the_public_address(s3_env: SeaweedS3) -> None:
    store = S3BlobStore(s3_settings(s3_env, presign=True, presign_endpoint_url="https://img.example.com"))
    url = store.direct_url(put(store, int(time.time()) + 60), int(time.time()) + 60)
    assert url is not None
    assert url.startswith("https://img.example.com/")


@pytest.mark.s3
def test_lifecycle_rule_is_installed_for_the_prefix(s3_env: SeaweedS3) -> None:
    settings = s3_settings(s3_env, lifecycle_days=2)
    S3BlobStore(settings).prepare()
    client: Any = s3_env.client()
    rules = client.get_bucket_lifecycle_configuration(Bucket=s3_env.bucket)["Rules"]
    assert [(r["Filter"]["Prefix"], r["Expiration"]["Days"], r["Status"]) for r in rules] == [
        (settings.prefix, 2, "Enabled")
    ]


@pytest.mark.s3
def test_sweep_deletes_in_batches_and_stops_at_live_keys(s3_env: SeaweedS3) -> None:
    store = S3BlobStore(s3_settings(s3_env))
    now = int(time.time())
    expired = [put(store, now - 10 - i, b"x") for i in range(25)]
    live = [put(store, now + 60, b"x") for _ in range(3)]
    assert store.sweep(now) == len(expired)
    assert all(store.get(k) is not None for k in live)


@pytest.mark.s3
@pytest.mark.anyio
async def test_links_from_one_front_are_served_by_another(
    s3_env: SeaweedS3, harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    """Two fronts that share only S3 and the signing key (no data folder in common)."""
    fronts, shared = [], s3_settings(s3_env).model_dump()
    for name in ("a", "b"):
        settings = make_settings(
            models=echo_models(), data_dir=make_settings().data_dir / name,
            storage={"backend": "s3", "signing_keys": ["shared-secret"],
                     "s3": shared},
        )  # fmt: skip
        fronts.append(await harness_factory(settings))
    a, b = fronts
    result = await a.sdk.images.edit(
        model="dall-e-2", image=png_file(rgba_with_hole()), prompt="x", size="256x256",
        response_format="url",
    )  # fmt: skip
    url = result.data[0].url or ""
    fetched = await b.http.get(url)
    assert fetched.status_code == 200, fetched.text
    assert Image.open(io.BytesIO(fetched.content)).size == (256, 256)
    assert not (a.services.settings.data_dir / "blobs").exists()


@pytest.mark.s3
@pytest.mark.anyio
async def test_presigned_links_in_responses(
    s3_env: SeaweedS3, harness_factory: Callable[..., Any], make_settings: Callable[..., Settings]
) -> None:
    front = await harness_factory(make_settings(
        models=echo_models(),
        storage={"backend": "s3", "s3": s3_settings(s3_env, presign=True).model_dump()},
    ))  # fmt: skip
    result = await front.sdk.images.edit(
        model="dall-e-2", image=png_file(rgba_with_hole()), prompt="x", size="256x256",
        response_format="url",
    )  # fmt: skip
    url = result.data[0].url or ""
    assert url.startswith(s3_env.url)
    assert "X-Amz-Signature=" in url
    fetched = httpx2.get(url)
    assert fetched.status_code == 200
    assert fetched.headers["content-type"] == "image/png"


# -- signatures ---------------------------------------------------------------------------------


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


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    """Eight processes create the key at the same moment: all end up signing with one key,
    and no temporary file is left behind."""
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        data_dir = tmp_path / f"data{attempt}"
        start, out = ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=start_signer, args=(str(data_dir), start, out)) for _ in range(8)
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


def test_a_signature_with_non_ascii_characters_is_invalid_not_an_error(tmp_path: Path) -> None:
    signer = UrlSigner.from_settings([], tmp_path)
    assert not signer.verify("key", 0, "\xa0")
    assert not signer.verify("key", 0, "\udcff")
