"""Dump an exchange with an upstream directly, the way the relay's hot path does.

For building replay fixtures without a relay (tests, or a mock upstream's
scenarios): the request goes straight to ``base_url + upstream path`` and the
``DumpWriter`` sees the same calls the interception shell makes.
"""

from __future__ import annotations

import uuid

import httpx

from relay.dump import DumpWriter


async def capture_exchange(
    client: httpx.AsyncClient,
    writer: DumpWriter,
    *,
    provider: str,
    model: str | None,
    url: str,
    method: str,
    api_path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
) -> tuple[int, bytes, int]:
    """Send one request, dump it; returns (status, body as received, chunks received)."""
    if model is None:
        handle = writer.begin_passthrough(provider, method, api_path, headers, body)
    else:
        handle = writer.begin(provider, model, uuid.uuid4(), method, api_path, headers, body)
    assert handle is not None, "the writer has no dump directory"
    parts: list[bytes] = []
    try:
        request = client.build_request(method, url, headers=headers, content=body or None)
        response = await client.send(request, stream=True)
        try:
            handle.response_start(response.status_code, response.headers.raw)
            async for chunk in response.aiter_raw():
                handle.response_chunk(chunk)
                parts.append(chunk)
        finally:
            await response.aclose()
    finally:
        handle.finish()
    return response.status_code, b"".join(parts), len(parts)
