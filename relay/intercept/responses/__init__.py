"""OpenAI Responses API (``POST /v1/responses``)."""

from relay.intercept.responses.accumulator import ResponsesAccumulator

__all__ = ["ResponsesAccumulator"]
