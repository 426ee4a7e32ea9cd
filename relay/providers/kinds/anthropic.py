"""``anthropic``: the Anthropic Messages API (https://api.anthropic.com/)."""

from __future__ import annotations

from relay.asgi import Headers
from relay.intercept.apis import MESSAGES
from relay.providers.kinds.base import ProviderKind
from relay.routes import RouteKind, intercepted, passthrough


class AnthropicKind(ProviderKind):
    type = "anthropic"
    error_style = "anthropic"
    intercepted = (intercepted("POST", r"/v1/messages", RouteKind.MESSAGES),)
    passthrough = (
        passthrough("POST", r"/v1/messages/count_tokens"),
        passthrough("GET", r"/v1/models"),
        passthrough("GET", r"/v1/models/[^/]+"),
    )
    specs = {RouteKind.MESSAGES: MESSAGES}

    def key_auth_headers(self, key: str) -> Headers:
        return [(b"x-api-key", key.encode("latin-1"))]


KIND = AnthropicKind()
