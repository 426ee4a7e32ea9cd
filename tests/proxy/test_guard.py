"""The proxy's SSRF guard (relay.proxy.guard): every blocked range, every literal form."""

from __future__ import annotations

import ipaddress

import pytest

from relay.proxy.guard import (
    Blocked,
    Policy,
    PortNotAllowed,
    Target,
    TargetRefused,
    blocked_reason,
    exempt_from_url,
    parse_networks,
    parse_target,
)

# One address inside each range the issue lists, and the range.
BLOCKED = [
    "0.0.0.0",
    "0.1.2.3",
    "10.0.0.1",
    "10.255.255.255",
    "100.64.0.1",
    "100.127.255.254",
    "127.0.0.1",
    "127.255.0.9",
    "169.254.169.254",  # cloud metadata
    "172.16.0.1",
    "172.31.255.255",
    "192.0.0.8",
    "192.168.1.1",
    "198.18.0.1",
    "198.19.255.255",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "ff02::1",
    "64:ff9b::808:808",  # NAT64 even of a public address: the range is refused
    "64:ff9b:1::1",
    "2001::1",  # Teredo
    "2002:0808:0808::1",  # 6to4
    "100::1",
    # IPv4 carried in IPv6 forms, unwrapped.
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",  # IPv4-compatible
    "::10.0.0.1",
    "2002:7f00:0001::",  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo of 10.0.0.1 (obfuscated)
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("text", BLOCKED)
def test_blocked_addresses(text: str) -> None:
    assert blocked_reason(ipaddress.ip_address(text)) is not None, text


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_pass(text: str) -> None:
    assert blocked_reason(ipaddress.ip_address(text)) is None


def test_unwrapped_reason_names_the_inner_range() -> None:
    assert blocked_reason(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback (in ::ffff:7f00:1)"


@pytest.mark.parametrize(
    "written",
    [
        "127.0.0.1:443",
        "2130706433:443",
        "0x7f000001:443",
        "0x7f.1:443",
        "0177.0.0.1:443",
        "0177.0.0.01:443",
        "127.1:443",
        "127.0.1:443",
        "[::ffff:127.0.0.1]:443",
        "[::FFFF:7f00:1]:443",
        "127.0.0.1.:443",
        "0X7F.0.0.1:443",
    ],
)
def test_loopback_literals_normalise_to_one_address(written: str) -> None:
    target = parse_target(written)
    assert target.address is not None
    assert blocked_reason(target.address) is not None
    if target.address.version == 4:
        assert str(target.address) == "127.0.0.1"
    with pytest.raises(Blocked):
        Policy().check(target, [target.address])


@pytest.mark.parametrize(
    "written",
    ["256.1.1.1:443", "1.2.3.4.5:443", "08.0.0.1:443", "0x1ffffffff:443", "foo.123:443"],
)
def test_malformed_numeric_hosts_are_refused(written: str) -> None:
    with pytest.raises(TargetRefused):
        parse_target(written)


@pytest.mark.parametrize(
    ("written", "host"),
    [
        ("API.OpenAI.com:443", "api.openai.com"),
        ("api.openai.com.:443", "api.openai.com"),
        ("bücher.example:443", "xn--bcher-kva.example"),
        ("BÜCHER.example.:443", "xn--bcher-kva.example"),
    ],
)
def test_host_names_are_normalised(written: str, host: str) -> None:
    assert parse_target(written) == Target(host, 443)


@pytest.mark.parametrize(
    "written",
    [
        "api.openai.com:22",
        "api.openai.com:8443",
        "127.0.0.1:5432",
        "[::1]:6379",
        "api.openai.com:0",
    ],
)
def test_other_ports_are_not_allowed(written: str) -> None:
    with pytest.raises(PortNotAllowed):
        parse_target(written)


@pytest.mark.parametrize(
    "written",
    [
        "api.openai.com",  # no port
        "api.openai.com:",
        "api.openai.com:99999",
        "::1:443",  # IPv6 without brackets
        "[::1:443",
        "[fe80::1%eth0]:443",
        "a_b..c:443",
        "exa mple.com:443",
        "user@host:443",
        ":443",
        "-bad.example:443",
    ],
)
def test_malformed_targets_are_refused(written: str) -> None:
    with pytest.raises(TargetRefused):
        parse_target(written)


def test_any_blocked_answer_refuses_the_whole_name() -> None:
    """Fail closed: a name answering a public and a private address is refused."""
    target = parse_target("rebind.example:443")
    public, private = ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.7")
    with pytest.raises(Blocked, match=r"rebind.example resolves to 10\.0\.0\.7: private"):
        Policy().check(target, [public, private])
    with pytest.raises(Blocked):
        Policy().check(target, [private, public])
    assert Policy().check(target, [public]) == public
    with pytest.raises(Blocked, match="has no address"):
        Policy().check(target, [])


def test_allowed_ranges_exempt_only_themselves() -> None:
    policy = Policy(allowed=parse_networks("10.1.0.0/16, fd00::/8"))
    target = parse_target("internal.example:443")
    assert str(policy.check(target, [ipaddress.ip_address("10.1.2.3")])) == "10.1.2.3"
    assert str(policy.check(target, [ipaddress.ip_address("fd00::5")])) == "fd00::5"
    # The mapped form of an allowed IPv4 address is that address.
    assert policy.check(target, [ipaddress.ip_address("::ffff:10.1.2.3")])
    with pytest.raises(Blocked):
        policy.check(target, [ipaddress.ip_address("10.2.0.1")])
    with pytest.raises(Blocked):
        policy.check(target, [ipaddress.ip_address("127.0.0.1")])


def test_the_access_url_is_exempt_by_host_and_port() -> None:
    policy = Policy(exempt=exempt_from_url("https://Relay.Internal.:443/"))
    loopback = [ipaddress.ip_address("127.0.0.1")]
    assert policy.check(parse_target("relay.internal:443"), loopback)
    with pytest.raises(Blocked):
        policy.check(parse_target("relay.internal:80"), loopback)
    with pytest.raises(Blocked):
        policy.check(parse_target("other.internal:443"), loopback)
    assert exempt_from_url("http://10.0.0.5") == frozenset({("10.0.0.5", 80)})
    assert exempt_from_url("") == frozenset()
