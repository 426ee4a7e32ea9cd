"""The three intercepted APIs, described for the interception shell.

Which routes speak which API is each provider kind's (``ProviderKind.specs``).
"""

from __future__ import annotations

from relay.intercept.base import ApiSpec
from relay.intercept.chatcompletions.accumulator import ChatAccumulator
from relay.intercept.chatcompletions.injection import chat_tool_loop
from relay.intercept.messages.accumulator import MessagesAccumulator
from relay.intercept.messages.injection import messages_tool_loop
from relay.intercept.responses.accumulator import ResponsesAccumulator
from relay.intercept.responses.injection import responses_tool_loop
from relay.wire.anthropic import parse_messages_request
from relay.wire.common import RequestInfo
from relay.wire.errors import anthropic_sse_error, chat_sse_error, responses_sse_error
from relay.wire.openai_chat import (
    ensure_chat_include_usage,
    is_injected_usage_chunk,
    parse_chat_request,
    strip_null_usage,
)
from relay.wire.openai_responses import parse_responses_request


def _prepare_chat(body: bytes, info: RequestInfo) -> tuple[bytes, bool]:
    """Ask for usage on every chat stream; the chunk it causes is dropped again."""
    if not info.stream:
        return body, False
    rewritten = ensure_chat_include_usage(body)
    if rewritten is None:
        return body, False
    return rewritten, True


_OPENAI_ERROR_TYPES = {
    "rate_limit_error": "rate_limit_exceeded",
    "overloaded_error": "server_error",
    "api_error": "server_error",
}


MESSAGES = ApiSpec(
    name="messages",
    error_style="anthropic",
    parse_request=parse_messages_request,
    new_accumulator=MessagesAccumulator,
    stream_error=anthropic_sse_error,
    tool_loop=messages_tool_loop,
)

CHAT = ApiSpec(
    name="chat",
    error_style="openai",
    parse_request=parse_chat_request,
    new_accumulator=ChatAccumulator,
    stream_error=lambda type_, message: chat_sse_error(
        message, _OPENAI_ERROR_TYPES.get(type_, "server_error")
    ),
    prepare_body=_prepare_chat,
    is_injected=is_injected_usage_chunk,
    restore_raw=strip_null_usage,
    tool_loop=chat_tool_loop,
)

RESPONSES = ApiSpec(
    name="responses",
    error_style="openai",
    parse_request=parse_responses_request,
    new_accumulator=ResponsesAccumulator,
    stream_error=lambda type_, message: responses_sse_error(
        _OPENAI_ERROR_TYPES.get(type_, "server_error"), message, 0
    ),
    tool_loop=responses_tool_loop,
)
