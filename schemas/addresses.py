"""Which hosts and addresses the service may connect to for a URL that came from outside.

Public addresses only (server-side request forgery: loopback, private, link-local, CGNAT and
cloud metadata addresses are refused, also inside IPv6 forms), unless a network is allowed.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import SplitResult, urlsplit

from yarl import URL

from schemas.errors import ConfigError, LedgerError

IPAddress = IPv4Address | IPv6Address
# What a host `odd_numeric_host` finds is not: its refusals say it.
ODD_HOST = "ends in a number but is not an address written a.b.c.d"
HOST_SHOWN_CHARS = 64  # of a host a refusal names
# A host label the URL standard (WHATWG) reads as a number: decimal, or hex after 0x.
_NUMBER_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*", re.IGNORECASE)
IPNetwork = IPv4Network | IPv6Network

# Cloud instance metadata and credential services: refused even inside an allowed network,
# so allowing a private range never opens them.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    {
        ip_address("169.254.169.254"),  # AWS, GCP, Azure, Oracle, DigitalOcean ...
        ip_address("fd00:ec2::254"),  # AWS over IPv6
        ip_address("100.100.100.200"),  # Alibaba Cloud
        ip_address("168.63.129.16"),  # Azure's WireServer: a public address, a platform API
        ip_address("169.254.170.2"),  # AWS ECS task credentials
        ip_address("169.254.170.23"),  # AWS EKS Pod Identity
        ip_address("fd00:ec2::23"),  # AWS EKS Pod Identity over IPv6
        ip_address("192.0.0.192"),  # Oracle Cloud's metadata
    }
)
# Spelled out rather than left to `ipaddress.is_global`, whose lists changed between
# Python releases; the properties are checked as well.
BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(
    ip_network(network)
    for network in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.168.0.0/16",  # RFC 1918
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and the broadcast address
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, Teredo among them
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local (ULA)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated)
        "ff00::/8",  # multicast
    )
)
_NAT64 = ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ip_network("::/96")


class BlockedURL(LedgerError):
    """A URL the service must not fetch. `reason` is a short code for metrics: `scheme`,
    `no_host`, `userinfo`, `blocked_address`, `unresolvable` or `host_not_allowed`.

    The message names the host at most, never the path or the query (URLs carry tokens).
    """

    def __init__(self, message: str, *, reason: str, host: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.host = host


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Where a URL from outside may lead: `https` (and `http` when `allow_http`) to public
    addresses, and to the private ones inside `allowed_networks` (metadata never)."""

    allow_http: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    def check_url(self, url: str) -> SplitResult:
        """The URL's parts, if its scheme is allowed and it names a host without userinfo;
        a literal IP host is checked at once (a name is checked when it is resolved)."""
        parts, host = _split(url)
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise BlockedURL(f"scheme {parts.scheme!r} is not allowed", reason="scheme", host=host)
        if not host:
            raise BlockedURL("the URL names no host", reason="no_host")
        if "@" in parts.netloc:
            raise BlockedURL(f"the URL for {host} carries userinfo", reason="userinfo", host=host)
        if odd_numeric_host(host):
            shown = host[:HOST_SHOWN_CHARS]
            raise BlockedURL(f"the host {shown!r} {ODD_HOST}", reason="odd_host", host=host)
        literal = _literal(host)
        if literal is not None:
            self._check_host(host, literal)
        return parts

    def check_address(self, address: str | IPAddress) -> IPAddress:
        """`address` if it may be connected to; `BlockedURL` (`blocked_address`) if not."""
        ip = ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, IPv6Address) and ip.scope_id is not None:
            ip = IPv6Address(int(ip))  # `fe80::1%eth0` is `fe80::1` on a link: no zone
        reached = embedded_ipv4(ip) if isinstance(ip, IPv6Address) else None
        target = ip if reached is None else reached
        if ip in METADATA_ADDRESSES or target in METADATA_ADDRESSES:
            raise BlockedURL(f"{ip} is a cloud metadata address", reason="blocked_address")
        if self._allows(ip) or self._allows(target):
            return ip
        if not is_public(target):
            raise BlockedURL(f"{ip} is not a public address", reason="blocked_address")
        return ip

    async def resolve(self, host: str, port: int) -> list[str]:
        """Every address `host` resolves to, each checked: one refused address refuses the
        host (a DNS answer mixing public and private addresses is refused)."""
        literal = _literal(host)
        if literal is not None:
            return [str(self._check_host(host, literal))]
        loop = asyncio.get_running_loop()
        try:
            answers = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise BlockedURL(f"{host} does not resolve", reason="unresolvable", host=host) from exc
        addresses = list(dict.fromkeys(str(answer[4][0]) for answer in answers))
        if not addresses:
            raise BlockedURL(f"{host} resolves to nothing", reason="unresolvable", host=host)
        for address in addresses:
            self._check_host(host, address)
        return addresses

    def _check_host(self, host: str, address: str | IPAddress) -> IPAddress:
        try:
            return self.check_address(address)
        except BlockedURL as exc:
            raise BlockedURL(f"{host}: {exc}", reason=exc.reason, host=host) from exc

    def _allows(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.allowed_networks)


def is_public(ip: IPAddress) -> bool:
    """Whether `ip` is a public unicast address (embedded IPv4 forms are not looked into)."""
    return (
        ip.is_global
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_private
        and not any(ip in network for network in BLOCKED_NETWORKS)
    )


def embedded_ipv4(ip: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one reaches: IPv4-mapped, IPv4-compatible, NAT64 or 6to4."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        return IPv4Address(int(ip) & 0xFFFF_FFFF)
    return None


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether `host` matches one of `patterns`: exact names, or `*.example.com` for any name
    below example.com (not example.com itself). Case and a trailing dot do not matter."""
    name = _normal_host(host)
    for pattern in patterns:
        wanted = _normal_host(pattern)
        if wanted.startswith("*."):
            suffix = wanted[1:]
            if name.endswith(suffix) and len(name) > len(suffix):
                return True
        elif name == wanted:
            return True
    return False


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """A comma-separated list of networks (`10.0.0.0/8`) and addresses (`127.0.0.1`)."""
    networks: list[IPNetwork] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ip_network(item))
        except ValueError as exc:
            raise ConfigError(f"not a network or address: {exc}") from exc
    return tuple(networks)


def _split(url: str) -> tuple[SplitResult, str]:
    """The URL's parts, and its host as an HTTP client connects to it."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BlockedURL("the URL has no usable host", reason="no_host") from exc
    try:
        port = parts.port  # raises for a port that is not a number in range
    except ValueError:
        port = 0
    if port == 0:  # `:0` is no port anything listens on, nor the scheme's default
        raise BlockedURL("the URL's port is not a number from 1 to 65535", reason="no_host")
    try:
        host = parts.hostname or ""
        if not host.isascii():
            # Clients map a host through IDNA first (UTS #46): to them `127。0。0。1` and
            # fullwidth digits are the literal 127.0.0.1, connected to without a lookup.
            host = (URL(url).host or "").lower()
    except (ValueError, UnicodeError) as exc:
        raise BlockedURL("the URL has no usable host", reason="no_host") from exc
    return parts, host


def odd_numeric_host(host: str) -> bool:
    """Whether `host` ends in a number but is not an IPv4 address written as four decimal
    parts. The URL standard reads such a host as an address; other forms (2130706433,
    0x7f.1, 017700000001, 127.1, 010.0.0.1) each parser reads its own way: `ipaddress` as
    no address (so no literal check applies), the system's resolver as 127.0.0.1 (010.0.0.1
    as 8.0.0.1), some HTTP clients as a literal they connect to unresolved. A URL with
    one is checked as one address and may reach another."""
    last = host.removesuffix(".").rpartition(".")[2]
    if ":" in host or not _NUMBER_LABEL.fullmatch(last):
        return False
    try:
        IPv4Address(host)
    except ValueError:
        return True
    return False


def _literal(host: str) -> IPAddress | None:
    try:
        return ip_address(host)
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.strip().lower().rstrip(".")
