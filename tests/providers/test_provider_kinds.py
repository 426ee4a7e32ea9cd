"""Provider kinds: every type has one, and each answers what differs by type."""

from __future__ import annotations

import pytest

from relay.intercept.apis import CHAT, MESSAGES, RESPONSES
from relay.providers.kinds import all_kinds, error_style_for, find_kind, kind_for
from relay.providers.types import ProviderType
from relay.routes import RouteKind

P = RouteKind.PASSTHROUGH


def test_every_provider_type_has_a_kind_and_every_kind_a_type():
    assert {k.type for k in all_kinds()} == {str(t) for t in ProviderType}
    for t in ProviderType:
        assert kind_for(t).type == t  # a ProviderType is its string
    assert find_kind("gemini") is None
    with pytest.raises(KeyError):
        kind_for("gemini")


@pytest.mark.parametrize(
    ("type_", "method", "path", "route", "label"),
    [
        ("anthropic", "POST", "/v1/messages", RouteKind.MESSAGES, "/v1/messages"),
        ("anthropic", "POST", "/v1/messages/count_tokens", P, "/v1/messages/count_tokens"),
        ("anthropic", "GET", "/v1/models", P, "/v1/models"),
        ("anthropic", "GET", "/v1/models/claude-x", P, "/v1/models/{id}"),
        ("anthropic", "GET", "/v1/messages", None, "other"),
        ("anthropic", "POST", "/v1/chat/completions", None, "other"),
        ("openai", "POST", "/v1/chat/completions", RouteKind.CHAT, "/v1/chat/completions"),
        ("openai", "POST", "/v1/responses", RouteKind.RESPONSES, "/v1/responses"),
        ("openai", "GET", "/v1/models", P, "/v1/models/*"),
        ("openai", "GET", "/v1/models/gpt-4.1", P, "/v1/models/*"),
        ("openai", "GET", "/v1/responses/resp_1", P, "/v1/responses/{id}"),
        ("openai", "DELETE", "/v1/responses/resp_1", P, "/v1/responses/{id}"),
        ("openai", "POST", "/v1/responses/resp_1/cancel", P, "/v1/responses/{id}/cancel"),
        ("openai", "GET", "/v1/responses/r/input_items", P, "/v1/responses/{id}/input_items"),
        ("openai", "PATCH", "/v1/conversations/c_1", P, "/v1/conversations/*"),
        ("openai", "POST", "/v1/messages", None, "other"),
        ("bedrock", "POST", "/v1/messages", RouteKind.MESSAGES, "/v1/messages"),
        ("bedrock", "POST", "/model/m/invoke", RouteKind.BEDROCK_INVOKE, "/model/{id}/invoke"),
        (
            "bedrock",
            "POST",
            "/model/a%2Fb/invoke-with-response-stream",
            RouteKind.BEDROCK_INVOKE_STREAM,
            "/model/{id}/invoke-with-response-stream",
        ),
        ("bedrock", "GET", "/v1/models", None, "other"),
        ("copilot", "POST", "/chat/completions", RouteKind.CHAT, "/chat/completions"),
        ("copilot", "POST", "/responses", RouteKind.RESPONSES, "/responses"),
        ("copilot", "POST", "/v1/messages", RouteKind.MESSAGES, "/v1/messages"),
        ("copilot", "GET", "/models", P, "/*"),
        ("copilot", "GET", "/_ping", P, "/*"),
        ("copilot", "POST", "/agents/x", P, "/*"),
        ("copilot", "GET", "/chat/completions", P, "/*"),
    ],
)
def test_routes_and_their_labels(type_, method, path, route, label):
    kind = kind_for(type_)
    assert kind.match(method, path) is route
    assert kind.route_label(method, path) == label


def test_every_intercepted_route_has_its_spec_and_no_passthrough_route_has_one():
    for kind in all_kinds():
        for route in kind.intercepted:
            assert route.kind in kind.specs, (kind.type, route)
        assert all(r.kind is P for r in kind.passthrough)
    assert kind_for("anthropic").specs[RouteKind.MESSAGES] is MESSAGES
    assert kind_for("openai").specs == {RouteKind.CHAT: CHAT, RouteKind.RESPONSES: RESPONSES}
    assert set(kind_for("bedrock").specs.values()) == {MESSAGES}


def test_key_auth_headers():
    assert kind_for("anthropic").key_auth_headers("sk-ant-1") == [(b"x-api-key", b"sk-ant-1")]
    assert kind_for("openai").key_auth_headers("sk-1") == [(b"authorization", b"Bearer sk-1")]
    # A Bedrock API key is a Bearer token.
    assert kind_for("bedrock").key_auth_headers("ABSK1") == [(b"authorization", b"Bearer ABSK1")]


def test_upstream_paths():
    # OpenAI base URLs include /v1; Anthropic's do not.
    assert kind_for("openai").upstream_path("/v1/chat/completions") == "chat/completions"
    assert kind_for("openai").upstream_path("/other") == "other"
    assert kind_for("anthropic").upstream_path("/v1/messages") == "v1/messages"
    # Copilot's API is at the root of its host: paths are kept.
    assert kind_for("copilot").upstream_path("/chat/completions") == "chat/completions"
    assert kind_for("copilot").key_auth_headers("k") == [(b"authorization", b"Bearer k")]


def test_error_styles():
    assert [error_style_for(t, "/x") for t in ("anthropic", "openai", "bedrock")] == [
        "anthropic",
        "openai",
        "anthropic",
    ]
    # No provider (yet): the path says which clients these are.
    assert error_style_for(None, "/v1/messages?beta=true") == "anthropic"
    assert error_style_for("copilot", "/v1/chat/completions") == "openai"
