"""``openai``: OpenAI Chat Completions and Responses (https://api.openai.com/v1/)."""

from __future__ import annotations

from relay.intercept.apis import CHAT, RESPONSES
from relay.providers.kinds.base import ProviderKind
from relay.routes import RouteKind, intercepted, passthrough


class OpenAIKind(ProviderKind):
    type = "openai"
    error_style = "openai"
    intercepted = (
        intercepted("POST", r"/v1/chat/completions", RouteKind.CHAT),
        intercepted("POST", r"/v1/responses", RouteKind.RESPONSES),
    )
    passthrough = (
        passthrough("GET", r"/v1/models(/.*)?"),
        passthrough("GET", r"/v1/responses/[^/]+"),
        passthrough("DELETE", r"/v1/responses/[^/]+"),
        passthrough("POST", r"/v1/responses/[^/]+/cancel"),
        passthrough("GET", r"/v1/responses/[^/]+/input_items"),
        passthrough("*", r"/v1/conversations(/.*)?"),
    )
    specs = {RouteKind.CHAT: CHAT, RouteKind.RESPONSES: RESPONSES}
    client_base_path = "/v1"
    responses_websocket = "/v1/responses"

    def upstream_path(self, api_path: str) -> str:
        """OpenAI base URLs include ``/v1``: ``/v1/chat/completions`` → ``chat/completions``."""
        path = api_path.lstrip("/")
        return path[3:] if path.startswith("v1/") else path


KIND = OpenAIKind()
