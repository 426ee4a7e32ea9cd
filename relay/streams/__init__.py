"""Sans-io stream decoders: bytes in, events out, no I/O.

``sse`` decodes ``text/event-stream`` (Anthropic, OpenAI); ``eventstream``
decodes AWS ``application/vnd.amazon.eventstream`` (Bedrock).
"""

from relay.streams.eventstream import (
    EventStreamDecoder,
    EventStreamError,
    EventStreamMessage,
    encode_message,
)
from relay.streams.sse import SSEDecoder, SSEEvent

__all__ = [
    "EventStreamDecoder",
    "EventStreamError",
    "EventStreamMessage",
    "SSEDecoder",
    "SSEEvent",
    "encode_message",
]
