"""The dump files' format, both ways: writing their parts and reading them back.

Sans-io: bytes in, bytes or typed values out. ``relay.dump.writer`` puts the
parts on disk; ``bench.replay`` reads dumps (this relay's, or the Coder AI
Gateway's, which have no sidecar) with ``parse_request``/``parse_response``/
``parse_sidecar``.

Layout: ``<base>/<provider>/<model with / replaced by ->/<unix ms>-<id>`` plus
``.req.txt`` (request line, headers sorted by name, blank line, body as sent
upstream), ``.resp.txt`` (status line, headers, blank line, raw body as
relayed) and ``.chunks.jsonl`` (one JSON object a line: the request's identity,
the response start, each chunk's size and time offset, and the end).
Passthrough exchanges use ``passthrough`` in place of the model.
"""

from __future__ import annotations

import hashlib
import http
from collections.abc import Iterable

import msgspec

from relay.providers.types import mask_secret

SUFFIX_REQUEST = ".req.txt"
SUFFIX_RESPONSE = ".resp.txt"
SUFFIX_CHUNKS = ".chunks.jsonl"
PASSTHROUGH_DIR = "passthrough"

# Canonical (Go textproto) form, as the Coder AI Gateway writes them. Both
# files use one set: a credential is a credential in either direction.
SENSITIVE_HEADERS = frozenset(
    {
        "Authorization",
        "X-Api-Key",
        "Api-Key",
        "X-Auth-Token",
        "Cookie",
        "Set-Cookie",
        "Proxy-Authorization",
        "X-Amz-Security-Token",
        "X-Coder-Ai-Governance-Token",
        "X-Ai-Gov-Token",
        "Www-Authenticate",
        "Proxy-Authenticate",
    }
)

Header = tuple[bytes | str, bytes | str]


# -- the sidecar -------------------------------------------------------------------------------


class RequestLine(msgspec.Struct, tag="request", tag_field="type", kw_only=True):
    """First line: which exchange this is (the file name says it too)."""

    unix_ms: int
    interception_id: str
    provider: str
    model: str | None  # None for passthrough
    request_id: str | None = None  # the relay's request id (x-relay-request-id)


class ResponseLine(msgspec.Struct, tag="response", tag_field="type", kw_only=True):
    t: float  # seconds from the request's start to the response headers
    status: int


class ChunkLine(msgspec.Struct, tag="chunk", tag_field="type", kw_only=True):
    t: float  # seconds from the request's start to this chunk's arrival
    size: int


class EndLine(msgspec.Struct, tag="end", tag_field="type", kw_only=True):
    t: float
    # False when dump data was dropped (queue full) or a write failed: the
    # files are then not a faithful copy and a replay skips them.
    complete: bool
    bytes: int  # response body bytes seen by the relay


SidecarLine = RequestLine | ResponseLine | ChunkLine | EndLine
line_encoder = msgspec.json.Encoder()


# -- formatting (runs in the writer thread) ----------------------------------------------------


def canonical_header_name(name: str) -> str:
    """``x-api-key`` → ``X-Api-Key`` (Go's ``http.CanonicalHeaderKey``)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def mask_header_value(value: str) -> str:
    """Mask a credential, keeping an auth scheme readable: ``Bearer sk-…abcd``."""
    scheme, sep, credential = value.strip().partition(" ")
    if sep and credential and len(scheme) <= 32 and scheme.replace("-", "").isalnum():
        return f"{scheme} {mask_secret(credential.strip())}"
    return mask_secret(value.strip())


def _text(value: bytes | str) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def format_headers(headers: Iterable[Header]) -> bytes:
    """``Name: value`` lines (CRLF), sorted by canonical name, secrets masked.

    Values keep their bytes (latin-1 both ways); a masked value is UTF-8, for its ``…``.
    """
    lines = []
    for raw_name, raw_value in headers:
        name = canonical_header_name(_text(raw_name))
        if name in SENSITIVE_HEADERS:
            value = mask_header_value(_text(raw_value)).encode()
        else:
            value = raw_value if isinstance(raw_value, bytes) else raw_value.encode("latin-1")
        lines.append((name, value))
    lines.sort(key=lambda item: item[0])  # stable: repeated headers keep their order
    return b"".join(n.encode("latin-1") + b": " + v + b"\r\n" for n, v in lines)


def format_request_head(method: str, path_with_query: str, headers: Iterable[Header]) -> bytes:
    return f"{method} {path_with_query} HTTP/1.1\r\n".encode("latin-1", "replace") + (
        format_headers(headers) + b"\r\n"
    )


def format_response_head(status: int, headers: Iterable[Header]) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return (
        f"HTTP/1.1 {status} {phrase}".rstrip().encode()
        + b"\r\n"
        + format_headers(headers)
        + (b"\r\n")
    )


# Longest model directory name, in bytes: file systems allow 255 per component.
MAX_MODEL_DIR_BYTES = 128


def safe_model_dir(model: str | None) -> str:
    """The model as one safe path component (the client chooses it: no escaping the base).

    A name longer than ``MAX_MODEL_DIR_BYTES`` (in UTF-8) is cut and given a
    hash of the whole name, so long names stay apart and the path stays
    valid (a name over 255 bytes failed the dump with ENAMETOOLONG).
    """
    name = (model or "").replace("/", "-").replace("\\", "-").replace("\x00", "")
    if name in ("", ".", ".."):
        return "_"
    encoded = name.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_MODEL_DIR_BYTES:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:16]
    head = encoded[: MAX_MODEL_DIR_BYTES - len(digest) - 1].decode("utf-8", "ignore")
    return f"{head}-{digest}"


# -- reading dumps back ------------------------------------------------------------------------


class DumpedRequest(msgspec.Struct, kw_only=True):
    method: str
    target: str  # path with query string, as in the request line
    headers: list[tuple[str, str]]
    body: bytes


class DumpedResponse(msgspec.Struct, kw_only=True):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Sidecar(msgspec.Struct, kw_only=True):
    request: RequestLine | None = None
    response: ResponseLine | None = None
    chunks: list[ChunkLine] = msgspec.field(default_factory=list)
    end: EndLine | None = None

    @property
    def complete(self) -> bool:
        """The exchange ended and nothing of it was dropped."""
        return self.end is not None and self.end.complete


class DumpFormatError(ValueError):
    """A dump file that does not have the expected shape."""


_line_decoder = msgspec.json.Decoder(SidecarLine)


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    """Head lines and body. The head ends at the first empty line (CRLF, or LF
    in hand-written files)."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf < lf):
        head, body = data[:crlf], data[crlf + 4 :]
        lines = head.split(b"\r\n")
    elif lf >= 0:
        head, body = data[:lf], data[lf + 2 :]
        lines = head.split(b"\n")
    else:
        lines, body = data.rstrip(b"\r\n").splitlines(), b""
    return [line.decode("latin-1") for line in lines], body


def _headers(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            out.append((name.strip(), value.strip()))
    return out


def parse_request(data: bytes) -> DumpedRequest:
    lines, body = _split_head(data)
    parts = lines[0].split(" ") if lines else []
    if len(parts) < 2:
        raise DumpFormatError(f"not a request line: {lines[:1]!r}")
    return DumpedRequest(method=parts[0], target=parts[1], headers=_headers(lines[1:]), body=body)


def parse_response(data: bytes) -> DumpedResponse:
    lines, body = _split_head(data)
    parts = lines[0].split(" ", 2) if lines else []
    if len(parts) < 2 or not parts[1].isdigit():
        raise DumpFormatError(f"not a status line: {lines[:1]!r}")
    return DumpedResponse(status=int(parts[1]), headers=_headers(lines[1:]), body=body)


def parse_sidecar(data: bytes) -> Sidecar:
    """The sidecar's lines; a torn last line (the relay stopped mid-write) is ignored."""
    sidecar = Sidecar()
    for raw in data.splitlines():
        try:
            line = _line_decoder.decode(raw)
        except msgspec.DecodeError:
            continue
        if isinstance(line, ChunkLine):
            sidecar.chunks.append(line)
        elif isinstance(line, RequestLine):
            sidecar.request = line
        elif isinstance(line, ResponseLine):
            sidecar.response = line
        else:
            sidecar.end = line
    return sidecar
