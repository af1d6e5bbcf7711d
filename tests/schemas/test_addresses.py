"""The address policy: which URLs, addresses and DNS answers a fetch from outside may reach."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable
from ipaddress import ip_address, ip_network
from typing import Any

import pytest

from schemas.addresses import AddressPolicy, BlockedURL, host_allowed, parse_networks
from schemas.errors import ConfigError

POLICY = AddressPolicy()
_FULLWIDTH_DIGITS = str.maketrans("0123456789", "".join(chr(0xFF10 + d) for d in range(10)))


def fullwidth(text: str) -> str:
    """`text` with its digits written fullwidth: to HTTP clients, the same address."""
    return text.translate(_FULLWIDTH_DIGITS)


BLOCKED = {
    "loopback": "127.0.0.1",
    "loopback-end": "127.255.255.254",
    "rfc1918-10": "10.1.2.3",
    "rfc1918-172": "172.16.0.1",
    "rfc1918-172-end": "172.31.255.255",
    "rfc1918-192": "192.168.1.1",
    "link-local": "169.254.1.1",
    "metadata-aws": "169.254.169.254",
    "metadata-alibaba": "100.100.100.200",
    "metadata-azure-wireserver": "168.63.129.16",
    "cgnat": "100.64.0.1",
    "cgnat-end": "100.127.255.255",
    "this-network": "0.0.0.0",
    "this-network-any": "0.1.2.3",
    "multicast": "224.0.0.1",
    "multicast-ssdp": "239.255.255.250",
    "reserved": "240.0.0.1",
    "broadcast": "255.255.255.255",
    "documentation": "192.0.2.10",
    "benchmarking": "198.18.0.1",
    "v6-loopback": "::1",
    "v6-unspecified": "::",
    "v6-ula": "fd12:3456::1",
    "v6-ula-fc": "fc00::1",
    "v6-metadata-aws": "fd00:ec2::254",
    "v6-link-local": "fe80::1",
    "v6-multicast": "ff02::1",
    "v6-documentation": "2001:db8::1",
    "v6-teredo": "2001::1",
    "mapped-loopback": "::ffff:127.0.0.1",
    "mapped-private": "::ffff:10.0.0.1",
    "mapped-metadata": "::ffff:169.254.169.254",
    "mapped-cgnat": "::ffff:100.64.0.1",
    "compatible-loopback": "::127.0.0.1",
    "nat64-loopback": "64:ff9b::7f00:1",
    "nat64-metadata": "64:ff9b::a9fe:a9fe",
    "nat64-local-use": "64:ff9b:1::808:808",
    "6to4-loopback": "2002:7f00:1::1",
    "6to4-private": "2002:a00:1::1",
}
PUBLIC = {
    "google-dns": "8.8.8.8",
    "cloudflare-dns": "1.1.1.1",
    "below-cgnat": "100.63.255.255",
    "above-cgnat": "100.128.0.1",
    "above-rfc1918-172": "172.32.0.1",
    "v6-cloudflare": "2606:4700:4700::1111",
    "mapped-public": "::ffff:8.8.8.8",
    "nat64-public": "64:ff9b::808:808",
    "6to4-public": "2002:808:808::1",
}
GetAddrInfo = Callable[..., Any]


def answers(*addresses: str) -> list[tuple[Any, ...]]:
    """A getaddrinfo answer naming `addresses` (port 443)."""
    return [
        (
            socket.AF_INET6 if ":" in address else socket.AF_INET,
            socket.SOCK_STREAM,
            6,
            "",
            (address, 443),
        )
        for address in addresses
    ]


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, Any]], list[str]]:
    """Make the running loop's getaddrinfo answer from a table (an exception to raise, or a
    list of addresses); returns the names it was asked."""
    asked: list[str] = []

    def install(table: dict[str, Any]) -> list[str]:
        async def getaddrinfo(host: str, port: int, **_: Any) -> list[tuple[Any, ...]]:
            asked.append(host)
            answer = table[host]
            if isinstance(answer, BaseException):
                raise answer
            return answers(*answer)

        monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
        return asked

    return install


@pytest.mark.parametrize("address", BLOCKED.values(), ids=BLOCKED.keys())
def test_check_address_refuses_non_public_addresses(address: str) -> None:
    with pytest.raises(BlockedURL) as caught:
        POLICY.check_address(address)
    assert caught.value.reason == "blocked_address"


@pytest.mark.parametrize("address", PUBLIC.values(), ids=PUBLIC.keys())
def test_check_address_allows_public_addresses(address: str) -> None:
    assert POLICY.check_address(address) == ip_address(address)


@pytest.mark.parametrize(
    ("network", "address"),
    [
        ("127.0.0.1/32", "127.0.0.1"),
        ("127.0.0.1/32", "::ffff:127.0.0.1"),
        ("10.0.0.0/8", "10.200.0.7"),
        ("fd00::/8", "fd12::1"),
        ("169.254.0.0/16", "169.254.1.1"),
    ],
    ids=["loopback", "loopback-mapped", "rfc1918", "ula", "link-local"],
)
def test_allowed_networks_open_private_addresses(network: str, address: str) -> None:
    policy = AddressPolicy(allowed_networks=(ip_network(network),))
    assert policy.check_address(address)


def test_allowed_networks_open_only_themselves() -> None:
    policy = AddressPolicy(allowed_networks=(ip_network("127.0.0.1/32"),))
    with pytest.raises(BlockedURL):
        policy.check_address("127.0.0.2")


@pytest.mark.parametrize(
    ("network", "address"),
    [
        ("169.254.0.0/16", "169.254.169.254"),
        ("fd00::/8", "fd00:ec2::254"),
        ("fc00::/7", "fd00:ec2::254%eth0"),
        ("100.64.0.0/10", "100.100.100.200"),
        ("168.63.0.0/16", "168.63.129.16"),
        ("169.254.0.0/16", "169.254.170.2"),
        ("169.254.0.0/16", "169.254.170.23"),
        ("fd00::/8", "fd00:ec2::23"),
        ("0.0.0.0/0", "::ffff:169.254.170.2"),
        ("192.0.0.0/24", "192.0.0.192"),
    ],
    ids=[
        "aws",
        "aws-v6",
        "aws-v6-with-a-zone",
        "alibaba",
        "azure-wireserver",
        "aws-ecs-credentials",
        "aws-eks-pod-identity",
        "aws-eks-pod-identity-v6",
        "aws-ecs-mapped",
        "oracle",
    ],
)
def test_metadata_addresses_stay_refused_inside_an_allowed_network(
    network: str, address: str
) -> None:
    policy = AddressPolicy(allowed_networks=(ip_network(network),))
    with pytest.raises(BlockedURL, match="metadata"):
        policy.check_address(address)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://cdn.example.com/v.mp4", "scheme"),
        ("ftp://cdn.example.com/v.mp4", "scheme"),
        ("file:///etc/passwd", "scheme"),
        ("gopher://cdn.example.com/", "scheme"),
        ("https:///v.mp4", "no_host"),
        ("https://cdn.example.com:99999/v.mp4", "no_host"),
        ("https://user:pass@cdn.example.com/v.mp4", "userinfo"),
        ("https://cdn.example.com@127.0.0.1/v.mp4", "userinfo"),
        ("https://127.0.0.1/v.mp4", "blocked_address"),
        ("https://[::ffff:169.254.169.254]/v.mp4", "blocked_address"),
        ("https://[fe80::1]/v.mp4", "blocked_address"),
        ("https://2130706433/v.mp4", "odd_host"),
        ("https://0x7f.1/v.mp4", "odd_host"),
        ("https://017700000001/v.mp4", "odd_host"),
        ("https://134744072/v.mp4", "odd_host"),  # 8.8.8.8, public, but not as written
        ("https://127\u30020\u30020\u30021/v.mp4", "blocked_address"),  # ideographic full stops
        (f"https://{fullwidth('127.0.0.1')}/v.mp4", "blocked_address"),
        (f"https://{fullwidth('169.254.169.254')}/v.mp4", "blocked_address"),
        ("https://\udcff.example/v.mp4", "no_host"),
    ],
    ids=[
        "http",
        "ftp",
        "file",
        "gopher",
        "no-host",
        "bad-port",
        "userinfo",
        "host-confusion",
        "literal-loopback",
        "literal-mapped-metadata",
        "literal-v6-link-local",
        "decimal-loopback",
        "hex-short-loopback",
        "octal-loopback",
        "decimal-public",
        "ideographic-dots-loopback",
        "fullwidth-loopback",
        "fullwidth-metadata",
        "unencodable-host",
    ],
)
def test_check_url_refuses(url: str, reason: str) -> None:
    with pytest.raises(BlockedURL) as caught:
        POLICY.check_url(url)
    assert caught.value.reason == reason


def test_check_url_accepts_https_names_without_resolving() -> None:
    parts = POLICY.check_url("https://CDN.example.com/v.mp4?token=abc")
    assert parts.hostname == "cdn.example.com"


@pytest.mark.parametrize("host", ["8.8.8.8", "cdn.example.com", "v2.cdn9.example", "[2001:db8::1]"])
def test_check_url_takes_hosts_written_plainly(host: str) -> None:
    assert AddressPolicy(allowed_networks=parse_networks("2001:db8::/32")).check_url(
        f"https://{host}/v.mp4"
    )


def test_check_url_accepts_http_when_allowed() -> None:
    assert AddressPolicy(allow_http=True).check_url("http://cdn.example.com/v.mp4")


def test_blocked_url_message_names_the_host_but_never_path_or_query() -> None:
    with pytest.raises(BlockedURL) as caught:
        POLICY.check_url("ftp://cdn.example.com/secret-path/v.mp4?token=sig123")
    message = str(caught.value)
    assert "secret-path" not in message
    assert "sig123" not in message
    assert caught.value.host == "cdn.example.com"


def test_userinfo_is_never_quoted() -> None:
    with pytest.raises(BlockedURL) as caught:
        POLICY.check_url("https://admin:hunter2@cdn.example.com/")
    assert "hunter2" not in str(caught.value)


async def test_resolve_answers_every_checked_address(
    resolver: Callable[[dict[str, Any]], list[str]],
) -> None:
    resolver({"cdn.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    addresses = await POLICY.resolve("cdn.example.com", 443)
    assert addresses == ["93.184.216.34", "2606:2800:220:1::1"]


@pytest.mark.parametrize(
    "mixed",
    [["93.184.216.34", "10.0.0.1"], ["127.0.0.1", "93.184.216.34"], ["8.8.8.8", "::1"]],
    ids=["private-last", "loopback-first", "v6-loopback"],
)
async def test_resolve_refuses_a_host_with_any_refused_address(
    resolver: Callable[[dict[str, Any]], list[str]], mixed: list[str]
) -> None:
    resolver({"rebind.example.com": mixed})
    with pytest.raises(BlockedURL) as caught:
        await POLICY.resolve("rebind.example.com", 443)
    assert (caught.value.reason, caught.value.host) == ("blocked_address", "rebind.example.com")


async def test_resolve_of_an_unknown_name_is_unresolvable(
    resolver: Callable[[dict[str, Any]], list[str]],
) -> None:
    resolver({"nowhere.example": socket.gaierror(socket.EAI_NONAME, "Name or service not known")})
    with pytest.raises(BlockedURL) as caught:
        await POLICY.resolve("nowhere.example", 443)
    assert caught.value.reason == "unresolvable"


async def test_resolve_of_an_empty_answer_is_unresolvable(
    resolver: Callable[[dict[str, Any]], list[str]],
) -> None:
    resolver({"empty.example": []})
    with pytest.raises(BlockedURL) as caught:
        await POLICY.resolve("empty.example", 443)
    assert caught.value.reason == "unresolvable"


async def test_resolve_checks_a_literal_without_asking_dns(
    resolver: Callable[[dict[str, Any]], list[str]],
) -> None:
    asked = resolver({})
    assert await POLICY.resolve("8.8.8.8", 443) == ["8.8.8.8"]
    with pytest.raises(BlockedURL):
        await POLICY.resolve("::ffff:127.0.0.1", 443)
    assert asked == []


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        ("cdn.example.com", ("cdn.example.com",), True),
        ("CDN.Example.COM.", ("cdn.example.com",), True),
        ("cdn.example.com", ("CDN.EXAMPLE.COM.",), True),
        ("a.cdn.example.com", ("*.example.com",), True),
        ("cdn.example.com", ("other.example.org", "*.example.com"), True),
        ("example.com", ("*.example.com",), False),
        ("evilexample.com", ("*.example.com",), False),
        ("example.com.evil.net", ("example.com",), False),
        ("sub.cdn.example.com", ("cdn.example.com",), False),
        ("cdn.example.com", (), False),
    ],
    ids=[
        "exact",
        "case-and-dot",
        "pattern-case-and-dot",
        "wildcard-subdomain",
        "second-pattern",
        "wildcard-not-apex",
        "wildcard-not-suffix-string",
        "exact-not-prefix",
        "exact-not-subdomain",
        "no-patterns",
    ],
)
def test_host_allowed(host: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


def test_parse_networks_reads_networks_and_addresses() -> None:
    parsed = parse_networks(" 10.0.0.0/8, 127.0.0.1 ,fd00::/8,")
    assert parsed == (ip_network("10.0.0.0/8"), ip_network("127.0.0.1/32"), ip_network("fd00::/8"))


def test_parse_networks_of_nothing_is_empty() -> None:
    assert parse_networks("") == ()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("10.0.0.0/8, 10.0.0.1/8", "10.0.0.1/8"),
        ("localhost", "localhost"),
        ("10.0.0.0/33", "10.0.0.0/33"),
        ("fd00::/8;10.0.0.0/8", "fd00::/8;10.0.0.0/8"),
    ],
    ids=["host-bits", "name", "prefix-too-long", "wrong-separator"],
)
def test_parse_networks_names_what_is_wrong(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(named)):
        parse_networks(text)


@pytest.mark.parametrize(
    "url",
    ["https://cdn.example.com:99999/v.mp4", "https://cdn.example.com:x/", "https://8.8.8.8:0/x"],
)
def test_a_port_out_of_range_is_named_as_the_port(url: str) -> None:
    with pytest.raises(BlockedURL, match="the URL's port is not a number from 1 to 65535"):
        POLICY.check_url(url)
