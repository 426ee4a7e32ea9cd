"""The proxy request head (relay.proxy.head): split anywhere, bounded, garbled input refused."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.proxy.head import (
    BadHead,
    HeadReader,
    HeadTooLarge,
    basic_credentials,
    parse_absolute_url,
    parse_head,
)

HEAD = (
    b"CONNECT api.openai.com:443 HTTP/1.1\r\n"
    b"Host: api.openai.com:443\r\n"
    b"Proxy-Authorization: Basic " + base64.b64encode(b"me:tok-123") + b"\r\n"
    b"User-Agent: test\r\n\r\n"
)


@given(st.lists(st.integers(min_value=0, max_value=len(HEAD) + 5), max_size=8))
def test_split_anywhere_gives_the_same_request(cuts: list[int]) -> None:
    data = HEAD + b"\x16\x03\x01tls"
    points = sorted({0, len(data), *[min(c, len(data)) for c in cuts]})
    reader = HeadReader()
    found = None
    for a, b in itertools.pairwise(points):
        result = reader.feed(data[a:b])
        if result is not None:
            found = result
            # What came after the head in the same read is kept; later reads are the caller's.
            assert data.startswith(HEAD + result.rest)
            break
    assert found is not None
    assert found.method == "CONNECT"
    assert found.target == "api.openai.com:443"
    assert basic_credentials(found) == ("me", "tok-123")


def test_one_byte_at_a_time() -> None:
    reader = HeadReader()
    results = [reader.feed(HEAD[i : i + 1]) for i in range(len(HEAD))]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None and results[-1].rest == b""


def test_a_head_over_the_limit_is_refused_before_it_ends() -> None:
    reader = HeadReader(limit=1024)
    reader.feed(b"CONNECT a.example:443 HTTP/1.1\r\n")
    with pytest.raises(HeadTooLarge):
        for _ in range(100):
            reader.feed(b"X-Pad: " + b"a" * 100 + b"\r\n")


def test_a_complete_head_over_the_limit_is_refused() -> None:
    with pytest.raises(HeadTooLarge):
        HeadReader(limit=64).feed(b"GET http://a/ HTTP/1.1\r\nX: " + b"a" * 80 + b"\r\n\r\n")


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT a.example:443\r\n",
        b"CONNECT a.example:443 HTTP/2.0\r\n",
        b"CONNECT  a.example:443 HTTP/1.1\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\n folded: x\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\nno colon\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\nBad Name: x\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\nX: a\x00b\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ],
)
def test_garbled_heads_are_refused(head: bytes) -> None:
    with pytest.raises(BadHead):
        parse_head(head.removesuffix(b"\r\n"))


def test_too_many_headers() -> None:
    head = b"CONNECT a:443 HTTP/1.1\r\n" + b"X: y\r\n" * 101
    with pytest.raises(HeadTooLarge):
        parse_head(head.removesuffix(b"\r\n"))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"Bearer tok",
        b"Basic !!!notbase64",
        b"Basic " + base64.b64encode(b"no-colon"),
        b"Basic " + base64.b64encode(b"\xff\xfe:\xff"),
        b"Basic",
    ],
)
def test_garbled_credentials_are_none(value: bytes | None) -> None:
    head = b"CONNECT a:443 HTTP/1.1"
    if value is not None:
        head += b"\r\nProxy-Authorization: " + value
    assert basic_credentials(parse_head(head)) is None


def test_basic_password_may_hold_colons() -> None:
    head = b"CONNECT a:443 HTTP/1.1\r\nProxy-Authorization: basic " + base64.b64encode(b"u:a:b")
    assert basic_credentials(parse_head(head)) == ("u", "a:b")


def test_absolute_urls() -> None:
    url = parse_absolute_url("http://Example.com:80/a/b?c=1#frag")
    assert (url.authority, url.path) == ("Example.com:80", "/a/b?c=1")
    assert parse_absolute_url("http://example.com").path == "/"
    assert parse_absolute_url("http://example.com?x").path == "/?x"
    with pytest.raises(BadHead):
        parse_absolute_url("https://example.com/")
    with pytest.raises(BadHead):
        parse_absolute_url("/relative")
    with pytest.raises(BadHead):
        parse_absolute_url("http://user:pw@127.0.0.1/")
