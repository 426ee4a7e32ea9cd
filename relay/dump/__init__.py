"""Request/response dumps, in the Coder AI Gateway's layout, written off the hot path.

With a dump directory set, every upstream exchange is written under
``<base>/<provider>/<model with / replaced by ->/<unix ms>-<interception id>``:
``.req.txt`` (request line, sorted headers, body as sent upstream),
``.resp.txt`` (status line, headers, the raw body as relayed, appended as it
streams) and this relay's sidecar ``.chunks.jsonl`` (each chunk's size and time
offset, so a replay reproduces the chunking and the pace). Passthrough
exchanges go to ``<base>/<provider>/passthrough/``. Secret headers are masked
in both files. ``files`` is the format (both ways, sans-io); ``writer`` puts it
on disk without ever slowing a stream. See docs/dumps-and-replay.md.
"""

from relay.dump.files import (
    PASSTHROUGH_DIR,
    SENSITIVE_HEADERS,
    SUFFIX_CHUNKS,
    SUFFIX_REQUEST,
    SUFFIX_RESPONSE,
    ChunkLine,
    DumpedRequest,
    DumpedResponse,
    DumpFormatError,
    EndLine,
    RequestLine,
    ResponseLine,
    Sidecar,
    SidecarLine,
    canonical_header_name,
    format_headers,
    mask_header_value,
    parse_request,
    parse_response,
    parse_sidecar,
    safe_model_dir,
)
from relay.dump.writer import DumpHandle, DumpStats, DumpWriter

__all__ = [
    "PASSTHROUGH_DIR",
    "SENSITIVE_HEADERS",
    "SUFFIX_CHUNKS",
    "SUFFIX_REQUEST",
    "SUFFIX_RESPONSE",
    "ChunkLine",
    "DumpFormatError",
    "DumpHandle",
    "DumpStats",
    "DumpWriter",
    "DumpedRequest",
    "DumpedResponse",
    "EndLine",
    "RequestLine",
    "ResponseLine",
    "Sidecar",
    "SidecarLine",
    "canonical_header_name",
    "format_headers",
    "mask_header_value",
    "parse_request",
    "parse_response",
    "parse_sidecar",
    "safe_model_dir",
]
