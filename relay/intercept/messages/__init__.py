"""Anthropic Messages API (``POST /v1/messages``)."""

from relay.intercept.messages.accumulator import MessagesAccumulator

__all__ = ["MessagesAccumulator"]
