"""Where a tunnel may go: the proxy's SSRF guard, sans-io.

``parse_target`` turns what a client wrote after CONNECT (or in an
absolute-form URL) into a normalised ``Target``: a host name lowercased,
IDNA-encoded, without its trailing dot, or an IP address, whatever literal
form it was written in (``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
``127.1``, ``[::ffff:127.0.0.1]``: the forms an OS resolver would accept).

``blocked_reason(address)`` says why an address may not be reached, or None.
IPv6 forms that carry an IPv4 address (IPv4-mapped, IPv4-compatible, 6to4,
Teredo, NAT64) are unwrapped and the IPv4 address checked too: Python's
``ipaddress.is_global`` alone lets several of them through.

``Policy.check(target, answers)`` decides on *every* answer a resolver gave
(one blocked answer refuses the request: fail closed) and returns the one
address to connect to. The caller connects to exactly that address and never
resolves again, so a name that answers a public address to the check and a
private one to the connect (DNS rebinding) has no window.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_PORTS = frozenset({443, 80})


class TargetRefused(ValueError):
    """A target that cannot be parsed (the message says why)."""


class PortNotAllowed(TargetRefused):
    """A CONNECT to a port other than 443 and 80."""


def _nets(*cidrs: str) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# The ranges refused by default, each with the name its refusal gives.
BLOCKED_V4: tuple[tuple[IPNetwork, str], ...] = tuple(
    (net, name)
    for names, name in (
        (("0.0.0.0/8",), "this network"),
        (("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"), "private"),
        (("100.64.0.0/10",), "carrier-grade NAT"),
        (("127.0.0.0/8",), "loopback"),
        (("169.254.0.0/16",), "link-local"),
        (("192.0.0.0/24",), "IETF protocol assignments"),
        (("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"), "documentation"),
        (("198.18.0.0/15",), "benchmarking"),
        (("224.0.0.0/4",), "multicast"),
        (("255.255.255.255/32",), "broadcast"),
        (("240.0.0.0/4",), "reserved"),
    )
    for net in _nets(*names)
)
BLOCKED_V6: tuple[tuple[IPNetwork, str], ...] = tuple(
    (net, name)
    for names, name in (
        (("::/128",), "unspecified"),
        (("::1/128",), "loopback"),
        (("fc00::/7",), "unique local"),
        (("fe80::/10",), "link-local"),
        (("fec0::/10",), "site-local"),
        (("ff00::/8",), "multicast"),
        (("64:ff9b::/96", "64:ff9b:1::/48"), "NAT64"),
        (("2001::/32",), "Teredo"),
        (("2001:db8::/32",), "documentation"),
        (("2002::/16",), "6to4"),
        (("100::/64",), "discard-only"),
    )
    for net in _nets(*names)
)
_TEREDO = ipaddress.ip_network("2001::/32")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
_NAT64 = _nets("64:ff9b::/96", "64:ff9b:1::/48")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _V4_COMPATIBLE and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    if address in _TEREDO:
        teredo = address.teredo
        return teredo[1] if teredo is not None else None
    if any(address in net for net in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be reached by default ("loopback", …), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = blocked_reason(inner)
            if reason is not None:
                return f"{reason} (in {address})"
        if address.ipv4_mapped is not None:
            return None  # exactly the IPv4 address it maps, which was allowed
        table = BLOCKED_V6
    else:
        table = BLOCKED_V4
    for net, name in table:
        if address in net:
            return name
    # Whatever else IANA marks not globally reachable (the list above names the usual ones).
    if not address.is_global or address.is_multicast:
        return "reserved"
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """A destination as the client named it, normalised: ``host`` is a name or an address."""

    host: str  # lowercase, IDNA (A-labels), no trailing dot; an address in its compressed form
    port: int
    address: IPAddress | None = None  # when the client wrote an address

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_NUMBER_RE = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def _ipv4_number(part: str) -> int:
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        if not re.fullmatch(r"[0-7]+", part):
            raise TargetRefused(f"{part!r} is not an octal number")
        return int(part, 8)
    return int(part)


def parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address in any form ``inet_aton`` takes (``127.1``, ``0x7f.1``, ``2130706433``).

    None when ``host`` is not made of numbers alone (a name); ``TargetRefused``
    when it is but does not make an address (``256.1.1.1``, ``1.2.3.4.5``).
    """
    parts = host.split(".")
    if not all(_NUMBER_RE.match(p) for p in parts):
        # WHATWG: a host whose last label is a number is an IPv4 address or invalid.
        if _NUMBER_RE.match(parts[-1]):
            raise TargetRefused(f"{host!r} is neither a host name nor an IPv4 address")
        return None
    if len(parts) > 4:
        raise TargetRefused(f"{host!r} is not an IPv4 address")
    numbers = [_ipv4_number(p) for p in parts]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise TargetRefused(f"{host!r} is not an IPv4 address")
    value = last
    for i, n in enumerate(leading):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def normalise_host(text: str) -> tuple[str, IPAddress | None]:
    """A host as written → (normalised host, the address when it is one)."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        try:
            v6 = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise TargetRefused(f"{text!r} is not an IPv6 address") from None
        if v6.scope_id:
            raise TargetRefused(f"{text!r}: a zone id is not allowed")
        return str(v6), v6
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise TargetRefused("no host")
    try:
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise TargetRefused(f"{text!r} is not a valid host name") from None
    v4 = parse_ipv4_literal(ascii_host)
    if v4 is not None:
        return str(v4), v4
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise TargetRefused(f"{text!r} is not a valid host name")
    return ascii_host, None


def parse_authority(text: str, *, default_port: int | None = None) -> Target:
    """``host:port`` (CONNECT's authority form) → a normalised ``Target``; any port."""
    value = text.strip()
    host, port_text = value, ""
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise TargetRefused(f"{text!r} is not host:port")
        host, rest = value[: end + 1], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise TargetRefused(f"{text!r} is not host:port")
            port_text = rest[1:]
    elif ":" in value:
        host, _, port_text = value.rpartition(":")
        if ":" in host:
            raise TargetRefused(f"{text!r}: write an IPv6 address in brackets")
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            raise TargetRefused(f"{text!r} has no valid port")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise TargetRefused(f"{text!r} has no port")
    name, address = normalise_host(host)
    return Target(name, port, address)


def parse_target(
    text: str, *, default_port: int | None = None, ports: frozenset[int] = ALLOWED_PORTS
) -> Target:
    """A CONNECT target; ``PortNotAllowed`` unless its port is one of ``ports`` (443, 80)."""
    target = parse_authority(text, default_port=default_port)
    if target.port not in ports:
        raise PortNotAllowed(f"port {target.port} is not allowed (only 443 and 80)")
    return target


class Blocked(Exception):
    """A destination refused by the guard; ``reason`` is one line for the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    return tuple(
        ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()
    )


@dataclass(frozen=True, slots=True)
class Policy:
    """What tunneled traffic may reach: everything public, plus the exempt ranges and hosts."""

    allowed: tuple[IPNetwork, ...] = ()
    # (host, port) pairs always reachable: the relay's own access URL.
    exempt: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def is_exempt(self, target: Target) -> bool:
        return (target.host, target.port) in self.exempt

    def reason(self, address: IPAddress) -> str | None:
        if any(address.version == net.version and address in net for net in self.allowed):
            return None
        inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
        if inner is not None and any(inner in net for net in self.allowed if net.version == 4):
            return None
        return blocked_reason(address)

    def check(self, target: Target, answers: Sequence[IPAddress]) -> IPAddress:
        """The address to connect to, out of every answer for ``target``; ``Blocked`` if any is."""
        if not answers:
            raise Blocked(f"{target.host} has no address")
        if not self.is_exempt(target):
            for address in answers:
                reason = self.reason(address)
                if reason is not None:
                    shown = "" if target.address is not None else f"{target.host} resolves to "
                    raise Blocked(f"{shown}{address}: {reason} addresses are not reachable")
        return answers[0]


def exempt_from_url(url: str) -> frozenset[tuple[str, int]]:
    """The (host, port) of the relay's access URL, normalised like a target (none if empty)."""
    from urllib.parse import urlsplit

    if not url.strip():
        return frozenset()
    parts = urlsplit(url.strip())
    if not parts.hostname:
        return frozenset()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        host, _ = normalise_host(f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname)
    except TargetRefused:
        return frozenset()
    return frozenset({(host, port)})


def unique(addresses: Iterable[IPAddress]) -> list[IPAddress]:
    """Resolver answers without repeats, in their order."""
    seen: dict[IPAddress, None] = {}
    for a in addresses:
        seen.setdefault(a, None)
    return list(seen)
