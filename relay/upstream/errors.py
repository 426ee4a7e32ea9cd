"""The upstream client's one error hierarchy.

The interception shell maps it to client-facing answers: a timeout is a 504,
anything else before the response a 502, and after the response started an
error event in the provider's own shape.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """The upstream exchange failed."""


class UpstreamConnectError(UpstreamError):
    """No connection: refused, unresolvable host, TLS handshake failed."""


class UpstreamProtocolError(UpstreamError):
    """A malformed response, or the connection lost before the response was complete."""


class UpstreamTimeout(UpstreamError):
    """The upstream was silent for too long."""


class UpstreamConnectTimeout(UpstreamTimeout):
    """The connection (TCP, and TLS for https) was not up within the connect timeout."""


class UpstreamReadTimeout(UpstreamTimeout):
    """A read waited longer than the read timeout without a byte."""


class UpstreamWriteTimeout(UpstreamTimeout):
    """A write of the request waited longer than the read timeout for socket buffer space."""
