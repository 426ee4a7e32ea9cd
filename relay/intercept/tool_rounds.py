"""What the three APIs' blocking tool-loop rounds share (sans-io).

A blocking round is one upstream JSON answer: decoded once (anything but a
JSON object reads as empty), its injected calls taken out into ``calls``, the
client's own tool calls noted in ``client_tools``. Each API's round sorts its
own items (``relay.intercept.<api>.injection``) and sets ``finished`` when the
model stopped to have tools run; the loop goes on only then, only for
injected calls, and never past a call the client must answer itself.
"""

from __future__ import annotations

from typing import Any

import msgspec

from relay.facts import ToolCall


class BlockingRound:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.calls: list[ToolCall] = []
        self.client_tools = False
        self.dropped = False
        self.finished = False
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            data = None
        self.data: dict[str, Any] = data if isinstance(data, dict) else {}

    @property
    def continues(self) -> bool:
        return self.finished and bool(self.calls) and not self.client_tools
