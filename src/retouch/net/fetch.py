"""SSRF-safe HTTP(S) GETs: ``image_url`` inputs and mirrored upstream links.

A URL a client (or an upstream) hands us may point anywhere, so a fetch follows these rules
(``limits-and-performance.md`` §1, row 11):

* only ``http`` and ``https``, and no credentials in the URL;
* the host is resolved once per hop and every address it resolves to must be public: private,
  loopback, link-local (169.254.169.254 included), multicast, reserved, unspecified and shared
  (100.64/10) addresses are refused, and IPv6 forms that carry an IPv4 address (IPv4-mapped,
  6to4, NAT64) are judged by that address. Exceptions: addresses in ``allow_networks``, and
  origins in ``allow_origins`` (a relay's upstream may well be another server on loopback);
* the connection goes to the vetted address itself, with the URL's host as ``Host`` header and
  TLS server name, so a second DNS answer cannot swap in another address (DNS rebinding);
* redirects are followed by hand, each target checked again like the first URL, at most
  ``max_redirects`` of them;
* ``Content-Length`` is checked first but not trusted: the body is counted as it streams in
  (after content decoding, so a compressed bomb stops at the same cap);
* one deadline covers resolution, every hop and the body.

Proxies from the environment are ignored (``trust_env=False``): a proxy would connect to
whatever address it resolves, defeating the check.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import httpx

from retouch.config import FetchSettings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Origin = tuple[str, str, int]
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]
FetchKind = Literal[
    "bad_url", "blocked_address", "unresolvable", "unreachable", "timeout", "http_status",
    "too_many_redirects", "too_large", "over_budget",
]  # fmt: skip

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_ACCEPT = "image/png,image/jpeg,image/webp,image/*;q=0.8"


class FetchFailed(Exception):
    """A fetch was refused or failed; ``kind`` says why, ``message`` says it to a person
    (without internal addresses). Callers turn it into their own error (a 400 naming the
    input, a 502 for a mirrored link)."""

    def __init__(self, kind: FetchKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int
    """Largest body accepted (decoded bytes)."""
    timeout_s: float = 20.0
    """Deadline for the whole fetch: resolution, redirects and the body."""
    connect_timeout_s: float = 5.0
    max_redirects: int = 5
    allow_networks: tuple[IPNetwork, ...] = ()
    """Non-public networks that may be fetched anyway (an internal image host)."""
    allow_origins: frozenset[Origin] = frozenset()
    """(scheme, host, port) whose addresses are not checked (a relay's own upstream)."""

    @classmethod
    def from_settings(cls, fetch: FetchSettings, *, max_bytes: int) -> FetchPolicy:
        return cls(
            max_bytes=max_bytes, timeout_s=fetch.timeout_s,
            connect_timeout_s=fetch.connect_timeout_s, max_redirects=fetch.max_redirects,
            allow_networks=tuple(ipaddress.ip_network(n, strict=False) for n in fetch.allow_networks),
        )  # fmt: skip

    def allowing_origin_of(self, url: str) -> FetchPolicy:
        return replace(self, allow_origins=self.allow_origins | {origin_of(httpx.URL(url))})


@dataclass
class ByteBudget:
    """Bytes several fetches of one request may take together (shared, not per fetch)."""

    remaining: int
    taken: int = field(default=0)

    def take(self, n: int) -> None:
        self.remaining -= n
        self.taken += n
        if self.remaining < 0:
            raise FetchFailed("over_budget", "the fetched images exceed the request's byte limit")


@dataclass(frozen=True)
class Fetched:
    url: str
    """The final URL, after redirects."""
    data: bytes
    content_type: str | None


def origin_of(url: httpx.URL) -> Origin:
    return url.scheme, url.host.lower(), url.port or _DEFAULT_PORTS.get(url.scheme, 0)


def is_public_address(ip: IPAddress) -> bool:
    """True for addresses on the public internet; IPv6 forms that embed an IPv4 address are
    judged by the embedded address (``::ffff:127.0.0.1`` is loopback)."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, in the resolver's order, without duplicates."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise FetchFailed("unresolvable", f"the host '{host}' could not be resolved") from None
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def parse_url(raw: str) -> httpx.URL:
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise FetchFailed("bad_url", "it is not a valid URL") from None
    if url.scheme not in _DEFAULT_PORTS:
        raise FetchFailed(
            "bad_url", f"only http and https URLs can be fetched, not '{url.scheme[:20]}'"
        )
    if not url.host:
        raise FetchFailed("bad_url", "the URL has no host")
    if url.userinfo:
        raise FetchFailed("bad_url", "URLs with credentials are not fetched")
    return url


class Fetcher:
    """Fetches with one policy per call. Stateless apart from its TLS context."""

    def __init__(
        self,
        *,
        resolver: Resolver = resolve,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = "retouch",
    ) -> None:
        self._resolve = resolver
        self._ssl = ssl_context or httpx.create_ssl_context()
        self._user_agent = user_agent

    async def get(
        self, url: str, policy: FetchPolicy, *, budget: ByteBudget | None = None
    ) -> Fetched:
        try:
            async with asyncio.timeout(policy.timeout_s):
                return await self._follow(parse_url(url), policy, budget)
        except TimeoutError:
            raise FetchFailed(
                "timeout", f"the download took longer than {policy.timeout_s:g} s"
            ) from None

    async def _follow(
        self, url: httpx.URL, policy: FetchPolicy, budget: ByteBudget | None
    ) -> Fetched:
        for _ in range(policy.max_redirects + 1):
            address = await self._vet(url, policy)
            # A fresh client per hop: a pooled connection is keyed by address, and reusing one
            # across hosts would reuse a TLS session checked for another name.
            async with httpx.AsyncClient(
                verify=self._ssl, trust_env=False, follow_redirects=False,
                timeout=httpx.Timeout(policy.timeout_s, connect=policy.connect_timeout_s),
            ) as client:  # fmt: skip
                try:
                    pinned, headers, extensions = self._pinned(url, address)
                    async with client.stream(
                        "GET", pinned, headers=headers, extensions=extensions
                    ) as response:
                        if response.status_code in _REDIRECTS:
                            location = response.headers.get("location")
                            if not location:
                                raise FetchFailed("http_status", "a redirect without a Location")
                            url = parse_url(str(url.join(location)))
                            continue
                        if response.status_code != 200:
                            raise FetchFailed(
                                "http_status",
                                f"the server answered HTTP {response.status_code}",
                                status=response.status_code,
                            )
                        data = await _read_capped(response, policy.max_bytes, budget)
                        return Fetched(str(url), data, response.headers.get("content-type"))
                except httpx.TimeoutException:
                    raise FetchFailed("timeout", "the server did not answer in time") from None
                except httpx.HTTPError as exc:
                    raise FetchFailed(
                        "unreachable", f"the server could not be reached ({type(exc).__name__})"
                    ) from None
        raise FetchFailed(
            "too_many_redirects", f"more than {policy.max_redirects} redirects"
        )

    async def _vet(self, url: httpx.URL, policy: FetchPolicy) -> IPAddress:
        """The address to connect to, once every address of the host passed the check."""
        origin = origin_of(url)
        try:
            addresses: list[IPAddress] = [ipaddress.ip_address(url.host)]
        except ValueError:
            addresses = await self._resolve(url.host, origin[2])
        if not addresses:
            raise FetchFailed("unresolvable", f"the host '{url.host}' could not be resolved")
        if origin in policy.allow_origins:
            return addresses[0]
        for ip in addresses:
            if not is_public_address(ip) and not any(ip in n for n in policy.allow_networks):
                raise FetchFailed(
                    "blocked_address",
                    f"the host '{url.host}' is not a public internet address, and such "
                    "addresses are not fetched",
                )
        return addresses[0]

    def _pinned(
        self, url: httpx.URL, address: IPAddress
    ) -> tuple[httpx.URL, dict[str, str], dict[str, object]]:
        headers = {
            "host": url.netloc.decode("ascii"),
            "user-agent": self._user_agent,
            "accept": _ACCEPT,
        }
        extensions: dict[str, object] = {}
        if url.scheme == "https" and not _is_ip_literal(url.host):
            extensions["sni_hostname"] = url.host  # SNI and the certificate's name
        return url.copy_with(host=str(address)), headers, extensions


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


async def _read_capped(
    response: httpx.Response, cap: int, budget: ByteBudget | None
) -> bytes:
    length = response.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > cap:
        raise FetchFailed("too_large", f"it is larger than the {cap:,} bytes allowed")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if budget is not None:
            budget.take(len(chunk))
        if len(body) > cap:
            raise FetchFailed("too_large", f"it is larger than the {cap:,} bytes allowed")
    return bytes(body)


__all__ = [
    "ByteBudget", "FetchFailed", "FetchPolicy", "Fetched", "Fetcher", "is_public_address",
    "origin_of", "parse_url", "resolve",
]  # fmt: skip
