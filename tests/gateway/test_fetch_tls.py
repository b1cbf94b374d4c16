"""TLS with a pinned address: the socket goes to the vetted IP while the certificate is still
checked against the URL's host name (SNI), against a real TLS server on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from retouch.net.fetch import Fetcher, FetchFailed, FetchPolicy, IPAddress
from tests.conftest import png_bytes
from tests.gateway.hosts import ImageHost

pytestmark = pytest.mark.anyio
IMAGE = png_bytes((8, 8))


def _cert(subject: str, issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None,
          key: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )  # fmt: skip
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(subject)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """An image host on 127.0.0.1 whose certificate names only ``images.test``."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("retouch test CA", ca_key, None, ca_key, ca=True)
    leaf = _cert("images.test", ca_key, ca.subject, key, ca=False)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (folder / "leaf.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))  # fmt: skip
    config = uvicorn.Config(
        ImageHost(IMAGE).app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
        ssl_certfile=str(folder / "leaf.pem"), ssl_keyfile=str(folder / "leaf.key"),
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the TLS host did not start")
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1], folder / "ca.pem"
    server.should_exit = True
    thread.join(10)


async def to_loopback(host: str, port: int) -> list[IPAddress]:
    return [ipaddress.ip_address("127.0.0.1")]


def fetcher(ca: Path) -> Fetcher:
    return Fetcher(resolver=to_loopback, ssl_context=ssl.create_default_context(cafile=str(ca)))


POLICY = FetchPolicy(max_bytes=1 << 20, allow_networks=(ipaddress.ip_network("127.0.0.0/8"),))


async def test_the_certificate_is_checked_against_the_name(tls_host: tuple[int, Path]) -> None:
    port, ca = tls_host
    fetched = await fetcher(ca).get(f"https://images.test:{port}/img", POLICY)
    assert fetched.data == IMAGE


async def test_a_certificate_for_another_name_is_refused(tls_host: tuple[int, Path]) -> None:
    port, ca = tls_host
    with pytest.raises(FetchFailed) as info:
        await fetcher(ca).get(f"https://other.test:{port}/img", POLICY)
    assert info.value.kind == "unreachable"  # the TLS handshake failed
