"""OpenAI Chat Completions API (``POST /v1/chat/completions``)."""

from relay.intercept.chatcompletions.accumulator import ChatAccumulator

__all__ = ["ChatAccumulator"]
