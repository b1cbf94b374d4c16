"""The SSRF-safe fetcher against real sockets on loopback: what it fetches, what it refuses."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

import pytest

from retouch.net.fetch import (
    ByteBudget,
    Fetcher,
    FetchFailed,
    FetchPolicy,
    IPAddress,
    is_public_address,
)
from tests.conftest import png_bytes
from tests.gateway.hosts import ImageHost, ThreadedServer

pytestmark = pytest.mark.anyio
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
IMAGE = png_bytes((8, 8))


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[ImageHost, ThreadedServer]]:
    image_host = ImageHost(IMAGE)
    with ThreadedServer(image_host.app) as server:
        yield image_host, server


def open_policy(**kw: object) -> FetchPolicy:
    """Loopback allowed (the test host lives there); everything else as in production."""
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("allow_networks", LOOPBACK)
    return FetchPolicy(**kw)  # type: ignore[arg-type]


async def refused(url: str, policy: FetchPolicy, fetcher: Fetcher | None = None) -> FetchFailed:
    with pytest.raises(FetchFailed) as info:
        await (fetcher or Fetcher()).get(url, policy)
    return info.value


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0",
     "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
     "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::",
     "64:ff9b::a00:1", "2001:db8::1"],
)  # fmt: skip
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


async def test_fetches_from_an_allowed_network(host: tuple[ImageHost, ThreadedServer]) -> None:
    fetched = await Fetcher().get(f"{host[1].url}/img", open_policy())
    assert fetched.data == IMAGE
    assert fetched.content_type == "image/png"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:{port}/img", "http://localhost:{port}/img", "http://[::1]:{port}/img",
     "http://[::ffff:127.0.0.1]:{port}/img", "http://2130706433:{port}/img",
     "http://0.0.0.0:{port}/img", "http://169.254.169.254/latest/meta-data/",
     "http://10.0.0.1/img"],
)  # fmt: skip
async def test_loopback_and_private_are_refused_by_default(
    host: tuple[ImageHost, ThreadedServer], url: str
) -> None:
    error = await refused(url.format(port=host[1].port), FetchPolicy(max_bytes=1 << 20))
    assert error.kind == "blocked_address"
    if "localhost" in url:  # what a name resolved to stays out of the message
        assert "127.0.0.1" not in error.message
        assert "::1" not in error.message


async def test_a_public_name_resolving_to_a_private_address_is_refused() -> None:
    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.7")]

    error = await refused("http://images.example/x.png", FetchPolicy(max_bytes=100), Fetcher(resolver=rebinding))
    assert error.kind == "blocked_address"


async def test_connects_to_the_vetted_address_with_the_name_as_host(
    host: tuple[ImageHost, ThreadedServer],
) -> None:
    """The name is resolved once and the socket goes to that address: a resolver that would
    answer differently later cannot redirect the connection."""
    answers = iter([[ipaddress.ip_address("127.0.0.1")]])

    async def once(name: str, port: int) -> list[IPAddress]:
        return next(answers)  # a second lookup would raise StopIteration

    image_host, server = host
    fetched = await Fetcher(resolver=once).get(f"http://images.example:{server.port}/img", open_policy())
    assert fetched.data == IMAGE
    assert image_host.hosts[-1] == f"images.example:{server.port}"


async def test_an_allowed_origin_may_be_loopback_but_not_its_neighbours(
    host: tuple[ImageHost, ThreadedServer],
) -> None:
    base = host[1].url
    policy = FetchPolicy(max_bytes=1 << 20).allowing_origin_of(base + "/v1")
    assert (await Fetcher().get(f"{base}/img", policy)).data == IMAGE
    error = await refused(f"http://127.0.0.1:{host[1].port + 1}/img", policy)
    assert error.kind == "blocked_address"


@pytest.mark.parametrize(
    "target",
    ["http://10.0.0.1/img", "http://169.254.169.254/latest/meta-data/", "http://[::1]:9/img",
     "http://localhost:9/"],
)
async def test_redirects_are_checked_again(
    host: tuple[ImageHost, ThreadedServer], target: str
) -> None:
    """The image host itself is allowed (its origin); where it redirects to is not."""
    base = host[1].url
    policy = FetchPolicy(max_bytes=1 << 20).allowing_origin_of(base)
    error = await refused(f"{base}/redirect?to={target}", policy)
    assert error.kind == "blocked_address"


async def test_redirects_are_followed_within_the_cap(host: tuple[ImageHost, ThreadedServer]) -> None:
    base = host[1].url
    hops = f"{base}/img"
    for _ in range(3):
        hops = f"{base}/redirect?to={hops}"
    assert (await Fetcher().get(hops, open_policy(max_redirects=3))).data == IMAGE
    error = await refused(hops, open_policy(max_redirects=2))
    assert error.kind == "too_many_redirects"
    assert (await refused(f"{base}/loop", open_policy())).kind == "too_many_redirects"


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://127.0.0.1:6379/_INFO",
     "data:image/png;base64,AAAA", "javascript:alert(1)", "http://user:pw@example.com/a.png",
     "http:///nohost", "not a url at all"],
)  # fmt: skip
async def test_non_http_urls_are_refused(url: str) -> None:
    assert (await refused(url, open_policy())).kind == "bad_url"


async def test_a_redirect_to_another_scheme_is_refused(host: tuple[ImageHost, ThreadedServer]) -> None:
    error = await refused(f"{host[1].url}/redirect?to=file:///etc/passwd", open_policy())
    assert error.kind == "bad_url"


async def test_too_big_is_stopped_while_streaming(host: tuple[ImageHost, ThreadedServer]) -> None:
    """/big sends 4 MiB without a Content-Length: the cap applies to bytes as they arrive."""
    error = await refused(f"{host[1].url}/big", open_policy(max_bytes=100_000))
    assert error.kind == "too_large"
    small = open_policy(max_bytes=len(IMAGE) - 1)
    assert (await refused(f"{host[1].url}/img", small)).kind == "too_large"  # Content-Length


async def test_a_shared_budget_limits_several_fetches(host: tuple[ImageHost, ThreadedServer]) -> None:
    budget = ByteBudget(int(len(IMAGE) * 1.5))
    await Fetcher().get(f"{host[1].url}/img", open_policy(), budget=budget)
    with pytest.raises(FetchFailed) as info:
        await Fetcher().get(f"{host[1].url}/img", open_policy(), budget=budget)
    assert info.value.kind == "over_budget"


@pytest.mark.parametrize("path", ["/slow-headers", "/drip"])
async def test_too_slow_hits_the_total_deadline(
    host: tuple[ImageHost, ThreadedServer], path: str
) -> None:
    """/drip sends a byte every 50 ms, so no read timeout fires: only the total deadline."""
    error = await refused(f"{host[1].url}{path}", open_policy(timeout_s=0.5))
    assert error.kind == "timeout"


async def test_error_statuses_and_unreachable_hosts(host: tuple[ImageHost, ThreadedServer]) -> None:
    error = await refused(f"{host[1].url}/status/404", open_policy())
    assert (error.kind, error.status) == ("http_status", 404)
    with ThreadedServer(ImageHost(IMAGE).app) as gone:
        port = gone.port
    assert (await refused(f"http://127.0.0.1:{port}/img", open_policy())).kind == "unreachable"
    assert (await refused("http://nonexistent.invalid/img", FetchPolicy(max_bytes=1))).kind == "unresolvable"
